"""A run's metrics log: ``log.jsonl`` (one record per logged step, always) and the accelerate
trackers asked for in ``trackers`` (TensorBoard, Weights & Biases). Only the main process writes."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from mgsd.files import jsonl_lines, write_text

# accelerate's tracker name -> the package it needs (accelerate imports it only when asked).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_trackers(names: list[str]) -> None:
    """One clear line for a tracker that is unknown or whose package is not installed (a run that
    asked for TensorBoard and silently logged nowhere was the old behaviour)."""
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise ValueError(f"trackers: unknown {name!r}; choose from {sorted(TRACKER_PACKAGES)} (or none)")
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"trackers: {name!r} needs the {package} package, which is not installed"
                f" (pip install {package}, or drop it; log.jsonl always has every record)"
            )


def _flat(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Trackers take flat scalar hyper-parameters: ``optim.lr``, lists as text."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


class RunLog:
    def __init__(self, out: Path, *, acc: Any, step: int, config: dict[str, Any]) -> None:
        """The log of run directory ``out``; on resume (``step`` > 0) the records of steps after the
        checkpoint are dropped, since they will be redone. ``acc``: the run's Accelerator, whose
        ``log_with`` trackers (if any) get every numeric value too."""
        self.path, self.acc, self.main = out / "log.jsonl", acc, acc.is_main_process
        self.tracking = bool(getattr(acc, "log_with", None))
        if not self.main:
            return
        self._truncate(step)
        if self.tracking:
            acc.init_trackers(out.name or "mgsd", config=_flat(config))

    def _truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        lines = jsonl_lines(self.path.read_text())
        keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracking:
            scalars = {
                k: v
                for k, v in record.items()
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v)
            }
            self.acc.log(scalars, step=record["step"])

    def close(self) -> None:
        if self.tracking and self.main:
            self.acc.end_training()
