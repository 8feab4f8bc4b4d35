"""Prompt wording for every role: visual student, text-only student, privileged teacher, perception.

All wording is ours. As in the reference, coordinates are 0-based (row,col), a reasoned answer restates
the perceived state and ends in exactly one ``<answer>`` block (letters for FrozenLake/Maze,
comma-separated actions with PICK/DROP for MiniBehaviour); in between we put one path line. What the
prompts say about one task (its legend, goal, rules and answer format) is the task's ``wording``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mgsd.tasks import MOVE_WORDS, Task

PATH_MARK = "Path:"
# Where the restated facts of an answer end: its path line or its answer block.
_FACTS_END = re.compile(r"^[ \t]*(?:" + re.escape(PATH_MARK) + r"|<answer>)", re.MULTILINE | re.IGNORECASE)


_OUTPUT = (
    "First restate the size, positions and {things} with 0-based (row,col), then the path (the cells "
    "you walk through), then one answer block with the whole plan, {fmt}."
)


def _output(task: Task) -> str:
    return _OUTPUT.format(things=task.wording.restate, fmt=task.wording.answer_format)


def student_prompt(task: Task) -> str:
    """The visual student's instruction; the image follows it in the same user turn."""
    return "\n".join(
        [
            f"{task.title} puzzle in the image. {task.wording.goal}",
            task.wording.legend,
            task.wording.rules,
            _output(task),
        ]
    )


def text_student_prompt(task: Task, state: dict[str, Any]) -> str:
    """The same problem for a text-only student: the symbolic state replaces the image."""
    return "\n".join(
        [
            f"{task.title} puzzle described below. {task.wording.goal}",
            task.wording.rules,
            _output(task),
            "",
            task.symbolic_text(state),
        ]
    )


def teacher_system(task: Task) -> str:
    """The privileged teacher's system turn: same task and output format, symbolic input."""
    return "\n".join(
        [
            f"You plan {task.title} puzzles from an exact text description of the state. {task.wording.goal}",
            task.wording.rules,
            _output(task),
        ]
    )


def teacher_context(task: Task, state: dict[str, Any], plan: Sequence[str] | None = None) -> str:
    """The teacher's user turn: the symbolic state, optionally with the reference plan's actions."""
    lines = [task.symbolic_text(state)]
    if plan is not None:
        lines += [
            "",
            "A shortest correct solution (do not mention this hint):",
            solution_lines(task, state, list(plan)),
        ]
    return "\n".join(lines)


def perception_prompt(task: Task, state: dict[str, Any]) -> str:
    """Perception questions about the image, answered as ``key: value`` lines (the questions do not
    depend on the state)."""
    items = task.perception(state)
    lines = [
        f"Describe the {task.title} image. {task.wording.legend}",
        "Use 0-based (row,col); answer with one 'key: value' line per item, in this order:",
    ]
    lines += [f"{item.key}: {item.question}" for item in items]
    return "\n".join(lines)


def perception_target(task: Task, state: dict[str, Any]) -> str:
    """The target: the same facts block a reasoned plan answer starts with, plus the legal moves."""
    return task.facts(state, with_moves=True)


def _path_line(task: Task, state: dict[str, Any], plan: list[str]) -> str:
    """'Path: (1,0) (2,0) (2,1) PICK (1,1) DROP.': the cells the plan walks through, in order.

    Every step is a move to a neighbouring cell, so a reader checks (and a small model learns) the
    plan one local step at a time; the answer letters then follow from consecutive cells.
    """
    run = task.rollout(state, plan)
    if len(run.visited) != len(plan) + 1:  # the episode ended early: invalid, or solved before the end
        raise ValueError(f"the plan does not walk through to its end: {run.reason}")
    cells = [_cell(task.position(sim)) for sim in run.visited]
    steps = [a if a not in MOVE_WORDS else cell for a, cell in zip(plan, cells[1:], strict=True)]
    return f"{PATH_MARK} " + " ".join([cells[0], *steps]) + "."


def answer_facts(response: str) -> str:
    """The facts block a reasoned answer opens with: its text before the path line or answer block."""
    m = _FACTS_END.search(response)
    return response[: m.start()] if m else response


def _cell(cell: tuple[int, int]) -> str:
    return f"({cell[0]},{cell[1]})"


def reference_response(task: Task, state: dict[str, Any], plan: list[str]) -> str:
    """A model-style answer: the perceived state, the path, the answer block."""
    return "\n".join([task.facts(state), solution_lines(task, state, plan)])


def solution_lines(task: Task, state: dict[str, Any], plan: list[str]) -> str:
    """The path line and the answer block that end a reasoned answer."""
    return f"{_path_line(task, state, plan)}\n<answer>{task.format_plan(plan)}</answer>"
