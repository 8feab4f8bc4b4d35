"""The visual planning tasks behind one small interface (see ``base.Task``), and their registry.

A task is its module plus one line in ``_REGISTRY`` (or one ``register_task`` call from outside the
package): generation, scoring, prompts, the gymnasium environments, the tokenizer's vocabulary and
``mgsd run`` all find it through ``get_task`` and ``task_names``.
"""

from __future__ import annotations

import importlib

from mgsd.tasks.base import (
    MOVE_WORDS,
    MOVES,
    PerceptionItem,
    PromptWording,
    Rollout,
    Task,
    Transition,
    VocabularyHints,
)

# name -> "module:Class", imported on first use; the order is the tasks' order everywhere (the
# tokenizer's vocabulary is collected in it).
_REGISTRY: dict[str, str | type[Task]] = {
    "frozenlake": "mgsd.tasks.frozenlake:FrozenLake",
    "maze": "mgsd.tasks.maze:Maze",
    "minibehaviour": "mgsd.tasks.minibehaviour:MiniBehaviour",
}
# The built-in tasks (the ones the shipped base was pretrained on); ``task_names()`` for all registered.
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)
_ALIASES = {"minibehavior": "minibehaviour", "frozen_lake": "frozenlake"}
_CACHE: dict[str, Task] = {}


def register_task(name: str, task: str | type[Task]) -> None:
    """Register ``task`` (a Task subclass, or ``"module:Class"`` imported on first use) as ``name``."""
    key = name.strip().lower()
    _REGISTRY[key] = task
    _CACHE.pop(key, None)


def unregister_task(name: str) -> None:
    """Remove a task registered with ``register_task`` (a test's, for instance)."""
    key = name.strip().lower()
    _REGISTRY.pop(key, None)
    _CACHE.pop(key, None)


def task_names() -> tuple[str, ...]:
    """Every registered task, in registry order."""
    return tuple(_REGISTRY)


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive); ValueError for an unknown name."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _REGISTRY:
        raise ValueError(f"unknown task {name!r} (choose from {', '.join(_REGISTRY)})")
    if key not in _CACHE:
        target = _REGISTRY[key]
        if isinstance(target, str):
            module, _, cls_name = target.partition(":")
            target = getattr(importlib.import_module(module), cls_name)
        _CACHE[key] = target()
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
    "PromptWording",
    "Rollout",
    "Task",
    "Transition",
    "VocabularyHints",
    "get_task",
    "parse_levels",
    "register_task",
    "task_names",
    "unregister_task",
]
