"""Maze: move from the start to the goal through a walled grid maze.

Canonical state: ``{"size": n, "walls": [[mask, ...], ...], "start": [r, c], "goal": [r, c]}``
with one wall bitmask per cell, N=1, S=2, W=4, E=8 (a set bit is a wall; 15 is a closed box),
the reference text-file layout (TASKS.md §2.1). The border is always walled. Generated mazes are
perfect (a spanning tree), so the shortest path is unique.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable
from functools import lru_cache
from typing import Any, ClassVar

from PIL import Image

from mgsd import png
from mgsd.tasks.base import (
    MOVE_WORDS,
    MOVES,
    Cell,
    PerceptionItem,
    PromptWording,
    Task,
    Transition,
    VocabularyHints,
    grid_moves,
    plan_to,
)
from mgsd.tasks.maze_drawing import PALETTE, indices

N, S, W, E = 1, 2, 4, 8
WALL_BIT: dict[str, int] = {"U": N, "D": S, "L": W, "R": E}
OPPOSITE: dict[int, int] = {N: S, S: N, W: E, E: W}
META_KEYS: dict[str, int] = {"north": N, "south": S, "west": W, "east": E}
WORD_ORDER = ("U", "R", "D", "L")  # open directions are listed as up, right, down, left
DFS_ORDER = ("U", "R", "D", "L")  # the reference backtracker lists neighbours N, E, S, W
BUCKETS = ("easy", "medium", "hard")
MAX_ATTEMPTS = 4096  # candidates drawn per requested bucket, as in the reference


# Perception questions: (key, answer kind, question), in order (content of TASKS.md §2.6).
QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("size", "size", "How many rows and columns does this maze have?"),
    ("player", "position", "Which cell (row,col) holds the player, the yellow dot?"),
    ("goal", "position", "Which cell (row,col) holds the goal, the blue dot?"),
    (
        "open_dirs",
        "open_dirs",
        "Draw the maze row by row with one box-drawing character per cell whose strokes point to the "
        "open (unwalled) directions.",
    ),
    ("legal_actions", "actions", "Which moves (up, right, down, left) can the player make from its cell?"),
)


@lru_cache(maxsize=32)
def _neighbours(n: int, order: tuple[str, ...]) -> tuple[tuple[tuple[str, int, int], ...], ...]:
    """Per flat cell id ``r * n + c``: its in-bounds neighbours (action, wall bit, cell id), in ``order``."""
    return tuple(tuple((a, WALL_BIT[a], t) for a, t in cell) for cell in grid_moves(n, order))


def carve(n: int, rng: random.Random) -> list[list[int]]:
    """A perfect maze: randomized depth-first backtracker from a random cell (flat cell ids and
    precomputed neighbours; the draws from ``rng`` are the reference's: a row, a column, then one
    choice among the unvisited neighbours, listed N, E, S, W, at every step)."""
    table = _neighbours(n, DFS_ORDER)
    walls = [N | S | W | E] * (n * n)
    start = rng.randrange(n) * n
    start += rng.randrange(n)
    seen = [False] * (n * n)
    seen[start] = True
    stack = [start]
    while stack:
        cur = stack[-1]
        options = [step for step in table[cur] if not seen[step[2]]]
        if not options:
            stack.pop()
            continue
        _, bit, nxt = rng.choice(options)
        walls[cur] &= ~bit
        walls[nxt] &= ~OPPOSITE[bit]
        seen[nxt] = True
        stack.append(nxt)
    return [walls[r * n : (r + 1) * n] for r in range(n)]


def _search(walls: list[list[int]], start: Cell, goal: Cell, order: tuple[str, ...]) -> list[str] | None:
    """``Task.solve``'s breadth-first search on the maze graph (the same plan, ties broken by
    ``order``), or None when the goal is unreachable."""
    n = len(walls)
    flat = [m for row in walls for m in row]
    table = _neighbours(n, order)
    source, target = start[0] * n + start[1], goal[0] * n + goal[1]
    parent: dict[int, tuple[int, str] | None] = {source: None}
    queue = deque([source])
    while queue:
        s = queue.popleft()
        for a, bit, t in table[s]:
            if flat[s] & bit:
                continue
            if t == target:
                return plan_to(parent, s, a)
            if t not in parent:
                parent[t] = (s, a)
                queue.append(t)
    return None


def distances(walls: list[list[int]], source: Cell) -> dict[Cell, int]:
    """BFS distance (in moves) from ``source`` to every reachable cell."""
    n = len(walls)
    dist = {source: 0}
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        for a, (dr, dc) in MOVES.items():
            nxt = (r + dr, c + dc)
            if not walls[r][c] & WALL_BIT[a] and 0 <= nxt[0] < n and 0 <= nxt[1] < n and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return dist


def bucket_of(length: int, level: int) -> str:
    """The reference difficulty bucket of a path of ``length`` moves in a ``level`` maze."""
    if length <= max(1, level // 2):
        return "easy"
    return "medium" if length <= level else "hard"


def difficulty(state: dict[str, Any]) -> str:
    """Difficulty bucket (easy / medium / hard) of a maze state, from its shortest-path length."""
    (sr, sc), (gr, gc) = state["start"], state["goal"]
    return bucket_of(distances(state["walls"], (sr, sc))[(gr, gc)], state["size"])


def _gap(length: int, level: int, bucket: str) -> int:
    """How many moves ``length`` is away from ``bucket`` (0 inside it)."""
    easy = max(1, level // 2)
    lo, hi = {"easy": (1, easy), "medium": (easy + 1, level), "hard": (level + 1, level * level)}[bucket]
    return max(lo - length, length - hi, 0)


# One box-drawing glyph per set of open directions: its strokes point where the cell is open. A whole
# maze restates as n short rows (one token per cell) instead of a (row,col) list of words per cell.
GLYPHS: dict[frozenset[str], str] = {
    frozenset(): "·",
    frozenset("U"): "╵",
    frozenset("R"): "╶",
    frozenset("D"): "╷",
    frozenset("L"): "╴",
    frozenset("UD"): "│",
    frozenset("LR"): "─",
    frozenset("UR"): "└",
    frozenset("RD"): "┌",
    frozenset("DL"): "┐",
    frozenset("UL"): "┘",
    frozenset("URD"): "├",
    frozenset("UDL"): "┤",
    frozenset("RDL"): "┬",
    frozenset("URL"): "┴",
    frozenset("URDL"): "┼",
}
GLYPH_MOVES: dict[str, frozenset[str]] = {g: m for m, g in GLYPHS.items()}


def _words(actions: list[str]) -> str:
    return ", ".join(MOVE_WORDS[a] for a in actions) if actions else "none"


class Maze(Task):
    """The Maze task (VisualPlanning maze layouts, levels 3-6)."""

    name: ClassVar[str] = "maze"
    title: ClassVar[str] = "Maze"
    levels: ClassVar[tuple[int, ...]] = (3, 4, 5, 6)
    actions: ClassVar[tuple[str, ...]] = ("U", "D", "L", "R")  # any order: the path is unique
    plan_separator: ClassVar[str] = ""
    generates_canonical: ClassVar[bool] = True
    wording: ClassVar[PromptWording] = PromptWording(
        legend="The yellow dot is the player, the blue dot the goal; black bands are walls.",
        goal="Reach the goal without crossing a wall.",
        rules="Moves: U, D, L, R, one cell each.",
        answer_format="letters, e.g. <answer>DDRU</answer>",
        restate="maze drawn with one box-drawing character per cell",
    )
    vocabulary: ClassVar[VocabularyHints] = VocabularyHints(
        words=("wall", "walls"), glyphs="".join(GLYPHS.values())
    )

    # -- instances -------------------------------------------------------------------------
    def generate(self, level: int, rng: random.Random) -> dict[str, Any]:
        """A perfect maze with two distinct random cells as start and goal.

        The reference cycles the requested difficulty bucket over the samples it writes; we are
        called once per sample, so the bucket is drawn uniformly from ``rng`` instead. Candidates
        (a new maze and new endpoints each time) are drawn until the path length falls in the
        bucket; after MAX_ATTEMPTS the candidate closest to the bucket (the first one on ties) is
        kept, so the call never fails. With these levels a bucket is hit within a few tries.
        """
        if level not in self.levels:
            raise ValueError(f"maze level {level} is not one of {self.levels}")
        bucket = rng.choice(BUCKETS)
        cells = [(r, c) for r in range(level) for c in range(level)]
        best: tuple[int, dict[str, Any]] | None = None
        for _ in range(MAX_ATTEMPTS):
            walls = carve(level, rng)
            start, goal = rng.sample(cells, 2)
            path = _search(walls, start, goal, DFS_ORDER)  # a perfect maze has one path
            assert path is not None
            gap = _gap(len(path), level, bucket)
            state = {"size": level, "walls": walls, "start": list(start), "goal": list(goal)}
            if gap == 0:
                return state
            if best is None or gap < best[0]:
                best = (gap, state)
        assert best is not None
        return best[1]

    def validate(self, state: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(state, dict) or set(state) != {"size", "walls", "start", "goal"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"maze state must have exactly the keys goal, size, start, walls; got {keys}")
        n = state["size"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"maze size must be an integer >= 2, got {n!r}")
        raw = state["walls"]
        if (
            not isinstance(raw, (list, tuple))
            or len(raw) != n
            or any(not isinstance(row, (list, tuple)) or len(row) != n for row in raw)
        ):
            raise ValueError(f"maze walls must be {n} rows of {n} masks")
        walls = [list(row) for row in raw]
        for r, row in enumerate(walls):
            for c, m in enumerate(row):
                if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= 15:
                    raise ValueError(f"maze wall mask at ({r},{c}) must be an integer 0..15, got {m!r}")
                if (r == 0 and not m & N) or (r == n - 1 and not m & S):
                    raise ValueError(f"maze border cell ({r},{c}) is missing its outer wall")
                if (c == 0 and not m & W) or (c == n - 1 and not m & E):
                    raise ValueError(f"maze border cell ({r},{c}) is missing its outer wall")
                if c + 1 < n and bool(m & E) != bool(row[c + 1] & W):
                    raise ValueError(f"maze walls disagree between ({r},{c}) east and ({r},{c + 1}) west")
                if r + 1 < n and bool(m & S) != bool(walls[r + 1][c] & N):
                    raise ValueError(f"maze walls disagree between ({r},{c}) south and ({r + 1},{c}) north")
        ends = []
        for key in ("start", "goal"):
            cell = state[key]
            if (
                not isinstance(cell, (list, tuple))
                or len(cell) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < n for x in cell)
            ):
                raise ValueError(f"maze {key} must be [row, col] inside the {n}x{n} grid, got {cell!r}")
            ends.append((cell[0], cell[1]))
        if ends[0] == ends[1]:
            raise ValueError("maze start and goal are the same cell")
        if ends[1] not in distances(walls, ends[0]):
            raise ValueError("maze goal is not reachable from the start")
        return {"size": n, "walls": walls, "start": list(ends[0]), "goal": list(ends[1])}

    def level_of(self, state: dict[str, Any]) -> int:
        return state["size"]

    def solve(self, state: dict[str, Any]) -> list[str] | None:
        """``Task.solve``'s plan, by a search on the maze graph (the generator solves every sample)."""
        (sr, sc), (gr, gc) = state["start"], state["goal"]
        if (sr, sc) == (gr, gc):
            return super().solve(state)  # nothing to search (not a valid instance)
        return _search(state["walls"], (sr, sc), (gr, gc), self.actions)

    def difficulty(self, state: dict[str, Any]) -> str:
        """The difficulty bucket of ``state`` (same as the module-level ``difficulty``)."""
        return difficulty(state)

    @classmethod
    def from_visualplanning_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """A state from a VisualPlanning ``meta``: ``layout`` rows of {north, south, east, west}
        booleans (true = wall), ``start_pos``/``target_pos`` flat ids r*L+c, ``level``."""
        try:
            layout = meta["layout"]
            walls = [
                [sum(bit for key, bit in META_KEYS.items() if cell[key]) for cell in row] for row in layout
            ]
            start, target = int(meta["start_pos"]), int(meta["target_pos"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed VisualPlanning maze meta: {exc!r}") from None
        n = len(walls)
        if "level" in meta and meta["level"] != n:
            raise ValueError(f"VisualPlanning meta level {meta['level']} does not match a {n}-row layout")
        for what, pos in (("start_pos", start), ("target_pos", target)):
            if not 0 <= pos < n * n:
                raise ValueError(f"VisualPlanning meta {what}={pos} is outside the {n}x{n} maze")
        state = {"size": n, "walls": walls, "start": list(divmod(start, n)), "goal": list(divmod(target, n))}
        return cls().validate(state)

    # -- the simulator ----------------------------------------------------------------------
    def initial(self, state: dict[str, Any]) -> Hashable:
        return tuple(state["start"])

    def step(self, state: dict[str, Any], sim: Hashable, action: str) -> Transition:
        bit = WALL_BIT.get(action)
        if bit is None:
            return Transition(sim, invalid=f"unknown_action:{action}")
        r, c = sim  # type: ignore[misc]
        if state["walls"][r][c] & bit:
            return Transition(sim, invalid=f"wall_blocked:{action}")
        nr, nc = r + MOVES[action][0], c + MOVES[action][1]
        n = state["size"]
        if not (0 <= nr < n and 0 <= nc < n):  # unreachable with walled borders; kept as a guard
            return Transition(sim, invalid=f"out_of_bounds:{action}")
        goal = state["goal"]
        return Transition((nr, nc), success=nr == goal[0] and nc == goal[1])

    def position(self, sim: Hashable) -> Cell:
        return sim  # type: ignore[return-value]

    # -- views ------------------------------------------------------------------------------
    def render(self, state: dict[str, Any], size: int = 256) -> Image.Image:
        """Black walls, white corridors, grey cell separators in open passages, a yellow start
        dot and a blue goal dot (the reference renderer's geometry, TASKS.md §2.4)."""
        return png.to_rgb_image(indices(state, size), PALETTE)

    def render_png(self, state: dict[str, Any], size: int = 256) -> bytes:
        return png.encode_palette(indices(state, size), PALETTE)

    def open_moves(self, state: dict[str, Any], cell: Cell) -> list[str]:
        """The moves not blocked by a wall from ``cell``, in the order up, right, down, left."""
        mask = state["walls"][cell[0]][cell[1]]
        return [a for a in WORD_ORDER if not mask & WALL_BIT[a]]

    def open_table(self, state: dict[str, Any]) -> str:
        """One line per cell, row-major: ``(r,c): up, right, down, left`` (open ones) or ``none``."""
        n = state["size"]
        return "\n".join(
            f"({r},{c}): {_words(self.open_moves(state, (r, c)))}" for r in range(n) for c in range(n)
        )

    def open_grid(self, state: dict[str, Any]) -> str:
        """The maze drawn row by row, one ``GLYPHS`` character per cell."""
        n = state["size"]
        return "\n".join(
            "".join(GLYPHS[frozenset(self.open_moves(state, (r, c)))] for c in range(n)) for r in range(n)
        )

    def symbolic_text(self, state: dict[str, Any]) -> str:
        n = state["size"]
        lines = [
            f"Task: {self.title} ({n}x{n}; cells are (row,col), 0-based, row 0 at the top)",
            "open_dirs below draws the maze with one character per cell, row by row; its strokes point to "
            "the cell's open sides (╵ up, ╶ right, ╷ down, ╴ left, so ┌ = right and down, ┼ = all four); "
            "other sides are walls.",
            self.facts(state),
        ]
        return "\n".join(lines)

    def perception(self, state: dict[str, Any]) -> list[PerceptionItem]:
        n = state["size"]
        (sr, sc), (gr, gc) = state["start"], state["goal"]
        answers = {
            "size": f"{n}x{n}",
            "player": f"({sr},{sc})",
            "goal": f"({gr},{gc})",
            "open_dirs": self.open_grid(state),
            "legal_actions": _words(self.open_moves(state, (sr, sc))),
        }
        return [PerceptionItem(key, kind, question, answers[key]) for key, kind, question in QUESTIONS]
