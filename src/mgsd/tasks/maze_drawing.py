"""Maze's renderer: black walls, white corridors, grey separators, a yellow start and a blue goal dot,
drawn as palette indices with numpy (PIL's rectangle geometry; its ellipse rasteriser once per dot
position, cached)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

START_COLOUR = (255, 255, 0)
GOAL_COLOUR = (0, 0, 255)
SEPARATOR_COLOUR = (224, 224, 224)
S, E = 2, 8  # the state's south and east wall bits (maze.S, maze.E)

# -- drawing: palette indices, composed with numpy (PIL's geometry for the rectangles, its ellipse
# rasteriser once per dot position) ---------------------------------------------------------
PALETTE = ((0, 0, 0), (255, 255, 255), SEPARATOR_COLOUR, START_COLOUR, GOAL_COLOUR)
_WHITE, _SEPARATOR, _START, _GOAL = 1, 2, 3, 4


@lru_cache(maxsize=64)
def _geometry(size: int, n: int) -> tuple[list[int], list[int], list[int], int, int]:
    """Cell borders and the pixel bands centred on them: walls (black) are ``wall`` wide, separators
    ``line``; ``lo[i]`` is the first white pixel after border i, ``hi[i]`` the last before it."""
    cell = size / n
    wall = max(2, int(cell / 4))
    line = max(1, int(cell / 16))
    edges = [round(i * cell) for i in range(n + 1)]
    lo = [e + (wall - wall // 2) for e in edges]
    hi = [e - wall // 2 - 1 for e in edges]
    return edges, lo, hi, wall, line


@lru_cache(maxsize=1024)
def _dot(size: int, n: int, r: int, c: int) -> tuple[slice, slice, np.ndarray]:
    """Where the dot of cell (r, c) lies: its bounding box and mask, as PIL's ``ellipse`` draws it."""
    edges, _, _, wall, _ = _geometry(size, n)
    radius = max(3, int((size / n - wall) * 0.25))
    cx, cy = (edges[c] + edges[c + 1]) / 2, (edges[r] + edges[r + 1]) / 2
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    on = np.asarray(mask) > 0
    rows, cols = np.nonzero(on)
    ys, xs = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    return ys, xs, on[ys, xs]


def indices(state: dict[str, Any], size: int) -> np.ndarray:
    """The image as palette indices, painted in the reference order (later fills cover earlier)."""
    n, walls = state["size"], state["walls"]
    edges, lo, hi, _, line = _geometry(size, n)
    image = np.zeros((size, size), np.uint8)
    for r in range(n):  # cell interiors, stretched over the wall band to an open neighbour
        for c in range(n):
            right = lo[c + 1] if c + 1 < n and not walls[r][c] & E else hi[c + 1]
            image[lo[r] : hi[r + 1] + 1, lo[c] : right + 1] = _WHITE
            if r + 1 < n and not walls[r][c] & S:
                image[hi[r + 1] : lo[r + 1] + 1, lo[c] : hi[c + 1] + 1] = _WHITE
    for r in range(n):  # separators in open passages
        for c in range(n):
            if c + 1 < n and not walls[r][c] & E:
                x = edges[c + 1] - line // 2
                image[lo[r] : hi[r + 1] + 1, x : x + line] = _SEPARATOR
            if r + 1 < n and not walls[r][c] & S:
                y = edges[r + 1] - line // 2
                image[y : y + line, lo[c] : hi[c + 1] + 1] = _SEPARATOR
    for (r, c), colour in ((state["start"], _START), (state["goal"], _GOAL)):
        ys, xs, mask = _dot(size, n, r, c)
        image[ys, xs][mask] = colour
    return image
