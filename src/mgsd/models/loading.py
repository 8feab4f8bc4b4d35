"""Loading a model directory or hub id for ``Backbone.load``: safetensors weights only, the processor,
and an unmerged LoRA adapter (``adapter/``) reattached; a broken directory is one ``ValueError`` line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from mgsd.models import lora as lora_lib
from mgsd.models.processor import load_processor
from mgsd.models.storage import quiet_progress, resolve_dtype, resolve_model_path

ADAPTER_DIR = "adapter"  # LoRA weights saved beside unmerged base weights
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def check_weight_files(source: str) -> None:
    """A local model directory must hold safetensors weights; pickle-only weights are refused by name
    (loading them can run arbitrary code), before transformers is asked."""
    path = Path(source)
    if not path.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) refuses pickle there
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in path.iterdir() if f.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"cannot load model {source}: only pickle weights ({pickles[0]}); mgsd loads safetensors only "
            "(convert them with safetensors.torch.save_file)"
        )
    raise ValueError(f"cannot load model {source}: no *.safetensors weights in the directory")


def load_model(
    path_or_id: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype,
    trust_remote_code: bool,
    device: str | torch.device | None,
    trainable_adapter: bool,
    weights: bool = True,
) -> tuple[Any, Any, str]:
    """``(model, processor, source)``: the model in eval mode on ``device`` (default: cuda when
    available), with its adapter attached when the directory has one. ``weights=False`` builds the
    model from its config on the meta device and reads no weights (FSDP2's rank-0 loading: the
    other ranks receive their shards from rank 0, train/engines.py)."""
    source = resolve_model_path(path_or_id)
    check_weight_files(source)
    try:
        with quiet_progress():
            if weights:
                # safetensors only: a pickle checkpoint can run code when loaded.
                model = AutoModelForImageTextToText.from_pretrained(
                    source,
                    dtype=resolve_dtype(dtype),
                    trust_remote_code=trust_remote_code,
                    use_safetensors=True,
                )
            else:
                config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
                with torch.device("meta"):
                    model = AutoModelForImageTextToText.from_config(
                        config, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code
                    )
        processor = load_processor(source, trust_remote_code=trust_remote_code)
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot load model {source}: {first_line(exc)}") from None
    except Exception as exc:  # safetensors, json and transformers raise many types for broken files
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        raise ValueError(f"cannot load model {source}: {reason}") from None
    adapter = Path(source) / ADAPTER_DIR
    if (adapter / "adapter_config.json").is_file():
        model = lora_lib.load_adapter(model, str(adapter), trainable=trainable_adapter, weights=weights)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if weights:
        model.to(device)
    model.eval()
    return model, processor, source
