"""Finding what a run directory holds: evaluation runs, perception runs, gap analyses, training logs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgsd.files import jsonl_lines


@dataclass
class Run:
    """One result directory: ``label`` is its path relative to the run directory."""

    label: str
    path: Path
    data: dict[str, Any]


@dataclass
class TrainLog:
    label: str
    path: Path
    records: list[dict[str, Any]]
    skipped: int = 0  # lines that were not JSON objects with a numeric step


@dataclass
class Found:
    """Everything under a run directory the report can show."""

    root: Path
    plans: list[Run] = field(default_factory=list)  # metrics.json
    perception: list[Run] = field(default_factory=list)  # perception_metrics.json
    gaps: list[Run] = field(default_factory=list)  # gap.json
    logs: list[TrainLog] = field(default_factory=list)  # log.jsonl
    summary: dict[str, Any] | None = None  # RUN_DIR/summary.json
    problems: list[str] = field(default_factory=list)  # unreadable files, shown in the report


def _label(root: Path, path: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return root.resolve().name if rel == "." else rel


def _visible(root: Path, path: Path) -> bool:
    # Skip hidden and temporary directories (atomic-write leftovers, caches).
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _load_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{path.name} in {path.parent}: cannot read ({exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: not a JSON object")
        return None
    return data


def read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a ``log.jsonl`` that carry a numeric ``step``; the count of other lines."""
    records, skipped = [], 0
    for line in jsonl_lines(path.read_text()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        step = rec.get("step") if isinstance(rec, dict) else None
        if isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step):
            records.append(rec)
        else:
            skipped += 1
    return records, skipped


def discover(root: str | Path) -> Found:
    """Walk ``root`` for metrics.json, perception_metrics.json, gap.json and log.jsonl files."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"run directory not found: {root}")
    found = Found(root=root)
    targets = {
        "metrics.json": found.plans,
        "perception_metrics.json": found.perception,
        "gap.json": found.gaps,
    }
    for name, bucket in targets.items():
        for path in sorted(root.rglob(name)):
            if not _visible(root, path):
                continue
            data = _load_json(path, found.problems)
            if data is not None:
                bucket.append(Run(_label(root, path.parent), path.parent, data))
    for path in sorted(root.rglob("log.jsonl")):
        if _visible(root, path):
            records, skipped = read_log(path)
            found.logs.append(TrainLog(_label(root, path.parent), path.parent, records, skipped))
    summary = root / "summary.json"
    if summary.is_file():
        found.summary = _load_json(summary, found.problems)
    # Plan metrics need the aggregate keys the table shows; anything else is reported, not guessed at.
    keep = []
    for run in found.plans:
        if all(k in run.data for k in ("n", "success", "macro", "by_task_level")):
            keep.append(run)
        else:
            found.problems.append(f"{run.label}/metrics.json: not an mgsd metrics file (skipped)")
    found.plans = keep
    return found
