"""The resume guard: a run continues from its checkpoint only with the settings and the data it was
made with (compared by content, so a moved dataset or model directory is the same one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mgsd.config import changed_keys, to_dict
from mgsd.data.io import parquet_files, tree_fingerprint
from mgsd.train.config import TrainConfig

# Settings a resumed run may change: where it writes, how it reports, and when it checkpoints.
# Everything else (lr, objective, data, model, steps...) shapes the weights, so a change refuses.
RESUME_EXEMPT = ("out", "progress", "log_every", "eval_every", "val_samples", "save_every", "keep_last")


def fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    """What the weights depend on besides the config: the content of the training and validation
    data and of the starting model directory (a hub id is named by the config alone)."""
    fp = {"train_data": tree_fingerprint(parquet_files(cfg.train_data))}
    if cfg.val_data:
        fp["val_data"] = tree_fingerprint(parquet_files(cfg.val_data))
    if Path(cfg.model).is_dir():
        fp["model"] = tree_fingerprint(cfg.model, (".safetensors", ".json", ".txt", ".model"))
    return fp


def check_resume(ck: Path, cfg: TrainConfig, current: dict[str, Any]) -> None:
    """Refuse to continue checkpoint ``ck`` made with other settings or other data than ``cfg``
    (whose ``fingerprint`` is ``current``), naming them."""
    saved = json.loads((ck / "state.json").read_text())
    exempt = list(RESUME_EXEMPT)
    content: list[str] = []
    if "fingerprint" in saved:  # checkpoints of older versions lack it: only their config is compared
        old, new = saved["fingerprint"], current
        content = [f"{k} (content changed)" for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
        # Data and a local model are compared by content, so a moved (or relative) path is fine.
        exempt += ["train_data", "val_data"] + (["model"] if "model" in old and "model" in new else [])
    changes = changed_keys(saved.get("config", {}), to_dict(cfg), exempt) + content
    if changes:
        shown = ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise ValueError(
            f"cannot resume {ck}: it was made with other settings: {shown}; "
            "use the original settings or another --out"
        )
