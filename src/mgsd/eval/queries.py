"""What a model is asked: dataset rows (``load_samples``) and the planning and perception queries built
from them (``plan_query`` in each input modality, ``perception_query``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mgsd.backends.base import Query
from mgsd.data.io import DataError, decode_image, read_rows
from mgsd.prompts import (
    perception_prompt,
    student_prompt,
    teacher_context,
    teacher_system,
    text_student_prompt,
)
from mgsd.tasks import get_task

# image: the visual student; text: the text-only student (the symbolic upper bound); teacher+plan /
# teacher: the stage-2 teacher's own context (system turn, symbolic state, with / without the plan).
MODALITIES = ("image", "text", "teacher+plan", "teacher")
_COLUMNS = ["id", "task", "level", "state", "image", "optimal_plan", "optimal_length"]


def load_samples(data: Sequence[str | Path], *, limit: int | None = None) -> list[dict[str, Any]]:
    """Dataset rows in file order; ``limit`` keeps at most that many per (task, level), so the level
    mix stays intact (the reference's "first N rows" was biased towards one level)."""
    rows = read_rows(data, columns=_COLUMNS)
    if not rows:
        raise DataError("the dataset is empty")
    for r in rows:
        get_task(r["task"])  # an unknown task name is a clear error now, not a crash mid-run
    if limit is None:
        return rows
    if limit < 1:
        raise ValueError("--limit must be at least 1")
    kept: list[dict[str, Any]] = []
    counts: dict[tuple[str, int], int] = {}
    for r in rows:
        key = (r["task"], int(r["level"]))
        if counts.get(key, 0) < limit:
            counts[key] = counts.get(key, 0) + 1
            kept.append(r)
    return kept


def model_label(model: str | None) -> str | None:
    """A model directory as an absolute path (stable across working directories); hub ids unchanged."""
    if model is None:
        return None
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def plan_query(sample: Mapping[str, Any], modality: str) -> Query:
    """The student's planning request for one sample in the given input modality."""
    task = get_task(sample["task"])
    if modality == "image":
        return Query(sample["id"], [student_prompt(task), decode_image(sample["image"])])
    if modality == "text":
        return Query(sample["id"], [text_student_prompt(task, task.load_state(sample["state"]))])
    if modality in ("teacher+plan", "teacher"):
        state = task.load_state(sample["state"])
        plan = task.split_plan(sample["optimal_plan"]) if modality == "teacher+plan" else None
        return Query(sample["id"], [teacher_context(task, state, plan)], system=teacher_system(task))
    raise ValueError(f"unknown modality {modality!r} (choose from {', '.join(MODALITIES)})")


def perception_query(sample: Mapping[str, Any]) -> Query:
    """The numbered perception questions about one sample's image."""
    task = get_task(sample["task"])
    state = task.load_state(sample["state"])
    return Query(sample["id"], [perception_prompt(task, state), decode_image(sample["image"])])
