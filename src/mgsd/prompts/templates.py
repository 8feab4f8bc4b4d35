"""Prompt wording for every role: visual student, text-only student, privileged teacher, perception.

All wording is ours. The formats follow the reference (0-based (row,col) coordinates, a short
restatement of the perceived state, one route line, and exactly one ``<answer>`` block; compact
letters for FrozenLake/Maze, comma-separated actions with PICK/DROP for MiniBehaviour).
"""

from __future__ import annotations

from typing import Any

from mgsd.tasks import MOVE_WORDS, Task

IMAGE_LEGEND: dict[str, str] = {
    "frozenlake": (
        "In the picture the elf is the player, the gift box is the goal, dark water holes are unsafe "
        "and plain ice tiles are safe."
    ),
    "maze": (
        "In the picture the yellow dot is the player, the blue dot is the goal, white corridors can be "
        "walked and black bands are walls that cannot be crossed."
    ),
    "minibehaviour": (
        "In the picture the red triangle is the agent, the white printer icon is the printer, the tan "
        "2x3 block is the table and black cells are free floor."
    ),
}

GOAL: dict[str, str] = {
    "frozenlake": "Find a safe route from the player to the goal that never steps on a hole or off the map.",
    "maze": "Find a route from the player to the goal that never passes through a wall.",
    "minibehaviour": (
        "Walk the agent next to the printer, PICK it up, walk next to the table and DROP it there."
    ),
}

RULES: dict[str, str] = {
    "frozenlake": "Moves: U (up), D (down), L (left), R (right); one cell each. The ice is not slippery.",
    "maze": "Moves: U (up), D (down), L (left), R (right); one cell each.",
    "minibehaviour": (
        "Moves: U, D, L, R (one cell each); actions: PICK (only next to the printer) and DROP (only while "
        "carrying and next to the table). Table cells can never be entered. The printer cell is blocked "
        "until PICK; after PICK it is free."
    ),
}

ANSWER_FORMAT: dict[str, str] = {
    "frozenlake": "letters only, e.g. <answer>UURD</answer>",
    "maze": "letters only, e.g. <answer>DDRU</answer>",
    "minibehaviour": "comma-separated actions, e.g. <answer>L,PICK,D,R,DROP</answer>",
}

_OUTPUT = (
    "Reply in this order: first restate what you see (size, positions and the {things}), using 0-based "
    "(row,col) coordinates; then one line with the route; then finish with exactly one answer block "
    "holding the whole plan, {fmt}."
)
_THINGS = {"frozenlake": "holes", "maze": "open directions of every cell", "minibehaviour": "table cells"}


def student_prompt(task: Task) -> str:
    """The visual student's instruction; the image follows it in the same user turn."""
    return "\n".join(
        [
            f"You are solving a {task.title} puzzle shown in the image.",
            GOAL[task.name],
            IMAGE_LEGEND[task.name],
            RULES[task.name],
            _OUTPUT.format(things=_THINGS[task.name], fmt=ANSWER_FORMAT[task.name]),
        ]
    )


def text_student_prompt(task: Task, state: dict[str, Any]) -> str:
    """The same problem for a text-only student: the symbolic state replaces the image."""
    return "\n".join(
        [
            f"You are solving a {task.title} puzzle described in text.",
            GOAL[task.name],
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
            f"You are an expert {task.title} planner. The puzzle is given to you as an exact symbolic "
            "description instead of an image.",
            GOAL[task.name],
            RULES[task.name],
            _OUTPUT.format(things=_THINGS[task.name], fmt=ANSWER_FORMAT[task.name]),
        ]
    )


def teacher_context(task: Task, state: dict[str, Any], plan: str | None = None) -> str:
    """The teacher's user turn: the symbolic state, optionally with the reference plan."""
    lines = [task.symbolic_text(state)]
    if plan is not None:
        lines += ["", f"A shortest correct plan is {plan}. Give your answer without mentioning this hint."]
    return "\n".join(lines)


def perception_prompt(task: Task, state: dict[str, Any]) -> str:
    """Numbered perception questions about the image (the questions do not depend on the state)."""
    items = task.perception(state)
    lines = [
        f"Answer these questions about the {task.title} image.",
        IMAGE_LEGEND[task.name],
        "Use 0-based (row,col) coordinates and answer each question on its own numbered line.",
    ]
    lines += [f"{i}. {item.question}" for i, item in enumerate(items, start=1)]
    return "\n".join(lines)


def perception_target(task: Task, state: dict[str, Any]) -> str:
    """The numbered target answers, one section per question."""
    return "\n".join(f"{i}. {item.answer}" for i, item in enumerate(task.perception(state), start=1))


def _route_line(plan: list[str]) -> str:
    """'Route: 2 up, 1 right, PICK, ...' from a plan (runs of moves compressed)."""
    parts: list[str] = []
    i = 0
    while i < len(plan):
        j = i
        while j < len(plan) and plan[j] == plan[i]:
            j += 1
        a = plan[i]
        parts.append(f"{j - i} {MOVE_WORDS[a]}" if a in MOVE_WORDS else a if j - i == 1 else f"{j - i} {a}")
        i = j
    return "Route: " + ", ".join(parts) + "."


def reference_response(task: Task, state: dict[str, Any], plan: list[str]) -> str:
    """A model-style answer: the perceived state, one route line, the answer block."""
    facts = [f"{item.key}: {item.answer}" for item in task.perception(state) if item.kind != "actions"]
    return "\n".join([*facts, _route_line(plan), f"<answer>{task.format_plan(plan)}</answer>"])
