"""Importers for external test sets: VSP FrozenLake maps and VisualPlanning test meta."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mgsd.data.io import DataError, decode_image, png_bytes, write_rows
from mgsd.tasks import get_task

_LEVEL_DIR = re.compile(r"^level(\d+)$")


def _row(task_name: str, state: dict[str, Any], image: bytes, sample_id: str, source: str) -> dict[str, Any]:
    task = get_task(task_name)
    plan = task.solve(state)
    if plan is None:
        raise DataError(f"{sample_id}: the map has no solution")
    return {
        "id": sample_id,
        "task": task.name,
        "level": task.level_of(state),
        "split": "test",
        "state": task.dump_state(state),
        "image": image,
        "optimal_plan": task.format_plan(plan),
        "optimal_length": len(plan),
        "source": source,
    }


def import_vsp(folder: str | Path, out: str | Path, *, progress: bool = True) -> Path:
    """A VSP FrozenLake maps folder (``level{L}/{img,table,pure_text}/{k}.*``), keeping its PNGs."""
    folder = Path(folder)
    task = get_task("frozenlake")
    if not folder.is_dir():
        raise DataError(f"VSP folder not found: {folder}")
    levels = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _LEVEL_DIR.match(p.name)))
    if not levels:
        raise DataError(f"{folder} has no level*/ directories: not a VSP maps folder")
    rows = []
    for level, ldir in levels:
        stems: set[str] = set()
        for sub in ("img", "table", "pure_text"):
            if not (ldir / sub).is_dir():
                raise DataError(f"VSP folder {ldir} lacks its {sub}/ directory")
            stems |= {p.stem for p in (ldir / sub).iterdir() if p.suffix in (".png", ".txt")}
        for stem in tqdm(
            sorted(stems, key=lambda s: (len(s), s)),
            desc=f"vsp level{level}",
            disable=not progress,
            leave=False,
        ):
            img_path, table_path = ldir / "img" / f"{stem}.png", ldir / "table" / f"{stem}.txt"
            for p in (img_path, table_path, ldir / "pure_text" / f"{stem}.txt"):
                if not p.is_file():
                    raise DataError(f"VSP folder is missing {p}")
            sample_id = f"vsp/level{level}/{stem}"
            try:
                state = task.validate(type(task).from_vsp_table(table_path.read_text()))
            except ValueError as exc:
                raise DataError(f"{table_path}: {exc}") from None
            if task.level_of(state) != level:
                raise DataError(
                    f"{table_path}: a {task.level_of(state)}x{task.level_of(state)} map in level{level}/"
                )
            data = img_path.read_bytes()
            try:
                decode_image(data)
            except DataError as exc:
                raise DataError(f"{img_path}: {exc}") from None
            rows.append(_row("frozenlake", state, data, sample_id, "vsp"))
    out = Path(out)
    return write_rows(rows, out / "frozenlake-vsp.parquet")


def import_visualplanning(
    path: str | Path, task_name: str, out: str | Path, *, progress: bool = True
) -> Path:
    """A VisualPlanning test ``.jsonl`` whose ``meta`` holds the symbolic state; images re-rendered."""
    path = Path(path)
    task = get_task(task_name)
    if not path.is_file():
        raise DataError(f"VisualPlanning file not found: {path}")
    rows = []
    lines = path.read_text().splitlines()
    for lineno, line in enumerate(
        tqdm(lines, desc=f"visualplanning {task.name}", disable=not progress, leave=False), start=1
    ):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)["meta"]
            state = task.validate(type(task).from_visualplanning_meta(meta))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}:{lineno}: not a VisualPlanning {task.name} row ({exc})") from None
        sample_id = f"visualplanning/{task.name}/{meta.get('idx', lineno - 1)}"
        rows.append(_row(task.name, state, png_bytes(task.render(state)), sample_id, "visualplanning"))
    if not rows:
        raise DataError(f"{path} holds no rows")
    return write_rows(rows, Path(out) / f"{task.name}-visualplanning.parquet")
