"""The three visual planning tasks behind one small interface (see ``base.Task``)."""

from __future__ import annotations

from mgsd.tasks.base import MOVE_WORDS, MOVES, PerceptionItem, Rollout, Task, Transition

TASK_NAMES: tuple[str, ...] = ("frozenlake", "maze", "minibehaviour")
_ALIASES = {"minibehavior": "minibehaviour", "frozen_lake": "frozenlake"}
_CACHE: dict[str, Task] = {}


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive); ValueError for an unknown name."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r} (choose from {', '.join(TASK_NAMES)})")
    if key not in _CACHE:
        if key == "frozenlake":
            from mgsd.tasks.frozenlake import FrozenLake as cls
        elif key == "maze":
            from mgsd.tasks.maze import Maze as cls
        else:
            from mgsd.tasks.minibehaviour import MiniBehaviour as cls
        _CACHE[key] = cls()
    return _CACHE[key]


def parse_levels(task: Task, spec: str | None) -> list[int]:
    """Levels from "3-8", "3,5,7" or None (all levels); ValueError when out of range."""
    if spec is None or str(spec).strip() in ("", "all"):
        return list(task.levels)
    levels: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            lo, hi = (int(x) for x in part.split("-", 1)) if "-" in part else (int(part), int(part))
        except ValueError:
            raise ValueError(f"bad level spec {spec!r} (use e.g. 3-8 or 3,5)") from None
        if lo > hi:  # "6-3" would silently be an empty dataset
            raise ValueError(f"empty level range {part!r} in {spec!r} (did you mean {hi}-{lo}?)")
        levels.extend(range(lo, hi + 1))
    bad = [lv for lv in levels if lv not in task.levels]
    if bad:
        lo, hi = task.levels[0], task.levels[-1]
        raise ValueError(f"level {bad[0]} is out of range for {task.name} (levels {lo}-{hi})")
    if not levels:
        raise ValueError(f"bad level spec {spec!r}: no levels (use e.g. 3-8 or 3,5)")
    return sorted(set(levels))


__all__ = [
    "MOVES",
    "MOVE_WORDS",
    "TASK_NAMES",
    "PerceptionItem",
    "Rollout",
    "Task",
    "Transition",
    "get_task",
    "parse_levels",
]
