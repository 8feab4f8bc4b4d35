"""Resumable training checkpoints: safetensors files in a directory that appears atomically.

A checkpoint ``step-000050/`` holds the trainable weights (``weights.safetensors``), the AdamW state
(``optimizer.safetensors``), extra weights such as an EMA teacher (``extra.safetensors``), the torch
RNG state and ``state.json`` (step, the data position, the best validation score, the config). It is
written to a hidden temporary directory and renamed, so a run killed at any moment leaves either a
complete checkpoint or none (``mgsd.files.atomic_directory``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mgsd.files import atomic_directory

_PREFIX = "step-"


def _optimizer_tensors(
    opt: torch.optim.Optimizer, names: dict[int, str]
) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten AdamW state to named tensors; non-tensor values go to a JSON-able dict."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{name}::{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars[f"{name}::{key}"] = value
    return tensors, scalars


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root`` and delete all but the ``keep_last`` newest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:06d}"
    # atomic_directory's hidden ".step-000050.tmp-*" never matches _PREFIX, so checkpoints() skips it.
    with atomic_directory(final) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in params.items()}, str(tmp / "weights.safetensors")
        )
        names = {id(p): k for k, p in params.items()}
        opt_tensors, opt_scalars = _optimizer_tensors(optimizer, names)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        if extra:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(tmp / "extra.safetensors")
            )
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        full_state = {
            **state,
            "step": step,
            "optimizer_scalars": opt_scalars,
            "python_rng": repr(random.getstate()),
            # fingerprint only; numpy is reseeded per step
            "numpy_rng": np.random.get_state()[1].tolist()[:4],
        }
        (tmp / "state.json").write_text(json.dumps(full_state, indent=1, default=str))
        for f in tmp.iterdir():  # make the data durable before the directory becomes visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    for old in sorted(checkpoints(root))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").is_file())


def latest_checkpoint(root: str | Path) -> Path | None:
    found = checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(
    path: str | Path,
    *,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore weights and optimizer state in place; returns (state.json, extra tensors)."""
    path = Path(path)
    weights = load_file(str(path / "weights.safetensors"))
    missing = sorted(set(params) - set(weights))
    if missing:
        raise ValueError(
            f"checkpoint {path} lacks weights for {missing[0]} (different model or LoRA settings?)"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    state = json.loads((path / "state.json").read_text())
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    scalars = state.pop("optimizer_scalars", {})
    names = {id(p): k for k, p in params.items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            entry = {}
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"):
                if f"{name}::{key}" in opt_tensors:
                    entry[key] = opt_tensors[f"{name}::{key}"].to(p.device)
                elif f"{name}::{key}" in scalars:
                    entry[key] = scalars[f"{name}::{key}"]
            if entry:
                optimizer.state[p] = entry
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    extra_file = path / "extra.safetensors"
    extra = load_file(str(extra_file)) if extra_file.is_file() else {}
    return state, extra
