"""MiniBehaviour: walk to the printer, pick it up, carry it next to the table and drop it.

Canonical state (all cells 0-based ``[row, col]``)::

    {"size": n, "agent": [r, c], "printer": [r, c], "table": [[r, c] x 6]}

The table is a 2-row x 3-col block listed row-major. The simulator state is ``(row, col, picked)``:
``picked`` turns True at PICK, and the printer cell becomes free floor from then on. A legal DROP
ends the episode; ``picked`` stays True in that final state because the printer is then on the
table, not back on the floor (so drawing that state shows no printer).
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any, ClassVar

from PIL import Image

from mgsd.tasks.base import (
    MOVE_WORDS,
    MOVES,
    Cell,
    PerceptionItem,
    PromptWording,
    Task,
    Transition,
    VocabularyHints,
)
from mgsd.tasks.minibehaviour_drawing import draw_room, room_png
from mgsd.tasks.minibehaviour_solver import shortest_plan

MIN_SIZE, MAX_SIZE = 3, 32
TABLE_ROWS, TABLE_COLS = 2, 3
BUCKETS: tuple[str, ...] = ("easy", "medium", "hard")
MAX_ATTEMPTS = 5000  # candidates per requested bucket; levels 5-6 need a few dozen at most

_KEYS = ("agent", "printer", "size", "table")


def bucket_of(length: int, level: int) -> str:
    """Difficulty bucket of an optimal plan of ``length`` actions (PICK and DROP included)."""
    if length <= level - 1:
        return "easy"
    if length <= level + 1:
        return "medium"
    return "hard"


def _fmt(cell: Cell) -> str:
    return f"({cell[0]},{cell[1]})"


def _fmt_cells(cells: list[Cell]) -> str:
    return ", ".join(_fmt(c) for c in cells)


def _neighbours(cell: Cell, size: int) -> list[Cell]:
    r, c = cell
    out = [(r + dr, c + dc) for dr, dc in MOVES.values()]
    return [(rr, cc) for rr, cc in out if 0 <= rr < size and 0 <= cc < size]


def _adjacent(a: Cell, b: Cell) -> bool:
    return abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1


def _cell(value: Any, what: str, size: int) -> Cell:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"minibehaviour {what} must be a [row, col] pair of ints, got {value!r}")
    r, c = value
    if not (0 <= r < size and 0 <= c < size):
        raise ValueError(f"minibehaviour {what} {_fmt((r, c))} is outside the {size}x{size} grid")
    return (r, c)


def _structure(state: Any, printer_optional: bool = False) -> tuple[int, Cell, Cell | None, list[Cell]]:
    """Check the shape of a state (everything but solvability); returns its parts as tuples."""
    if not isinstance(state, dict):
        raise ValueError(f"minibehaviour state must be a dict, got {type(state).__name__}")
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise ValueError(f"minibehaviour state is missing key(s): {', '.join(missing)}")
    extra = sorted(set(state) - set(_KEYS))
    if extra:
        raise ValueError(f"minibehaviour state has unexpected key(s): {', '.join(map(str, extra))}")
    size = state["size"]
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"minibehaviour size must be an int in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    agent = _cell(state["agent"], "agent", size)
    printer = None
    if state["printer"] is not None or not printer_optional:
        printer = _cell(state["printer"], "printer", size)
    raw_table = state["table"]
    if not isinstance(raw_table, (list, tuple)) or len(raw_table) != TABLE_ROWS * TABLE_COLS:
        raise ValueError(f"minibehaviour table must list {TABLE_ROWS * TABLE_COLS} cells, got {raw_table!r}")
    table = sorted(_cell(v, "table cell", size) for v in raw_table)
    r0, c0 = table[0]
    block = [(r0 + i, c0 + j) for i in range(TABLE_ROWS) for j in range(TABLE_COLS)]
    if table != block:
        raise ValueError(f"minibehaviour table must be a 2-row x 3-col block, got {_fmt_cells(table)}")
    if agent in table:
        raise ValueError(f"minibehaviour agent {_fmt(agent)} is on the table")
    if printer is not None:
        if printer in table:
            raise ValueError(f"minibehaviour printer {_fmt(printer)} is on the table")
        if printer == agent:
            raise ValueError(f"minibehaviour agent and printer share the cell {_fmt(agent)}")
    return size, agent, printer, table


class MiniBehaviour(Task):
    """Pick up the printer, carry it to the 2x3 table and drop it there."""

    name: ClassVar[str] = "minibehaviour"
    title: ClassVar[str] = "MiniBehaviour"
    levels: ClassVar[tuple[int, ...]] = (5, 6)
    actions: ClassVar[tuple[str, ...]] = ("U", "D", "L", "R", "PICK", "DROP")
    plan_separator: ClassVar[str] = ","
    generates_canonical: ClassVar[bool] = True
    wording: ClassVar[PromptWording] = PromptWording(
        legend=(
            "The red triangle is the agent, the white icon the printer, the tan 2x3 block the table; "
            "black cells are floor."
        ),
        goal="Go next to the printer, PICK it up, go next to the table and DROP it.",
        rules=(
            "Moves: U, D, L, R, one cell each. PICK needs the printer next to you; DROP needs the table next "
            "to you while carrying. Table cells are never entered; the printer cell is blocked until PICK."
        ),
        answer_format="comma-separated, e.g. <answer>L,PICK,D,R,DROP</answer>",
        restate="table cells",
    )
    vocabulary: ClassVar[VocabularyHints] = VocabularyHints(
        letters=("A", "P", "T"), words=("agent", "printer", "table")
    )

    # -- instances -------------------------------------------------------------------------
    def validate(self, state: dict[str, Any]) -> dict[str, Any]:
        size, agent, printer, table = _structure(state)
        canonical = {
            "size": size,
            "agent": list(agent),
            "printer": list(printer),  # type: ignore[arg-type]  # never None here
            "table": [list(c) for c in table],
        }
        if self.solve(canonical) is None:
            raise ValueError("minibehaviour state is unsolvable: the printer cannot be reached")
        return canonical

    def level_of(self, state: dict[str, Any]) -> int:
        return int(state["size"])

    @classmethod
    def from_visualplanning_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """The canonical state of a VisualPlanning test row's ``meta`` (keys level, start_pos,
        printer_pos, table_pos; the other keys are derived data and are ignored)."""
        if not isinstance(meta, dict):
            raise ValueError(f"VisualPlanning meta must be a dict, got {type(meta).__name__}")
        missing = [k for k in ("level", "start_pos", "printer_pos", "table_pos") if k not in meta]
        if missing:
            raise ValueError(f"VisualPlanning meta is missing key(s): {', '.join(missing)}")
        state = {
            "size": meta["level"],
            "agent": meta["start_pos"],
            "printer": meta["printer_pos"],
            "table": meta["table_pos"],
        }
        return cls().validate(state)

    def _candidate(self, level: int, rng: random.Random) -> dict[str, Any] | None:
        """One raw draw (TASKS.md §3.3), or None when the layout leaves the printer or the table
        without a free neighbour."""
        r0 = rng.randrange(level - TABLE_ROWS + 1)
        c0 = rng.randrange(level - TABLE_COLS + 1)
        table = [(r0 + i, c0 + j) for i in range(TABLE_ROWS) for j in range(TABLE_COLS)]
        blocked = set(table)
        cells = [(r, c) for r in range(level) for c in range(level)]
        printer = rng.choice([p for p in cells if p not in blocked])
        agent = rng.choice([p for p in cells if p not in blocked and p != printer])
        if not any(n not in blocked for n in _neighbours(printer, level)):
            return None
        if not any(n not in blocked for t in table for n in _neighbours(t, level)):
            return None
        return {
            "size": level,
            "agent": list(agent),
            "printer": list(printer),
            "table": [list(t) for t in table],
        }

    def generate(self, level: int, rng: random.Random) -> dict[str, Any]:
        """Draw a bucket uniformly, then instances until one falls in it."""
        return self.generate_bucket(level, rng, rng.choice(BUCKETS))

    def generate_bucket(self, level: int, rng: random.Random, bucket: str | None) -> dict[str, Any]:
        """Draw instances of ``level`` until one's optimal length falls in ``bucket``.

        ``bucket=None`` keeps the first solvable draw: that raw distribution matches the
        VisualPlanning test set (mean optimal length about 5.2 at level 5 and 6.3 at level 6), while
        uniform buckets, as in the reference generator, shift it up by about 0.3 actions.
        """
        if level not in self.levels:
            raise ValueError(f"level {level} is out of range for minibehaviour (levels 5-6)")
        if bucket is not None and bucket not in BUCKETS:
            raise ValueError(f"unknown difficulty bucket {bucket!r} (choose from {', '.join(BUCKETS)})")
        for _ in range(MAX_ATTEMPTS):
            state = self._candidate(level, rng)
            if state is None:
                continue
            plan = self.solve(state)
            if plan is not None and (bucket is None or bucket_of(len(plan), level) == bucket):
                return state
        raise RuntimeError(f"no {bucket} minibehaviour instance of level {level} in {MAX_ATTEMPTS} draws")

    def solve(self, state: dict[str, Any]) -> list[str] | None:
        """``Task.solve``'s plan, by a search specialised to this simulator (the generator solves
        every candidate); a drawn situation without a printer goes to the generic search."""
        if state.get("printer") is None:
            return super().solve(state)
        return shortest_plan(state["size"], state["agent"], state["printer"], state["table"])

    def difficulty(self, state: dict[str, Any]) -> str:
        """The difficulty bucket (easy/medium/hard) of a state by its optimal plan length."""
        state = self.validate(state)
        plan = self.solve(state)
        assert plan is not None  # validate rejects unsolvable states
        return bucket_of(len(plan), state["size"])

    # -- the one simulator ------------------------------------------------------------------
    def initial(self, state: dict[str, Any]) -> Hashable:
        r, c = state["agent"]
        return (r, c, False)

    def position(self, sim: Hashable) -> Cell:
        r, c, _ = sim  # type: ignore[misc]
        return (r, c)

    def step(self, state: dict[str, Any], sim: Hashable, action: str) -> Transition:
        r, c, picked = sim  # type: ignore[misc]
        table = state["table"]
        if action in MOVES:
            dr, dc = MOVES[action]
            nr, nc = r + dr, c + dc
            size = state["size"]
            if not (0 <= nr < size and 0 <= nc < size):
                return Transition(sim, invalid=f"out_of_bounds:{action}")
            if [nr, nc] in table:
                return Transition(sim, invalid="entered_table")
            if not picked and [nr, nc] == state["printer"]:
                return Transition(sim, invalid="entered_printer")
            return Transition((nr, nc, picked))
        if action == "PICK":
            if picked:
                return Transition(sim, invalid="pick_while_carrying")
            if not _adjacent((r, c), tuple(state["printer"])):
                return Transition(sim, invalid="pick_not_adjacent_to_printer")
            return Transition((r, c, True))
        if action == "DROP":
            if not picked:
                return Transition(sim, invalid="drop_without_printer")
            if not any(_adjacent((r, c), (t[0], t[1])) for t in table):
                return Transition(sim, invalid="drop_not_adjacent_to_table")
            return Transition(sim, success=True)
        return Transition(sim, invalid=f"unknown_action:{action}")

    def env_info(self, sim: Hashable, success: bool) -> dict[str, Any]:
        # The simulator's flag means "picked up"; after the final DROP nothing is carried.
        return {"carrying": bool(sim[2]) and not success}  # type: ignore[index]

    def state_at(self, state: dict[str, Any], sim: Hashable) -> dict[str, Any]:
        """A drawable state of the situation ``sim``: the agent at its current cell and, once the
        printer has been picked, no printer (``"printer": None``; not a valid instance)."""
        r, c, picked = sim  # type: ignore[misc]
        return {**state, "agent": [r, c], "printer": None if picked else state["printer"]}

    # -- views ------------------------------------------------------------------------------
    def render(self, state: dict[str, Any], size: int = 256) -> Image.Image:
        """Black board, tan table, white printer icon, red right-pointing agent, grey grid."""
        n, agent, printer, table = _structure(state, printer_optional=True)
        return draw_room(size, n, agent, printer, table)

    def render_png(self, state: dict[str, Any], size: int = 256) -> bytes:
        n, agent, printer, table = _structure(state, printer_optional=True)
        return room_png(size, n, agent, printer, table)

    def symbolic_text(self, state: dict[str, Any]) -> str:
        state = self.validate(state)
        size, agent, printer, table = _parts(state)
        lines = [
            "Task: MiniBehaviour - pick up the printer and put it down next to the table "
            "(cells are (row,col), 0-based, row 0 at the top)",
            self.facts(state),
            "PICK is legal from a printer_adjacent cell; DROP, while carrying the printer, from a "
            "table_adjacent cell. Table cells can never be entered. Before PICK the printer cell is "
            "blocked as well; after PICK its old cell is free floor.",
            "Grid (A = agent, P = printer, T = table, . = free floor):",
            *_grid_rows(size, agent, printer, table),
        ]
        return "\n".join(lines)

    def perception(self, state: dict[str, Any]) -> list[PerceptionItem]:
        state = self.validate(state)
        size, agent, printer, table = _parts(state)
        moves = _legal_moves(state)
        return [
            PerceptionItem("map_size", "size", "How large is the grid (rows x columns)?", f"{size}x{size}"),
            PerceptionItem("agent", "position", "In which cell is the red agent?", _fmt(agent)),
            PerceptionItem("printer", "position", "In which cell is the white printer?", _fmt(printer)),
            PerceptionItem("table", "cells", "Which cells does the tan table cover?", _fmt_cells(table)),
            PerceptionItem(
                "printer_adjacent",
                "cells",
                "Which free cells border the printer (up, down, left or right)?",
                _fmt_cells(_printer_adjacent(state)),
            ),
            PerceptionItem(
                "table_adjacent",
                "cells",
                "Which cells outside the table border it (up, down, left or right)?",
                _fmt_cells(_table_adjacent(state)),
            ),
            PerceptionItem(
                "legal_moves",
                "actions",
                "Which moves (up, right, down, left) can the agent make from its cell right now?",
                ", ".join(moves) if moves else "none",
            ),
        ]


# -- symbolic helpers ------------------------------------------------------------------------
def _parts(state: dict[str, Any]) -> tuple[int, Cell, Cell, list[Cell]]:
    """The parts of a canonical state as tuples."""
    return (
        state["size"],
        tuple(state["agent"]),
        tuple(state["printer"]),
        [tuple(t) for t in state["table"]],
    )  # type: ignore[return-value]


def _grid_rows(size: int, agent: Cell, printer: Cell, table: list[Cell]) -> list[str]:
    marks = {agent: "A", printer: "P", **{t: "T" for t in table}}
    return ["".join(marks.get((r, c), ".") for c in range(size)) for r in range(size)]


def _printer_adjacent(state: dict[str, Any]) -> list[Cell]:
    """In-bounds 4-neighbours of the printer that are not table cells (PICK cells)."""
    size, _, printer, table = _parts(state)
    return sorted(n for n in _neighbours(printer, size) if n not in table)


def _table_adjacent(state: dict[str, Any]) -> list[Cell]:
    """In-bounds 4-neighbours of the table outside it (DROP cells; may hold the printer)."""
    size, _, _, table = _parts(state)
    return sorted({n for t in table for n in _neighbours(t, size) if n not in table})


def _legal_moves(state: dict[str, Any]) -> list[str]:
    """Move words (up, right, down, left order) the agent can take from the start."""
    size, agent, printer, table = _parts(state)
    out = []
    for a in ("U", "R", "D", "L"):
        dr, dc = MOVES[a]
        cell = (agent[0] + dr, agent[1] + dc)
        if 0 <= cell[0] < size and 0 <= cell[1] < size and cell not in table and cell != printer:
            out.append(MOVE_WORDS[a])
    return out
