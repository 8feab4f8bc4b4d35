"""Resumable training checkpoints: safetensors files in a directory that appears atomically.

A checkpoint ``step-000050/`` holds the trainable weights (``weights.safetensors``, whole tensors
gathered from the shards under FSDP2), the AdamW state (``optimizer.safetensors``; under FSDP2 one
file of its rank's shards per rank, ``optimizer-rank{r}.safetensors``), extra weights such as an
EMA teacher (``extra.safetensors``), the torch RNG state and ``state.json`` (step, the data
position, the best validation score, the config). It is written to a hidden temporary directory and
renamed, so a run killed at any moment leaves either a complete checkpoint or none
(``mgsd.files.atomic_directory``): rank 0 makes the temporary directory, every rank writes its
optimizer shard into it, and rank 0 renames it once all have. ``state.json`` names the engine and
world size; a resume with another one is refused (the shards would not fit).
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
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from mgsd.files import atomic_directory
from mgsd.train.engines import from_shard, local, shard_of

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
                    tensors[f"{name}::{key}"] = local(value.detach()).contiguous().cpu()
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
    weights: dict[str, torch.Tensor] | None = None,
    engine: dict[str, Any] | None = None,
) -> Path | None:
    """Write checkpoint ``step`` under ``root`` and delete all but the ``keep_last`` newest.

    ``params``: the live trainable parameters (they name the optimizer state); ``weights``: their
    whole tensors when ``params`` are shards (gathered by every rank beforehand). ``engine``:
    ``{"name", "world", "rank", "sharded"}``; every rank calls this when ``sharded`` (each writes
    its optimizer shard), else rank 0 only. Returns the checkpoint's path (None on the other ranks)."""
    eng = engine or {"name": "single", "world": 1, "rank": 0, "sharded": False}
    root, rank = Path(root), eng["rank"]
    final = root / f"{_PREFIX}{step:06d}"
    names = {id(p): k for k, p in params.items()}
    opt_tensors, opt_scalars = _optimizer_tensors(optimizer, names)
    if rank != 0:  # a sharded run's other ranks: their optimizer shard, into rank 0's directory
        return _write_shard(opt_tensors, rank)
    root.mkdir(parents=True, exist_ok=True)
    # atomic_directory's hidden ".step-000050.tmp-*" never matches _PREFIX, so checkpoints() skips it.
    with atomic_directory(final) as tmp:
        opt_name = f"optimizer-rank{rank}.safetensors" if eng["sharded"] else "optimizer.safetensors"
        save_file(opt_tensors, str(tmp / opt_name))
        if eng["sharded"]:
            dist.broadcast_object_list([str(tmp)], src=0)
            dist.barrier()  # every rank's shard is in tmp
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in (weights or params).items()},
            str(tmp / "weights.safetensors"),
        )
        if extra:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(tmp / "extra.safetensors")
            )
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        full_state = {
            **state,
            "step": step,
            "engine": {"name": eng["name"], "world": eng["world"]},
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


def check_engine(path: str | Path, engine: dict[str, Any]) -> None:
    """Refuse, in one line, to resume a checkpoint made by another engine or world size."""
    saved = json.loads((Path(path) / "state.json").read_text()).get("engine")
    if saved is None:  # checkpoints of older versions: one replicated optimizer state, any world
        return
    if (saved["name"], saved["world"]) != (engine["name"], engine["world"]):
        raise ValueError(
            f"cannot resume {path}: it was made by {saved['name']} on {saved['world']} process(es), "
            f"this run is {engine['name']} on {engine['world']}; relaunch the same way or use another --out"
        )


def _write_shard(tensors: dict[str, torch.Tensor], rank: int) -> None:
    """A non-zero rank's optimizer shard, written into the temporary directory rank 0 broadcasts."""
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    save_file(tensors, str(Path(box[0]) / f"optimizer-rank{rank}.safetensors"))
    dist.barrier()  # rank 0 renames the directory only after this


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
    rank: int | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore weights and optimizer state in place; returns (state.json, extra tensors).
    ``rank``: read that rank's optimizer shard (a sharded run's checkpoint)."""
    path = Path(path)
    weights = load_file(str(path / "weights.safetensors"))
    missing = sorted(set(params) - set(weights))
    if missing:
        raise ValueError(
            f"checkpoint {path} lacks weights for {missing[0]} (different model or LoRA settings?)"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(shard_of(p, weights[name].to(p.dtype)))
    state = json.loads((path / "state.json").read_text())
    opt_file = "optimizer.safetensors" if rank is None else f"optimizer-rank{rank}.safetensors"
    opt_tensors = load_file(str(path / opt_file))
    scalars = state.pop("optimizer_scalars", {})
    names = {id(p): k for k, p in params.items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            entry = {}
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"):
                if f"{name}::{key}" in opt_tensors:
                    value = opt_tensors[f"{name}::{key}"]
                    entry[key] = from_shard(p, value) if value.dim() else value.to(p.device)
                elif f"{name}::{key}" in scalars:
                    entry[key] = scalars[f"{name}::{key}"]
            if entry:
                optimizer.state[p] = entry
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    extra_file = path / "extra.safetensors"
    extra = load_file(str(extra_file)) if extra_file.is_file() else {}
    return state, extra
