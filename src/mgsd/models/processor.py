"""Processors that work without torchvision.

In transformers 5 the default Qwen-VL image and video processors need torchvision, which is not
installable beside the CPU torch wheel. The PIL image processor works, and a processor subclass
that declares only ``image_processor`` and ``tokenizer`` never builds a video processor. The
subclass keeps the base class name, so a saved directory records e.g. ``Qwen3VLProcessor`` and
looks like any other Qwen-VL checkpoint.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoProcessor, ProcessorMixin
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES, processor_class_from_name
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

log = logging.getLogger(__name__)


@functools.cache
def image_only_processor_class(base: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """A subclass of ``base`` whose only sub-processors are the image processor and the tokenizer."""

    def get_attributes(cls: type) -> list[str]:
        return ["image_processor", "tokenizer"]

    return type(
        base.__name__, (base,), {"get_attributes": classmethod(get_attributes), "__module__": __name__}
    )


def qwen_image_processor(
    patch_size: int,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    min_pixels: int = 256 * 256,
    max_pixels: int = 512 * 512,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.5, 0.5, 0.5),
) -> Qwen2VLImageProcessorPil:
    """The PIL Qwen-VL image processor (images are resized so that pixels lie in [min, max])."""
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        image_mean=list(mean),
        image_std=list(std),
    )


def _base_processor_class(model_type: str) -> type[ProcessorMixin] | None:
    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    return processor_class_from_name(name) if name else None


def load_processor(path_or_id: str | Path, trust_remote_code: bool = False, **kwargs: Any) -> ProcessorMixin:
    """Load a model's processor; without torchvision, fall back to the image-only variant."""
    error: Exception | None = None
    try:
        processor = AutoProcessor.from_pretrained(
            str(path_or_id), trust_remote_code=trust_remote_code, **kwargs
        )
        # An unknown processor class makes AutoProcessor return the bare tokenizer.
        if isinstance(processor, ProcessorMixin) and hasattr(processor, "image_processor"):
            return processor
    except (OSError, ImportError, ValueError) as exc:  # typically: no video processor / no torchvision
        error = exc
    config = AutoConfig.from_pretrained(str(path_or_id), trust_remote_code=trust_remote_code, **kwargs)
    base = _base_processor_class(config.model_type)
    if base is None:
        raise ValueError(f"cannot build a processor for model type {config.model_type!r}") from error
    log.debug("AutoProcessor unavailable (%s); using image-only %s", error, base.__name__)
    return image_only_processor_class(base).from_pretrained(str(path_or_id), **kwargs)


VIDEO_CONFIG = "video_preprocessor_config.json"


def _video_processor_name(model_type: str, processor: ProcessorMixin) -> str | None:
    """The video processor class ``AutoProcessor`` builds for ``model_type`` (e.g.
    ``Qwen3VLVideoProcessor``), found without importing torchvision."""
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING_NAMES

    names = VIDEO_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    name = names.get("torchvision") if isinstance(names, dict) else names
    if name:
        return name
    # Without torchvision the mapping is empty for most models: follow the naming convention.
    guess = type(processor).__name__.replace("Processor", "VideoProcessor")
    try:
        module = importlib.import_module(f"transformers.models.{model_type}.video_processing_{model_type}")
    except ImportError:
        return None
    return guess if hasattr(module, guess) else None


def video_processor_config(
    source: str | Path | None, model_type: str, processor: ProcessorMixin
) -> dict | None:
    """The ``video_preprocessor_config.json`` to save beside a processor that has no video processor
    (built without torchvision), so that ``AutoProcessor.from_pretrained`` of the saved directory
    works wherever torchvision is installed: the source's own file when it had one (a re-save must
    not drop it), else one that matches the image processor (same patches, merge and normalisation)."""
    if hasattr(processor, "video_processor"):
        return None  # save_pretrained writes it
    if source is not None and (Path(source) / VIDEO_CONFIG).is_file():
        return json.loads((Path(source) / VIDEO_CONFIG).read_text())
    name = _video_processor_name(model_type, processor)
    ip = getattr(processor, "image_processor", None)
    if name is None or ip is None:
        return None
    keys = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "do_convert_rgb")
    return {"video_processor_type": name, **{k: getattr(ip, k) for k in keys if hasattr(ip, k)}}
