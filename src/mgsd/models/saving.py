"""Saving a ``Backbone`` as a plain Hugging Face model directory, atomically (temp dir, then rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mgsd.files import atomic_directory, write_json
from mgsd.models import lora as lora_lib
from mgsd.models.loading import ADAPTER_DIR
from mgsd.models.parts import ModelParts
from mgsd.models.processor import VIDEO_CONFIG, video_processor_config
from mgsd.models.storage import quiet_progress, resolve_dtype, set_config_dtype


def save_model_dir(
    bb: ModelParts,
    out_dir: str | os.PathLike[str],
    *,
    merge_lora: bool = True,
    dtype: str | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """``Backbone.save`` (see there): weights (LoRA merged, or base plus ``adapter/``), processor and
    video processor config."""
    target = resolve_dtype(dtype)
    whole = state  # gathered from shards (FSDP2), else the live parameters are read
    if bb.peft is None:
        state = dict(bb.model.state_dict()) if whole is None else dict(whole)
    elif merge_lora:
        state = lora_lib.merged_state_dict(bb.peft, whole)
    else:
        state = lora_lib.base_state_dict(bb.peft, whole)
    if target is not None:
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    with atomic_directory(out_dir) as tmp, quiet_progress():
        bb.model.save_pretrained(tmp, state_dict=state)
        if target is not None:
            set_config_dtype(tmp / "config.json", str(target).removeprefix("torch."))
        if bb.peft is not None and not merge_lora:
            lora_lib.save_adapter(bb.peft, str(tmp / ADAPTER_DIR), whole)
            # peft records the base as given at load time (often relative to some other cwd);
            # the base weights are the ones saved here, so point at this directory, absolutely.
            set_adapter_base(tmp / ADAPTER_DIR, Path(out_dir).resolve())
        bb.processor.save_pretrained(tmp)
        video = video_processor_config(bb.source, bb.model.config.model_type, bb.processor)
        if video is not None and not (tmp / VIDEO_CONFIG).exists():
            write_json(video, tmp / VIDEO_CONFIG, sort_keys=True)
    return Path(out_dir)


def set_adapter_base(adapter_dir: Path, base: Path) -> None:
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base)
    write_json(cfg, cfg_path, sort_keys=True)
