"""FrozenLake: walk from the start S to the goal G over frozen tiles F without entering a hole H.

Canonical state: ``{"grid": ["SFFH", "FHFF", ...]}``, a square L x L map (L is the level) with
exactly one S (which is also where the player stands) and one G. The lake is non-slippery, and a
move off the grid ends the episode in failure, as in the benchmark evaluator (TASKS.md §1.3).
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mgsd.tasks.base import MOVES, Cell, PerceptionItem, PromptWording, Task, Transition, VocabularyHints
from mgsd.tasks.frozenlake_drawing import BASE_CELL, _base_tiles, grid_png, render_grid
from mgsd.tasks.frozenlake_drawing import sprite_files as sprite_files  # re-exported: its old home

TILES = frozenset("SFHG")
VSP_SYMBOLS: dict[str, str] = {"@": "S", "*": "G", "#": "H", "_": "F"}
_VSP_ROW = re.compile(r"^Row\s*(\d+)$")
# Mean absolute pixel difference (0-255) under which a cell counts as showing a reference tile; the
# VSP renders match to < 1, another sprite set (gymnasium 1.4) is far above it.
_TILE_MATCH = 12.0

# Probability that a tile is frozen. Measured on the VSP maps in shared/data/vsp_examples
# (8 maps per level), holes / cells other than S and G:
#   L3 11/56 = 0.196, L4 24/112 = 0.214, L5 41/184 = 0.223, L6 49/272 = 0.180,
#   L7 60/376 = 0.160, L8 91/496 = 0.183; pooled 276/1496 = 0.184.
# The per-level spread is within sampling noise (8 clustered maps, standard error ~0.03-0.05),
# so one p is used for every level. Placing S and G on frozen cells leaves slightly more holes
# among the other cells than 1 - p, and rejecting unsolvable maps slightly fewer. Simulated
# (2000 maps per level), p = 0.82 gives 0.212/0.202/0.193/0.189/0.189/0.185 for L3..L8,
# pooled 0.190, mean of levels 0.195 (VSP: pooled 0.184, mean of levels 0.193); p = 0.83 gives
# pooled 0.178. (The reference default, 0.9, gives about half the VSP hole density.)
FROZEN_PROBABILITY = 0.82

# Perception questions: (key, answer kind, question), in order (content of TASKS.md §1.6).
QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("size", "size", "How many rows and columns does this FrozenLake map have?"),
    ("player", "position", "Which cell (row,col) is the player standing on?"),
    ("goal", "position", "Which cell (row,col) holds the goal?"),
    ("holes", "cells", "Which cells (row,col) are holes? Answer none if there are none."),
)


def _find(grid: Sequence[str], letter: str) -> Cell:
    for r, row in enumerate(grid):
        c = row.find(letter)
        if c >= 0:
            return (r, c)
    raise ValueError(f"frozenlake map has no {letter}")


def shortest_length(grid: Sequence[str]) -> int | None:
    """Length of a shortest safe path from S to G (BFS over the grid), or None if there is none."""
    n = len(grid)
    start, goal = _find(grid, "S"), _find(grid, "G")
    dist = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES.values():
            nr, nc = r + dr, c + dc
            if 0 <= nr < n and 0 <= nc < n and (nr, nc) not in dist and grid[nr][nc] != "H":
                if (nr, nc) == goal:
                    return dist[(r, c)] + 1
                dist[(nr, nc)] = dist[(r, c)] + 1
                queue.append((nr, nc))
    return None


def _cells(cells: Sequence[Cell]) -> str:
    return ", ".join(f"({r},{c})" for r, c in cells) if cells else "none"


class FrozenLake(Task):
    """The FrozenLake task (VSP maps, levels 3-8)."""

    name: ClassVar[str] = "frozenlake"
    title: ClassVar[str] = "FrozenLake"
    levels: ClassVar[tuple[int, ...]] = (3, 4, 5, 6, 7, 8)
    actions: ClassVar[tuple[str, ...]] = ("L", "D", "R", "U")  # the reference BFS order
    plan_separator: ClassVar[str] = ""
    generates_canonical: ClassVar[bool] = True
    wording: ClassVar[PromptWording] = PromptWording(
        legend="The elf is the player, the gift box the goal, dark water cells are holes, ice is safe.",
        goal="Reach the goal without stepping into a hole or off the map.",
        rules="Moves: U, D, L, R, one cell each; the ice is not slippery.",
        answer_format="letters, e.g. <answer>UURD</answer>",
        restate="holes",
    )
    vocabulary: ClassVar[VocabularyHints] = VocabularyHints(
        letters=("S", "F", "H", "G"), words=("hole", "holes")
    )

    # -- instances -------------------------------------------------------------------------
    def generate(self, level: int, rng: random.Random) -> dict[str, Any]:
        """Each tile frozen with probability FROZEN_PROBABILITY, S and G on two distinct frozen
        cells (adjacent pairs allowed: VSP has 1-step maps); redraw until G is reachable."""
        if level not in self.levels:
            raise ValueError(f"frozenlake level {level} is not one of {self.levels}")
        while True:
            tiles = ["F" if rng.random() < FROZEN_PROBABILITY else "H" for _ in range(level * level)]
            free = [i for i, t in enumerate(tiles) if t == "F"]
            if len(free) < 2:
                continue
            s, g = rng.sample(free, 2)
            tiles[s], tiles[g] = "S", "G"
            grid = ["".join(tiles[r * level : (r + 1) * level]) for r in range(level)]
            if shortest_length(grid) is not None:
                return {"grid": grid}

    def validate(self, state: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(state, dict) or set(state) != {"grid"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"frozenlake state must be a dict with the single key 'grid', got {keys}")
        raw = state["grid"]
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ValueError("frozenlake grid must be a non-empty list of rows")
        grid: list[str] = []
        for r, row in enumerate(raw):
            if isinstance(row, (list, tuple)) and all(isinstance(x, str) and len(x) == 1 for x in row):
                row = "".join(row)
            if not isinstance(row, str):
                raise ValueError(f"frozenlake row {r} is not a string")
            grid.append(row)
        n = len(grid)
        if n < 2 or any(len(row) != n for row in grid):
            raise ValueError(
                f"frozenlake grid must be square with side >= 2, got row lengths {[len(x) for x in grid]}"
            )
        bad = sorted(set("".join(grid)) - TILES)
        if bad:
            raise ValueError(f"frozenlake grid has unknown characters {bad} (allowed: S F H G)")
        for letter in "SG":
            count = sum(row.count(letter) for row in grid)
            if count != 1:
                raise ValueError(f"frozenlake grid must contain exactly one {letter}, found {count}")
        if shortest_length(grid) is None:
            raise ValueError("frozenlake map is unsolvable: the goal cannot be reached without a hole")
        return {"grid": grid}

    def level_of(self, state: dict[str, Any]) -> int:
        return len(state["grid"])

    # -- importers --------------------------------------------------------------------------
    @classmethod
    def from_visualplanning_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """A state from a VisualPlanning test-set ``meta`` (``layout`` of S/F/H/G letters,
        ``start_pos``/``target_pos`` flat ids r*L+c, ``level``)."""
        try:
            layout = meta["layout"]
            grid = ["".join(row) for row in layout]
            start, target = int(meta["start_pos"]), int(meta["target_pos"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed VisualPlanning frozenlake meta: {exc!r}") from None
        n = len(grid)
        if "level" in meta and meta["level"] != n:
            raise ValueError(f"VisualPlanning meta level {meta['level']} does not match a {n}-row layout")
        state = cls().validate({"grid": grid})
        for what, pos, letter in (("start_pos", start, "S"), ("target_pos", target, "G")):
            if divmod(pos, n) != _find(state["grid"], letter):
                raise ValueError(f"VisualPlanning meta {what}={pos} is not the {letter} cell of the layout")
        return state

    @classmethod
    def from_vsp_table(cls, text: str) -> dict[str, Any]:
        """A state from a VSP ``table/{k}.txt`` file (rows ``| Row i | @ | _ | ...``, 1-based).

        Rows are placed by their ``Row i`` number, not by file order, and every row 1..L must occur
        exactly once with L cells (the ``Col`` header, when present, must have L columns too): a
        shuffled or truncated table is either read correctly or refused, never misread.
        """
        rows: dict[int, str] = {}
        header_cols: int | None = None
        for line in text.splitlines():
            cells = [x.strip() for x in line.strip().strip("|").split("|")]
            if not cells:
                continue
            if cells[0] == "" and any(x.startswith("Col") for x in cells[1:]):
                header_cols = sum(x.startswith("Col") for x in cells[1:])
                continue
            m = _VSP_ROW.match(cells[0])
            if not m:
                continue  # separators and anything else
            number = int(m.group(1))
            if number in rows:
                raise ValueError(f"VSP table lists {cells[0]!r} twice")
            try:
                rows[number] = "".join(VSP_SYMBOLS[x] for x in cells[1:])
            except KeyError as exc:
                raise ValueError(f"VSP table has an unknown symbol {exc.args[0]!r} in {cells[0]!r}") from None
        if not rows:
            raise ValueError("VSP table has no '| Row' lines")
        n = len(rows)
        if sorted(rows) != list(range(1, n + 1)):
            raise ValueError(f"VSP table rows are numbered {sorted(rows)}, expected 1..{n}")
        if header_cols is not None and header_cols != n:
            raise ValueError(f"VSP table header has {header_cols} columns for {n} rows")
        return cls().validate({"grid": [rows[i] for i in range(1, n + 1)]})

    @staticmethod
    def read_cells(image: Image.Image, level: int) -> list[str] | None:
        """The map letters a FrozenLake image shows, cell by cell (nearest 64-px reference tile), or
        None when the image does not look like these sprites (another art set): a check that a
        table and its PNG describe the same map, not a perception model."""
        tiles = _base_tiles()
        side = BASE_CELL * level
        img = image.convert("RGB")
        if img.size != (side, side):
            img = img.resize((side, side), Image.LANCZOS)
        pix = np.asarray(img, dtype=np.int16)
        refs = {k: np.asarray(t, dtype=np.int16) for k, t in tiles.items()}
        grid = []
        for r in range(level):
            row = []
            for c in range(level):
                cell = pix[r * BASE_CELL : (r + 1) * BASE_CELL, c * BASE_CELL : (c + 1) * BASE_CELL]
                dist = {k: float(np.abs(cell - ref).mean()) for k, ref in refs.items()}
                best = min(dist, key=dist.__getitem__)
                if dist[best] > _TILE_MATCH:
                    return None
                row.append(best)
            grid.append("".join(row))
        return grid

    # -- the simulator ----------------------------------------------------------------------
    def initial(self, state: dict[str, Any]) -> Hashable:
        return _find(state["grid"], "S")

    def step(self, state: dict[str, Any], sim: Hashable, action: str) -> Transition:
        move = MOVES.get(action)
        if move is None:
            return Transition(sim, invalid=f"unknown_action:{action}")
        grid = state["grid"]
        r, c = sim  # type: ignore[misc]
        nr, nc = r + move[0], c + move[1]
        if not (0 <= nr < len(grid) and 0 <= nc < len(grid)):
            return Transition(sim, invalid=f"out_of_bounds:{action}")
        tile = grid[nr][nc]
        if tile == "H":
            return Transition(sim, invalid="fell_into_hole")
        return Transition((nr, nc), success=tile == "G")

    def position(self, sim: Hashable) -> Cell:
        return sim  # type: ignore[return-value]

    # -- views ------------------------------------------------------------------------------
    def render(self, state: dict[str, Any], size: int = 256) -> Image.Image:
        """The reference look: 64-px gym-sprite cells, LANCZOS-resized to ``size`` (built from cached
        pre-resized tiles, see ``frozenlake_drawing``)."""
        return render_grid(state["grid"], size)

    def render_png(self, state: dict[str, Any], size: int = 256) -> bytes:
        return grid_png(state["grid"], size)

    def holes(self, state: dict[str, Any]) -> list[Cell]:
        """Hole cells in row-major order."""
        return [(r, c) for r, row in enumerate(state["grid"]) for c, t in enumerate(row) if t == "H"]

    def symbolic_text(self, state: dict[str, Any]) -> str:
        grid = state["grid"]
        n = len(grid)
        lines = [
            f"Task: {self.title} ({n}x{n}; cells are (row,col), 0-based, row 0 at the top)",
            self.facts(state),
            "Map rows, top to bottom (S = start, F = frozen and safe, H = hole, G = goal):",
            *grid,
        ]
        return "\n".join(lines)

    def perception(self, state: dict[str, Any]) -> list[PerceptionItem]:
        grid = state["grid"]
        n = len(grid)
        (sr, sc), (gr, gc) = _find(grid, "S"), _find(grid, "G")
        answers = {
            "size": f"{n}x{n}",
            "player": f"({sr},{sc})",
            "goal": f"({gr},{gc})",
            "holes": _cells(self.holes(state)),
        }
        return [PerceptionItem(key, kind, question, answers[key]) for key, kind, question in QUESTIONS]
