"""Prompt wording for every role: visual student, text-only student, privileged teacher, perception.

All wording is ours. As in the reference, coordinates are 0-based (row,col), a reasoned answer restates
the perceived state and ends in exactly one ``<answer>`` block (letters for FrozenLake/Maze,
comma-separated actions with PICK/DROP for MiniBehaviour); in between we put one path line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mgsd.tasks import MOVE_WORDS, Task

IMAGE_LEGEND: dict[str, str] = {
    "frozenlake": "The elf is the player, the gift box the goal, dark water cells are holes, ice is safe.",
    "maze": "The yellow dot is the player, the blue dot the goal; black bands are walls.",
    "minibehaviour": (
        "The red triangle is the agent, the white icon the printer, the tan 2x3 block the table; "
        "black cells are floor."
    ),
}

GOAL: dict[str, str] = {
    "frozenlake": "Reach the goal without stepping into a hole or off the map.",
    "maze": "Reach the goal without crossing a wall.",
    "minibehaviour": "Go next to the printer, PICK it up, go next to the table and DROP it.",
}

RULES: dict[str, str] = {
    "frozenlake": "Moves: U, D, L, R, one cell each; the ice is not slippery.",
    "maze": "Moves: U, D, L, R, one cell each.",
    "minibehaviour": (
        "Moves: U, D, L, R, one cell each. PICK needs the printer next to you; DROP needs the table next "
        "to you while carrying. Table cells are never entered; the printer cell is blocked until PICK."
    ),
}

ANSWER_FORMAT: dict[str, str] = {
    "frozenlake": "letters, e.g. <answer>UURD</answer>",
    "maze": "letters, e.g. <answer>DDRU</answer>",
    "minibehaviour": "comma-separated, e.g. <answer>L,PICK,D,R,DROP</answer>",
}

_OUTPUT = (
    "First restate the size, positions and {things} with 0-based (row,col), then the path (the cells "
    "you walk through), then one answer block with the whole plan, {fmt}."
)
_THINGS = {
    "frozenlake": "holes",
    "maze": "maze drawn with one box-drawing character per cell",
    "minibehaviour": "table cells",
}


def student_prompt(task: Task) -> str:
    """The visual student's instruction; the image follows it in the same user turn."""
    return "\n".join(
        [
            f"{task.title} puzzle in the image. {GOAL[task.name]}",
            IMAGE_LEGEND[task.name],
            RULES[task.name],
            _OUTPUT.format(things=_THINGS[task.name], fmt=ANSWER_FORMAT[task.name]),
        ]
    )


def text_student_prompt(task: Task, state: dict[str, Any]) -> str:
    """The same problem for a text-only student: the symbolic state replaces the image."""
    return "\n".join(
        [
            f"{task.title} puzzle described below. {GOAL[task.name]}",
            RULES[task.name],
            _OUTPUT.format(things=_THINGS[task.name], fmt=ANSWER_FORMAT[task.name]),
            "",
            task.symbolic_text(state),
        ]
    )


def teacher_system(task: Task) -> str:
    """The privileged teacher's system turn: same task and output format, symbolic input."""
    return "\n".join(
        [
            f"You plan {task.title} puzzles from an exact text description of the state. {GOAL[task.name]}",
            RULES[task.name],
            _OUTPUT.format(things=_THINGS[task.name], fmt=ANSWER_FORMAT[task.name]),
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
        f"Describe the {task.title} image. {IMAGE_LEGEND[task.name]}",
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
    return "Path: " + " ".join([cells[0], *steps]) + "."


def _cell(cell: tuple[int, int]) -> str:
    return f"({cell[0]},{cell[1]})"


def reference_response(task: Task, state: dict[str, Any], plan: list[str]) -> str:
    """A model-style answer: the perceived state, the path, the answer block."""
    return "\n".join([task.facts(state), solution_lines(task, state, plan)])


def solution_lines(task: Task, state: dict[str, Any], plan: list[str]) -> str:
    """The path line and the answer block that end a reasoned answer."""
    return f"{_path_line(task, state, plan)}\n<answer>{task.format_plan(plan)}</answer>"
