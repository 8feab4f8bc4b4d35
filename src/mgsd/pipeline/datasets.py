"""The run's data: decontaminated splits of every task, external test sets, overlap with pretraining."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mgsd.data.generate import generate_dataset, state_hash
from mgsd.data.io import read_rows
from mgsd.pipeline.config import PipelineConfig
from mgsd.pipeline.layout import COMPLETE
from mgsd.tasks import get_task


def build_data(
    cfg: PipelineConfig, out: Path, external: dict[str, Path], seen: frozenset[str] = frozenset()
) -> None:
    """``seen``: state hashes of the base's pretraining, never drawn for any split."""
    d = cfg.data
    ext = list(external.values())
    for name in d.tasks:
        task, levels = get_task(name), d.task_levels(name)
        keys: set[str] = set()  # test first; val and train then exclude every state before them
        for split, per_level, exclude_dirs in (
            ("test", -(-d.test_per_task // len(levels)), ext),
            ("val", d.val_per_level, ()),
            ("train", d.train_per_level, ()),
        ):
            generate_dataset(
                task,
                levels,
                per_level,
                split=split,
                seed=d.seed,
                out=out / split,
                exclude=keys,
                exclude_dirs=exclude_dirs,
                exclude_hashes=seen,
                progress=cfg.progress,
            )
    (out / COMPLETE).write_text("ok\n")


def import_external(spec: dict[str, str], out: Path) -> dict[str, Path]:
    """``vsp=DIR`` and ``visualplanning-<task>=FILE`` test sets, imported once."""
    from mgsd.data.importers import import_visualplanning, import_vsp

    dirs = {}
    for name, src in spec.items():
        target = out / name
        if not (target / COMPLETE).exists():
            if name == "vsp":
                import_vsp(src, target, progress=False)
            elif name.startswith("visualplanning-"):
                import_visualplanning(src, name.split("-", 1)[1], target, progress=False)
            else:
                raise ValueError(
                    f"unknown external test set {name!r} (use vsp=DIR or visualplanning-TASK=FILE)"
                )
            (target / COMPLETE).write_text("ok\n")
        dirs[name] = target
    return dirs


def overlap(data: Path, seen: frozenset[str]) -> dict[str, Any]:
    """How many of a dataset's states the base saw in pretraining (by state hash)."""
    rows = read_rows(data, columns=["task", "state"])
    hits = 0
    for r in rows:
        task = get_task(r["task"])
        hits += state_hash(task.dump_state(task.load_state(r["state"]))) in seen
    return {"n": len(rows), "seen_in_pretraining": hits}
