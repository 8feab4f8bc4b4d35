"""FrozenLake's renderer: gym's sprites at 64-px cells, resampled to the image size from cached tiles.

A map row of the output image (a *band* of whole pixel rows) is a function of the row's letters,
its index and the sizes only, so its pixels and its compressed PNG piece are cached: a map of L rows
renders and encodes as L cache look-ups once its rows have been seen (few distinct rows exist).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mgsd import png

# Rendering: gymnasium's FrozenLake sprites at 64-px cells (the reference and the VSP images),
# pasted with nearest-neighbour scaling like gym's pygame renderer; with gymnasium <= 1.3 this
# reproduces the VSP PNGs pixel for pixel. gymnasium 1.4 replaced the art (new file names), so
# that set is used as a fallback; it looks different from the VSP images.
BASE_CELL = 64
GRID_COLOUR = (180, 200, 230)
_SPRITE_SETS: tuple[dict[str, str], ...] = (
    {"ice": "ice.png", "H": "hole.png", "G": "goal.png", "S": "stool.png", "elf": "elf_down.png"},
    {
        "ice": "tile_ice.png",
        "H": "tile_hole.png",
        "G": "goal_flag.png",
        "S": "stool.png",
        "elf": "elf_down.png",
    },
)
_BASE_TILES: dict[str, Image.Image] = {}  # tile kind -> 64-px RGB tile
_TILES: dict[tuple[str, int, int, float, float], Image.Image] = {}  # resized tiles, see _tile


def _sprite_dir() -> Path:
    """gymnasium's toy-text sprite folder, found without importing gymnasium."""
    spec = importlib.util.find_spec("gymnasium")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("rendering FrozenLake needs gymnasium installed (it ships the sprites)")
    return Path(next(iter(spec.submodule_search_locations))) / "envs" / "toy_text" / "img"


def sprite_files() -> dict[str, Path]:
    """The sprite files used for rendering: the classic gym set if installed, else gymnasium 1.4's."""
    folder = _sprite_dir()
    for names in _SPRITE_SETS:
        paths = {k: folder / v for k, v in names.items()}
        if all(p.is_file() for p in paths.values()):
            return paths
    raise RuntimeError(f"no known FrozenLake sprite set in the installed gymnasium ({folder.name}/)")


def _paste_sprite(tile: Image.Image, path: Path) -> None:
    sprite = Image.open(path).convert("RGBA")
    scale = BASE_CELL / max(sprite.size)  # keep proportions; the classic sprites are square
    w, h = max(1, round(sprite.width * scale)), max(1, round(sprite.height * scale))
    sprite = sprite.resize((w, h), Image.NEAREST)
    tile.alpha_composite(sprite, ((BASE_CELL - w) // 2, (BASE_CELL - h) // 2))


def _base_tiles() -> dict[str, Image.Image]:
    """One 64-px tile per map letter, drawn in the reference order (ice, object, outline, elf)."""
    if not _BASE_TILES:
        files = sprite_files()
        for kind in "FHGS":
            tile = Image.new("RGBA", (BASE_CELL, BASE_CELL), (255, 255, 255, 255))
            _paste_sprite(tile, files["ice"])
            if kind != "F":
                _paste_sprite(tile, files[kind])
            ImageDraw.Draw(tile).rectangle([0, 0, BASE_CELL - 1, BASE_CELL - 1], outline=GRID_COLOUR)
            if kind == "S":  # the player stands on the start cell
                _paste_sprite(tile, files["elf"])
            _BASE_TILES[kind] = tile.convert("RGB")
    return _BASE_TILES


def _tile(kind: str, width: int, height: int, dx: float, dy: float, scale: float) -> Image.Image:
    """A cached tile of ``width`` x ``height`` px, sampled as a LANCZOS resize of the whole 64-px
    canvas would sample it: the source window starts ``dx``, ``dy`` px off the tile corner (cell
    borders fall between output pixels) and neighbours are approximated by repeating the tile,
    whose outline and ice match most neighbours' edges."""
    key = (kind, width, height, round(dx, 4), round(dy, 4))
    tile = _TILES.get(key)
    if tile is None:
        base = _base_tiles()[kind]
        if (width, height, dx, dy) == (BASE_CELL, BASE_CELL, 0, 0):
            tile = base
        else:
            pad = BASE_CELL // 4
            padded = Image.new("RGB", (BASE_CELL + 2 * pad, BASE_CELL + 2 * pad))
            for ox in (-BASE_CELL, 0, BASE_CELL):
                for oy in (-BASE_CELL, 0, BASE_CELL):
                    padded.paste(base, (pad + ox, pad + oy))
            box = (pad + dx, pad + dy, pad + dx + width * scale, pad + dy + height * scale)
            tile = padded.resize((width, height), Image.LANCZOS, box=box)
        _TILES[key] = tile
    return tile


# Band caches, keyed by (size, n, row index, row letters). Cleared when full (the output never depends
# on what is cached); at 256 px a band is ~40 KB of pixels and ~11 KB compressed.
_MAX_BANDS = 2048
_BAND_PIXELS: dict[tuple[int, int, int, str], np.ndarray] = {}
_BAND_PIECES: dict[tuple[int, int, int, str], png.Band] = {}


def _layout(n: int, size: int) -> tuple[float, list[int], list[float]]:
    """Canvas px per output px, the cell borders (widths differ by <= 1 px) and where each cell's
    sampling window starts."""
    scale = BASE_CELL * n / size
    edges = [round(i * size / n) for i in range(n + 1)]
    offsets = [edges[i] * scale - BASE_CELL * i for i in range(n)]
    return scale, edges, offsets


def band_pixels(row: str, r: int, n: int, size: int) -> np.ndarray:
    """The RGB pixels (h x size x 3) of map row ``r`` of an ``n`` x ``n`` map drawn at ``size``."""
    key = (size, n, r, row)
    pixels = _BAND_PIXELS.get(key)
    if pixels is None:
        scale, edges, offsets = _layout(n, size)
        h = edges[r + 1] - edges[r]
        tiles = [
            np.asarray(_tile(kind, edges[c + 1] - edges[c], h, offsets[c], offsets[r], scale))
            for c, kind in enumerate(row)
        ]
        pixels = np.concatenate(tiles, axis=1)
        pixels.flags.writeable = False  # shared by every render of this row
        if len(_BAND_PIXELS) >= _MAX_BANDS:
            _BAND_PIXELS.clear()
        _BAND_PIXELS[key] = pixels
    return pixels


def render_grid(grid: Sequence[str], size: int) -> Image.Image:
    """The image of a map: its bands stacked."""
    n = len(grid)
    return Image.fromarray(np.concatenate([band_pixels(row, r, n, size) for r, row in enumerate(grid)]))


def grid_png(grid: Sequence[str], size: int) -> bytes:
    """PNG bytes of ``render_grid(grid, size)``, joined from cached per-band pieces."""
    n = len(grid)
    pieces = []
    for r, row in enumerate(grid):
        key = (size, n, r, row)
        piece = _BAND_PIECES.get(key)
        if piece is None:
            piece = png.band(band_pixels(row, r, n, size))
            if len(_BAND_PIECES) >= _MAX_BANDS:
                _BAND_PIECES.clear()
            _BAND_PIECES[key] = piece
        pieces.append(piece)
    return png.assemble(pieces, size, size)
