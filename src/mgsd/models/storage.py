"""Model locations and dtypes (atomic directory writes live in mgsd.files)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from mgsd.files import write_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16`` (None passes through)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_model_path(path_or_id: str | os.PathLike[str]) -> str:
    """A local model directory, or a hub id; anything else raises a one-line ``ValueError``."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ValueError(f"not a model directory: {path} (no config.json)")
        return str(path)
    text = str(path_or_id)
    if text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
        raise ValueError(f"not a model directory: {text} (no such directory)")
    # "runs/mdoel" fits a hub id's owner/name shape, but when "runs" is a local directory it is a
    # mistyped path: say so now rather than after the hub's retries (a minute, offline).
    owner = text.split("/", 1)[0] if "/" in text else None
    if owner is not None and Path(owner).is_dir():
        raise ValueError(f"not a model directory: {text} (no such directory in {owner}/)")
    return text  # a hub id: transformers resolves it (or fails offline)


def set_config_dtype(path: Path, dtype: str) -> None:
    """Rewrite the ``dtype`` fields of a saved ``config.json``.

    ``save_pretrained`` records the in-memory parameter dtype, not the dtype actually stored.
    """
    config = json.loads(path.read_text())
    for section in (config, *(v for v in config.values() if isinstance(v, dict))):
        if "dtype" in section:
            section["dtype"] = dtype
    write_json(config, path, sort_keys=True)


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No per-shard progress bars while loading or saving a small model."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
