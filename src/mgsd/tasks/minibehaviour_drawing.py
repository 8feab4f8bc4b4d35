"""MiniBehaviour's renderer: black board with a grey grid, tan table, white printer icon, red agent.

The board and the icon masks are cached per image and cell size (rendering a dataset draws each once).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from mgsd import png
from mgsd.tasks.base import Cell

_BOARD = (0, 0, 0)
_GRID = (60, 60, 60)
_TABLE = (181, 143, 96)
_PRINTER = (255, 255, 255)
_AGENT = (255, 24, 16)


PALETTE = (_BOARD, _GRID, _TABLE, _PRINTER, _AGENT)
_TABLE_INDEX, _PRINTER_INDEX, _AGENT_INDEX = 2, 3, 4


def draw_room(size: int, n: int, agent: Cell, printer: Cell | None, table: list[Cell]) -> Image.Image:
    """The ``size`` x ``size`` image of an ``n`` x ``n`` room (no printer once it is picked)."""
    return png.to_rgb_image(room_indices(size, n, agent, printer, table), PALETTE)


def room_png(size: int, n: int, agent: Cell, printer: Cell | None, table: list[Cell]) -> bytes:
    """PNG bytes of ``draw_room`` (a palette image: the same pixels)."""
    return png.encode_palette(room_indices(size, n, agent, printer, table), PALETTE)


def room_indices(size: int, n: int, agent: Cell, printer: Cell | None, table: list[Cell]) -> np.ndarray:
    """``draw_room`` as indices into ``PALETTE``."""
    edges = _edges(size, n)
    image = _board(size, n).copy()
    for r, c in table:
        # Inset by one pixel: the grid lines between table cells stay visible.
        image[edges[r] + 1 : edges[r + 1], edges[c] + 1 : edges[c + 1]] = _TABLE_INDEX
    if printer is not None:
        _paste_icon(image, edges, printer, _PRINTER_INDEX, _printer_mask)
    _paste_icon(image, edges, agent, _AGENT_INDEX, _agent_mask)
    return image


# -- drawing (cached pieces: the board with its grid, and one mask per icon and cell shape) ----
@lru_cache(maxsize=64)
def _edges(size: int, n: int) -> tuple[int, ...]:
    """Pixel position of each grid line; the last one is pulled inside the image."""
    cell = size / n
    return tuple(min(round(i * cell), size - 1) for i in range(n + 1))


@lru_cache(maxsize=32)
def _board(size: int, n: int) -> np.ndarray:
    """The empty board (index 0) with its one-pixel grid lines (index 1)."""
    image = np.zeros((size, size), np.uint8)
    for e in _edges(size, n):
        image[:, e] = 1
        image[e, :] = 1
    image.flags.writeable = False  # shared: draw_room copies it
    return image


@lru_cache(maxsize=128)
def _printer_mask(w: int, h: int) -> np.ndarray:
    """White-printer silhouette in a w x h cell: paper, rounded body, tray; slot and dot are holes."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    iw, ih = 0.58 * w, 0.52 * h
    left, top = (w - iw) / 2, (h - ih) / 2

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return (
            round(left + x0 * iw),
            round(top + y0 * ih),
            max(round(left + x0 * iw), round(left + x1 * iw) - 1),
            max(round(top + y0 * ih), round(top + y1 * ih) - 1),
        )

    draw.rectangle(box(0.22, 0.0, 0.78, 0.34), fill=255)  # paper sticking out of the top
    draw.rounded_rectangle(box(0.0, 0.26, 1.0, 0.8), radius=max(1, round(0.1 * ih)), fill=255)  # body
    draw.rectangle(box(0.1, 0.86, 0.9, 1.0), fill=255)  # output tray
    draw.rectangle(box(0.16, 0.58, 0.84, 0.66), fill=0)  # paper slot (black: the board shows through)
    cx, cy, rad = left + 0.86 * iw, top + 0.4 * ih, max(1.0, 0.05 * iw)
    draw.ellipse((round(cx - rad), round(cy - rad), round(cx + rad), round(cy + rad)), fill=0)  # status light
    return _boolean(mask)


@lru_cache(maxsize=128)
def _agent_mask(w: int, h: int) -> np.ndarray:
    """Right-pointing triangle inset 22% horizontally and 20% vertically."""
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(
        [
            (round(0.22 * w), round(0.2 * h)),
            (round(0.22 * w), round(0.8 * h)),
            (round(0.78 * w), round(0.5 * h)),
        ],
        fill=255,
    )
    return _boolean(mask)


def _boolean(mask: Image.Image) -> np.ndarray:
    """An icon mask as booleans: PIL draws these shapes without anti-aliasing (0 or 255 only), so
    pasting a colour through it and setting the masked pixels are the same."""
    values = np.asarray(mask)
    assert set(np.unique(values).tolist()) <= {0, 255}, "icon masks are not anti-aliased"
    on = values > 0
    on.flags.writeable = False
    return on


def _paste_icon(
    image: np.ndarray,
    edges: tuple[int, ...],
    cell: Cell,
    colour: int,
    make: Callable[[int, int], np.ndarray],
) -> None:
    """Set ``colour`` through the cached icon mask of the cell's pixel size."""
    r, c = cell
    x0, y0 = edges[c], edges[r]
    mask = make(edges[c + 1] - x0, edges[r + 1] - y0)
    image[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask] = colour
