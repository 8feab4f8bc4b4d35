"""The case gallery: sample images with the predicted path drawn over them, the response and verdict.

The path is the task's own simulation of the parsed plan (``task.rollout(...).visited``), drawn as a
polyline through cell centres from a ring (the start) to a square (the end): green when it reaches the
goal, amber when it stops short, red when an illegal action ended it (a red cross on the cell the action
tried to enter, at the grid's edge when it left the grid, or on the agent's cell for an illegal
PICK/DROP). Diamonds mark where PICK and DROP were executed.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mgsd.actions import parse_plan
from mgsd.data.io import decode_image, read_rows
from mgsd.files import read_jsonl
from mgsd.scoring.plans import is_invalid
from mgsd.tasks import MOVES, Task, get_task

SIZE = 256  # gallery image size in pixels
GREEN, AMBER, RED, WHITE = (0, 170, 90), (240, 160, 0), (220, 30, 30), (255, 255, 255)


@dataclass
class Case:
    """One gallery entry, ready for HTML."""

    run: str
    sample_id: str
    task: str
    level: int
    image_url: str
    verdict: str
    ok: bool
    plan: str | None
    response: str | None
    error: str | None = None


def _centre(cell: tuple[int, int], n: int, size: int) -> tuple[float, float]:
    r, c = cell
    return ((c + 0.5) * size / n, (r + 0.5) * size / n)


def draw_path(
    image: Image.Image, task: Task, state: dict[str, Any], actions: Sequence[str] | None
) -> Image.Image:
    """``image`` (resized to SIZE) with the plan's path drawn over it; unchanged when there is no plan."""
    img = image.convert("RGB").resize((SIZE, SIZE))
    if not actions:
        return img
    n = task.level_of(state)
    run = task.rollout(state, actions)
    cells = [task.position(sim) for sim in run.visited]
    points = [_centre(c, n, SIZE) for c in cells]
    invalid = is_invalid(run.reason)
    colour = GREEN if run.success else RED if invalid else AMBER
    # Drawn on a translucent layer so the picture stays readable under the path.
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w = max(3, SIZE // (6 * n))
    if len(points) > 1:
        draw.line(points, fill=(*WHITE, 200), width=w + 4, joint="curve")  # halo: visible on any background
        draw.line(points, fill=(*colour, 230), width=w, joint="curve")
    # PICK / DROP (MiniBehaviour) happen in place: a diamond on the cell where they were executed.
    for i, a in enumerate(actions[: len(run.visited) - 1]):
        if a in ("PICK", "DROP"):
            x, y = points[i + 1]
            k = w + 3
            draw.polygon([(x, y - k), (x + k, y), (x, y + k), (x - k, y)], fill=(*colour, 255), outline=WHITE)
    x, y = points[0]
    r = SIZE / n / 3
    draw.ellipse([x - r, y - r, x + r, y + r], outline=(*colour, 255), width=max(2, w // 2 + 1))  # start ring
    x, y = points[-1]
    if invalid:
        bad = actions[run.steps - 1]
        if bad in MOVES:
            dr, dc = MOVES[bad]
            r0, c0 = cells[-1]
            tx, ty = _centre((r0 + dr, c0 + dc), n, SIZE)
            k = SIZE / n / 4
            tx, ty = min(max(tx, k), SIZE - k), min(max(ty, k), SIZE - k)  # off the grid: at its edge
            draw.line([(x, y), (tx, ty)], fill=(*RED, 255), width=max(2, w // 2))
            x, y = tx, ty
        k = SIZE / n / 4
        for a, b in (((x - k, y - k), (x + k, y + k)), ((x - k, y + k), (x + k, y - k))):
            draw.line([a, b], fill=(*WHITE, 255), width=w + 4)
            draw.line([a, b], fill=(*RED, 255), width=w)
    else:
        draw.rectangle([x - w, y - w, x + w, y + w], fill=(*colour, 255), outline=WHITE, width=2)
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def image_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def verdict(row: Mapping[str, Any]) -> str:
    if row.get("success"):
        return "optimal success" if row.get("optimal") else "success (not optimal)"
    return f"failure: {row.get('reason') or 'unknown'}"


def pick_cases(rows: Sequence[Mapping[str, Any]], per_task: int = 4) -> list[Mapping[str, Any]]:
    """Per task, in file order: up to half ``per_task`` successes, then failures of distinct kinds first."""
    out: list[Mapping[str, Any]] = []
    for task in sorted({r["task"] for r in rows}):
        trows = [r for r in rows if r["task"] == task]
        wins = [r for r in trows if r.get("success")][: per_task // 2]
        losses, kinds = [], set()
        for r in trows:
            kind = str(r.get("reason")).split(":")[0]
            if not r.get("success") and kind not in kinds:
                kinds.add(kind)
                losses.append(r)
        losses += [r for r in trows if not r.get("success") and r not in losses]
        out += wins + losses[: per_task - len(wins)]
    return out


def _plan_actions(row: Mapping[str, Any]) -> tuple[str, ...] | None:
    if row.get("response") is not None:
        return parse_plan(row["response"]).actions
    if row.get("plan"):
        return parse_plan(f"<answer>{row['plan']}</answer>").actions
    return None


class DatasetCache:
    """Dataset rows by id, loaded once per set of dataset paths."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, ...], dict[str, dict[str, Any]]] = {}

    def rows(self, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
        key = tuple(paths)
        if key not in self._rows:
            rows = read_rows(list(paths), columns=["id", "task", "state", "image"])
            self._rows[key] = {r["id"]: r for r in rows}
        return self._rows[key]


def run_cases(
    label: str, run_dir: Path, metrics: Mapping[str, Any], data: DatasetCache, per_task: int = 4
) -> tuple[list[Case], str | None]:
    """Gallery entries of one run, or a note saying why there are none."""
    samples = run_dir / "samples.jsonl"
    if not samples.is_file():
        return [], f"{label}: no samples.jsonl"
    rows = read_jsonl(samples)
    rows = [r for r in rows if "response" in r or "plan" in r]
    if not rows:
        return [], None  # e.g. a mean over seeds: its seed runs have the cases
    paths = metrics.get("data")
    if not paths:
        return [], f"{label}: metrics.json records no dataset paths (re-run with a current mgsd to get cases)"
    try:
        by_id = data.rows(paths)
    except ValueError as exc:  # DataError: moved or deleted dataset
        return [], f"{label}: dataset not readable ({exc})"
    cases = []
    for row in pick_cases(rows, per_task):
        src = by_id.get(row["id"])
        if src is None:
            continue
        task = get_task(row["task"])
        state = task.load_state(src["state"])
        img = draw_path(decode_image(src["image"]), task, state, _plan_actions(row))
        cases.append(
            Case(
                run=label,
                sample_id=row["id"],
                task=row["task"],
                level=int(row["level"]),
                image_url=image_url(img),
                verdict=verdict(row),
                ok=bool(row.get("success")),
                plan=row.get("plan"),
                response=row.get("response"),
                error=row.get("error"),
            )
        )
    return cases, None
