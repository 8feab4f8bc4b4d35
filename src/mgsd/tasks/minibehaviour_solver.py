"""MiniBehaviour's optimal solver: the generic breadth-first search of ``Task.solve`` specialised to
this task's simulator (flat cell ids, precomputed neighbours), for the generator, which solves every
candidate it draws. It returns exactly the plan ``Task.solve`` returns (same order of exploration,
same tie-breaks); tests/test_minibehaviour.py checks the two against each other."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from mgsd.tasks.base import Cell, grid_moves, plan_to

_ORDER = ("U", "D", "L", "R")  # MiniBehaviour.actions' moves, in its order (PICK and DROP follow)


def shortest_plan(size: int, agent: Cell, printer: Cell, table: Sequence[Cell]) -> list[str] | None:
    """A shortest plan (moves, PICK, moves, DROP), ties broken by the action order, or None.

    Search states are ``cell * 2 + picked``: PICK sets the low bit where the printer is a neighbour;
    DROP, with the bit set next to the table, ends the search."""
    moves = grid_moves(size, _ORDER)
    blocked = {r * size + c for r, c in table}
    held = printer[0] * size + printer[1]
    near_printer = {n for _, n in moves[held]}
    near_table = {n for t in blocked for _, n in moves[t]} - blocked
    start = (agent[0] * size + agent[1]) * 2
    parent: dict[int, tuple[int, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        s = queue.popleft()
        cell, picked = s >> 1, s & 1
        for a, n in moves[cell]:
            if n in blocked or (n == held and not picked):
                continue
            t = n * 2 + picked
            if t not in parent:
                parent[t] = (s, a)
                queue.append(t)
        if not picked:
            if cell in near_printer and s + 1 not in parent:
                parent[s + 1] = (s, "PICK")
                queue.append(s + 1)
        elif cell in near_table:
            return plan_to(parent, s, "DROP")
    return None
