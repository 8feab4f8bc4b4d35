"""Synthetic grid scenes for generic visual grounding (pretraining the tiny base; never task renders).

A pretrained VLM has seen countless pictures before it meets our tasks; the tiny base gets this
instead: n x n grids (n = 3..8) in random palettes, with coloured fills and shapes (disc, square,
triangle, cross, ring, diamond) or with wall bands between cells. Each scene is described as
``key: value`` lines with 0-based ``(row,col)`` cells, the same vocabulary and layout as a task's facts
block, so the skills (count the grid, localise an object, list cells, read walls) carry over while no
scene is ever a task's render paired with its state.

A scene is a JSON-able spec (stored in the ``state`` column); ``scene_image`` draws it and
``scene_target`` describes it, both deterministically.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from mgsd.tasks.maze import GLYPHS

SCENE_TASK = "scene"  # the ``task`` column of scene rows
SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (240, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 180),
    "brown": (130, 80, 40),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
    "grey": (128, 128, 128),
}
_DIRS = {"U": (-1, 0), "R": (0, 1), "D": (1, 0), "L": (0, -1)}

SCENE_PROMPT = (
    "Describe the grid picture: its size, the cell of each object and the cells of each colour "
    "fill, using 0-based (row,col) from the top-left."
)
WALL_PROMPT = (
    "Describe the grid picture: its size, the cell of each object, then the cells drawn row by row "
    "with one box-drawing character each, whose strokes point to the sides without a wall."
)


def generate_scene(rng: random.Random) -> dict[str, Any]:
    """One random scene spec: ``objects`` (shape, colour, cell), ``fills`` and, for wall scenes, walls."""
    n = rng.randint(3, 8)
    kind = "walls" if rng.random() < 0.3 else "fills"
    names = list(COLOURS)
    background = rng.choice(names)
    others = [c for c in names if c != background]
    cells = [(r, c) for r in range(n) for c in range(n)]
    rng.shuffle(cells)
    scene: dict[str, Any] = {"kind": kind, "size": n, "background": background}
    fills: dict[str, list[list[int]]] = {}
    if kind == "fills":
        for colour in rng.sample(others, rng.randint(0, 2)):
            count = rng.randint(1, max(1, n * n // 4))
            fills[colour] = sorted([list(cells.pop()) for _ in range(min(count, len(cells) - 3))])
        others = [c for c in others if c not in fills]
    scene["fills"] = {k: v for k, v in fills.items() if v}
    objects = []
    used: set[tuple[str, str]] = set()
    for _ in range(rng.randint(1, 3)):
        shape, colour = rng.choice(SHAPES), rng.choice(others)
        if (shape, colour) in used or not cells:
            continue
        used.add((shape, colour))
        objects.append({"shape": shape, "colour": colour, "cell": list(cells.pop())})
    scene["objects"] = objects
    if kind == "walls":
        # walls[r][c] = the open directions of cell (r,c); an inner side is open with probability 0.6.
        open_: dict[tuple[int, int], set[str]] = {(r, c): set() for r in range(n) for c in range(n)}
        for r in range(n):
            for c in range(n):
                for d, (a, b) in (("R", (r, c + 1)), ("D", (r + 1, c))):
                    if a < n and b < n and rng.random() < 0.6:
                        open_[(r, c)].add(d)
                        open_[(a, b)].add("L" if d == "R" else "U")
        scene["wall_colour"] = rng.choice([c for c in others if c not in {o["colour"] for o in objects}])
        scene["open"] = [["".join(sorted(open_[(r, c)])) for c in range(n)] for r in range(n)]
    return scene


def dump_scene(scene: dict[str, Any]) -> str:
    return json.dumps(scene, sort_keys=True, separators=(",", ":"))


def _cell(cell: list[int] | tuple[int, int]) -> str:
    return f"({cell[0]},{cell[1]})"


def scene_prompt(scene: dict[str, Any]) -> str:
    return WALL_PROMPT if scene["kind"] == "walls" else SCENE_PROMPT


def scene_target(scene: dict[str, Any]) -> str:
    """The scene as ``key: value`` lines (size, objects in drawing order, fills or the glyph grid)."""
    n = scene["size"]
    lines = [f"size: {n}x{n}"]
    lines += [f"{o['colour']} {o['shape']}: {_cell(o['cell'])}" for o in scene["objects"]]
    for colour, cells in sorted(scene.get("fills", {}).items()):
        lines.append(f"{colour} cells: " + ", ".join(_cell(c) for c in cells))
    if scene["kind"] == "walls":
        lines.append("open_dirs:")
        lines += ["".join(GLYPHS[frozenset(s)] for s in row) for row in scene["open"]]
    return "\n".join(lines)


QUESTION_KINDS = ("where", "what", "colour", "size")


def scene_question(
    scene: dict[str, Any], key: int, kinds: Sequence[str] = QUESTION_KINDS
) -> tuple[str, str, str]:
    """One short question about ``scene`` and its answer, ``(kind, prompt, target)``, chosen by ``key``
    among ``kinds`` (a subset of ``QUESTION_KINDS``).

    Why: a whole description asks the LM to find every object and list it in one go; a tiny LM
    trained only on that writes the same generic lines for every picture. A single question is one
    retrieval (a named object -> its cell, a cell -> what is there), the primitive a description is
    built from; a pretrained VLM has answered millions of them.
    """
    n, objects = scene["size"], scene["objects"]
    unknown = sorted(set(kinds) - set(QUESTION_KINDS))
    if unknown or not kinds:
        raise ValueError(f"question kinds must be a non-empty subset of {QUESTION_KINDS}, got {list(kinds)}")
    kinds = [k for k in kinds if k != "colour" or scene.get("fills")] or ["size"]
    kind = kinds[key % len(kinds)] if objects else "size"
    key //= len(kinds)
    if kind == "where":
        o = objects[key % len(objects)]
        return kind, f"Where is the {o['colour']} {o['shape']}? Give its 0-based (row,col).", _cell(o["cell"])
    if kind == "what":
        # Half of the asks land on an object's cell, the rest on any cell (often empty).
        if key % 2 == 0:
            cell = objects[(key // 2) % len(objects)]["cell"]
        else:
            cell = [(key // 2) % n, (key // (2 * n)) % n]
        at = {tuple(o["cell"]): o for o in objects}.get(tuple(cell))
        answer = f"{at['colour']} {at['shape']}" if at else "nothing"
        return kind, f"What is in cell {_cell(cell)}? Name the object or say nothing.", answer
    if kind == "colour":
        colour, cells = sorted(scene["fills"].items())[key % len(scene["fills"])]
        return (
            kind,
            f"Which cells are filled {colour}? List their 0-based (row,col).",
            ", ".join(_cell(c) for c in cells),
        )
    return "size", "How many cells does the grid have on each side?", f"{n}x{n}"


def _shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill: Any) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    if shape == "disc":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "cross":
        t = w / 6
        draw.rectangle([cx - t, y0, cx + t, y1], fill=fill)
        draw.rectangle([x0, cy - t, x1, cy + t], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(w / 6)))
    else:
        raise ValueError(f"unknown shape {shape!r}")


def scene_image(scene: dict[str, Any], size: int = 256) -> Image.Image:
    """Draw a scene: background, fills, optional grid lines or walls, then the objects."""
    n = scene["size"]
    cell = size / n
    edges = [round(i * cell) for i in range(n + 1)]
    image = Image.new("RGB", (size, size), COLOURS[scene["background"]])
    draw = ImageDraw.Draw(image)
    for colour, cells in scene.get("fills", {}).items():
        for r, c in cells:
            draw.rectangle([edges[c], edges[r], edges[c + 1] - 1, edges[r + 1] - 1], fill=COLOURS[colour])
    if scene["kind"] == "walls":
        band = max(2, int(cell / 5))
        ink = COLOURS[scene["wall_colour"]]
        for r in range(n):
            for c in range(n):
                sides = scene["open"][r][c]
                if "R" not in sides:
                    x = edges[c + 1]
                    draw.rectangle([x - band // 2, edges[r], x + band // 2, edges[r + 1]], fill=ink)
                if "D" not in sides:
                    y = edges[r + 1]
                    draw.rectangle([edges[c], y - band // 2, edges[c + 1], y + band // 2], fill=ink)
                if c == 0:
                    draw.rectangle([0, edges[r], band // 2, edges[r + 1]], fill=ink)
                if r == 0:
                    draw.rectangle([edges[c], 0, edges[c + 1], band // 2], fill=ink)
    else:
        grey = (90, 90, 90) if scene["background"] != "grey" else (200, 200, 200)
        for e in edges[1:-1]:
            draw.line([(e, 0), (e, size)], fill=grey, width=1)
            draw.line([(0, e), (size, e)], fill=grey, width=1)
    for o in scene["objects"]:
        r, c = o["cell"]
        pad = cell * 0.2
        box = (edges[c] + pad, edges[r] + pad, edges[c + 1] - pad, edges[r + 1] - pad)
        _shape(draw, o["shape"], box, COLOURS[o["colour"]])
    return image


def scene_rows(count: int, seed: int, *, progress: bool = True) -> list[dict[str, Any]]:
    """``count`` scene rows in the dataset schema (``task`` = ``"scene"``, the spec in ``state``)."""
    from tqdm import tqdm

    from mgsd.data.generate import sample_seed
    from mgsd.data.io import png_bytes

    rows = []
    for i in tqdm(range(count), desc="scenes", unit="scene", disable=not progress, leave=False):
        scene = generate_scene(random.Random(sample_seed(seed, SCENE_TASK, "pretrain", 0, i)))
        rows.append(
            {
                "id": f"scene/pretrain/{i:06d}",
                "task": SCENE_TASK,
                "level": scene["size"],
                "split": "pretrain",
                "state": dump_scene(scene),
                "image": png_bytes(scene_image(scene)),
                "optimal_plan": "",
                "optimal_length": 0,
                "source": "mgsd-scenes",
            }
        )
    return rows
