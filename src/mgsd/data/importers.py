"""Importers for external test sets: VSP FrozenLake maps and VisualPlanning test meta.

Every imported sample gets a unique, stable id derived from where it came from:

- VSP: ``vsp/level{L}/{k}`` (the level folder and the file stem);
- VisualPlanning: ``visualplanning/{task}/level{L}/{idx}`` from ``meta.idx`` (which numbers samples per
  level in the real MiniBehaviour file, so the level is part of the id), or
  ``visualplanning/{task}/level{L}/line{n}`` for a row without ``idx``.

A file whose ids would still collide is refused, naming the first collision. Importing never drops a
row silently: a row that cannot be imported is one ``DataError`` naming its line (or file), or, with
``skip_bad=True``, skipped and listed in the manifest ``OUT/<name>.import.json`` beside the parquet.
Each imported state is checked against what else its source says about it: VSP tables against their
``pure_text`` description and their PNG, VisualPlanning rows against their ``input_state`` length and
``distance_map``; a disagreement is a bad row, not a silently mismatched sample.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from mgsd.data.io import DataError, decode_image, png_bytes, read_rows, write_rows
from mgsd.files import jsonl_lines, write_json
from mgsd.tasks import get_task

_LEVEL_DIR = re.compile(r"^level(\d+)$")
IMPORTER_VERSION = 3  # bump when ids, checks or images change: cached imports are keyed by it
PAPER_IMAGE_SIZE = 256  # the benchmark shows VSP's PNGs resized to 256x256 (TASKS.md §1.4)
_RC = r"[Rr]ow\s*(\d+),\s*[Cc]olumn\s*(\d+)"


@dataclass
class ImportLog:
    """What an import kept and what it skipped (``skip_bad``), written beside the parquet."""

    source: str
    task: str
    rows: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    checks: dict[str, int] = field(default_factory=dict)  # check name -> rows it was applied to
    image: str = "rendered by mgsd at 256x256"

    def count(self, check: str) -> None:
        self.checks[check] = self.checks.get(check, 0) + 1

    def write(self, parquet: Path) -> Path:
        path = manifest_path(parquet)
        info = {
            "source": self.source,
            "task": self.task,
            "rows": self.rows,
            "skipped": self.skipped,
            "checks": self.checks,
            "image": self.image,
            "importer_version": IMPORTER_VERSION,
        }
        return write_json(info, path)


def manifest_path(parquet: str | Path) -> Path:
    """The ``.import.json`` manifest written beside an imported parquet file."""
    parquet = Path(parquet)
    return parquet.with_name(parquet.name.removesuffix(".parquet") + ".import.json")


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


def _finish(rows: list[dict[str, Any]], log: ImportLog, path: Path, what: str) -> Path:
    if not rows:
        skipped = f" ({len(log.skipped)} skipped as bad)" if log.skipped else ""
        raise DataError(f"{what} holds no importable rows{skipped}")
    log.rows = len(rows)
    out = write_rows(rows, path)
    log.write(out)
    return out


# -- VSP ----------------------------------------------------------------------------------------------


def _pure_text_facts(text: str) -> dict[str, Any]:
    """Size, player, goal and holes (0-based) stated by a VSP ``pure_text`` file; absent keys were not
    stated. ValueError if it states none of them (not a VSP description)."""
    facts: dict[str, Any] = {}
    if m := re.search(r"(\d+)x(\d+) map", text):
        facts["size"] = (int(m.group(1)), int(m.group(2)))
    if m := re.search(r"player is at:?\s*" + _RC, text):
        facts["player"] = (int(m.group(1)) - 1, int(m.group(2)) - 1)
    if m := re.search(r"goal is at:?\s*" + _RC, text):
        facts["goal"] = (int(m.group(1)) - 1, int(m.group(2)) - 1)
    if re.search(r"no holes?", text, re.IGNORECASE):
        facts["holes"] = []
    elif m := re.search(r"hole\(s\) are at:?([^\n]*)", text):
        facts["holes"] = sorted((int(r) - 1, int(c) - 1) for r, c in re.findall(_RC, m.group(1)))
    if not facts:
        raise ValueError("not a VSP pure_text description (no size, player, goal or holes)")
    return facts


def _check_vsp(state: dict[str, Any], pure_text: str, image: bytes, log: ImportLog) -> None:
    """The table's map must be the one its pure_text states and its PNG shows (ValueError if not)."""
    task = get_task("frozenlake")
    grid = state["grid"]
    n = len(grid)
    known = {
        "size": (n, n),
        "player": next((r, c) for r in range(n) for c in range(n) if grid[r][c] == "S"),
        "goal": next((r, c) for r in range(n) for c in range(n) if grid[r][c] == "G"),
        "holes": sorted(task.holes(state)),  # type: ignore[attr-defined]
    }
    for key, value in _pure_text_facts(pure_text).items():
        if value != known[key]:
            raise ValueError(f"the table gives {key} {known[key]} but pure_text says {value}")
    log.count("pure_text")
    seen = type(task).read_cells(decode_image(image), n)  # type: ignore[attr-defined]
    if seen is None:  # not the reference sprites: the PNG cannot be read back, say so in the manifest
        log.count("png_unreadable")
        return
    wrong = [(r, c) for r in range(n) for c in range(n) if seen[r][c] != grid[r][c]]
    if wrong:
        r, c = wrong[0]
        raise ValueError(
            f"the table does not match the PNG at {len(wrong)} cell(s), first ({r},{c}): "
            f"table {grid[r][c]!r}, image {seen[r][c]!r}"
        )
    log.count("png")


def paper_image(data: bytes, size: int | None = PAPER_IMAGE_SIZE) -> bytes:
    """A source PNG as the paper shows it: RGB, LANCZOS-resized to ``size`` x ``size`` when it is not
    that size already (``size=None``: the bytes unchanged)."""
    if size is None:
        return data
    img = decode_image(data)
    if img.size == (size, size):
        return png_bytes(img)
    return png_bytes(img.resize((size, size), Image.LANCZOS))


def import_vsp(
    folder: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    skip_bad: bool = False,
    image_size: int | None = PAPER_IMAGE_SIZE,
) -> Path:
    """A VSP FrozenLake maps folder (``level{L}/{img,table,pure_text}/{k}.*``) with its own images.

    The table gives the state (VSP's own start and goal); it must agree with ``pure_text`` and with
    what the PNG shows. The PNG is stored as the paper shows it (RGB, LANCZOS-resized to 256x256;
    ``image_size=None`` keeps the original bytes). ``skip_bad``: a map that fails is skipped and listed
    in the manifest.
    """
    folder = Path(folder)
    task = get_task("frozenlake")
    if not folder.is_dir():
        raise DataError(f"VSP folder not found: {folder}")
    levels = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _LEVEL_DIR.match(p.name)))
    if not levels:
        raise DataError(f"{folder} has no level*/ directories: not a VSP maps folder")
    log = ImportLog(str(folder.resolve()), task.name)
    log.image = "the source PNG" + (
        "" if image_size is None else f", RGB, LANCZOS to {image_size}x{image_size}"
    )
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
            sample_id = f"vsp/level{level}/{stem}"
            try:
                rows.append(_vsp_row(task, ldir, level, stem, sample_id, log, image_size))
            except DataError as exc:
                if not skip_bad:
                    raise
                log.skipped.append({"id": sample_id, "error": str(exc)})
    return _finish(rows, log, Path(out) / "frozenlake-vsp.parquet", str(folder))


def _vsp_row(
    task: Any, ldir: Path, level: int, stem: str, sample_id: str, log: ImportLog, image_size: int | None
) -> dict[str, Any]:
    """One VSP map as a row, checked: its three files exist, the table is a valid map of this level,
    the PNG decodes and agrees with the table and ``pure_text``; else one DataError naming the file."""
    img_path, table_path = ldir / "img" / f"{stem}.png", ldir / "table" / f"{stem}.txt"
    text_path = ldir / "pure_text" / f"{stem}.txt"
    for p in (img_path, table_path, text_path):
        if not p.is_file():
            raise DataError(f"VSP folder is missing {p}")
    try:
        state = task.validate(type(task).from_vsp_table(table_path.read_text()))
    except ValueError as exc:
        raise DataError(f"{table_path}: {exc}") from None
    if task.level_of(state) != level:
        side = task.level_of(state)
        raise DataError(f"{table_path}: a {side}x{side} map in level{level}/")
    data = img_path.read_bytes()
    try:
        decode_image(data)
        _check_vsp(state, text_path.read_text(), data, log)
    except ValueError as exc:  # DataError included
        raise DataError(f"{table_path}: {exc}") from None
    return _row("frozenlake", state, paper_image(data, image_size), sample_id, "vsp")


# -- VisualPlanning -----------------------------------------------------------------------------------


def _literal(value: Any) -> Any:
    """VisualPlanning stores some fields as Python literals in strings (``"[[[2, 4], False], ...]"``)."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"cannot read {value[:40]!r}...") from None
    return value


_DELTA = {(-1, 0): "U", (1, 0): "D", (0, -1): "L", (0, 1): "R"}


def _trajectory_actions(task_name: str, states: list[Any], size: int) -> list[str]:
    """The actions of a VisualPlanning ``input_state`` trajectory: flat cell ids (FrozenLake, Maze) or
    ``[[r, c], carrying]`` pairs (MiniBehaviour, where a carrying flip in place is PICK or DROP)."""
    if task_name == "minibehaviour":
        cells = [((int(s[0][0]), int(s[0][1])), bool(s[1])) for s in states]
    else:
        cells = [(divmod(int(s), size), False) for s in states]
    actions = []
    for ((r0, c0), k0), ((r1, c1), k1) in itertools.pairwise(cells):
        if (r0, c0) == (r1, c1) and k0 != k1:
            actions.append("PICK" if k1 else "DROP")
        elif (r1 - r0, c1 - c0) in _DELTA and k0 == k1:
            actions.append(_DELTA[(r1 - r0, c1 - c0)])
        else:
            raise ValueError(f"input_state steps from {(r0, c0)} to {(r1, c1)}: not one action")
    return actions


def _check_visualplanning(
    record: dict[str, Any], meta: dict[str, Any], state: dict[str, Any], optimal: int, log: ImportLog
) -> None:
    """The parsed state must agree with the row's own data: its ``input_state`` (the reference
    trajectory, start included) must replay to success through our simulator, and ``distance_map`` (the
    BFS distance to the target by flat cell id) must give the start our optimal length."""
    task = get_task(log.task)
    if "input_state" in record:
        states = _literal(record["input_state"])
        if not isinstance(states, list) or len(states) < 2:
            raise ValueError("input_state is not a trajectory of >= 2 states")
        try:
            actions = _trajectory_actions(task.name, states, task.level_of(state))
        except (TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"input_state cannot be read as a trajectory ({exc})") from None
        run = task.rollout(state, actions)
        if not run.success or run.trailing:
            raise ValueError(
                f"input_state does not replay on the parsed state (ends {run.reason or 'early'} "
                f"after {run.steps} of {len(actions)} actions)"
            )
        if len(actions) != optimal:  # a valid but longer reference: ours (BFS) is the optimum
            log.count("input_state_longer_than_optimal")
        log.count("input_state")
    dmap = meta.get("distance_map")
    if isinstance(dmap, dict) and "start_pos" in meta:
        d = dmap.get(str(meta["start_pos"]))
        if d is None:
            raise ValueError(f"distance_map has no entry for start_pos {meta['start_pos']}")
        if int(d) != optimal:
            raise ValueError(f"distance_map gives the start distance {d}, the solver finds {optimal}")
        log.count("distance_map")


def visualplanning_id(task: str, level: int, idx: Any, lineno: int) -> str:
    """The stable id of a VisualPlanning row (``idx`` None: the 1-based line number stands in)."""
    tail = f"line{lineno}" if idx is None else str(idx)
    return f"visualplanning/{task}/level{level}/{tail}"


def import_visualplanning(
    path: str | Path, task_name: str, out: str | Path, *, progress: bool = True, skip_bad: bool = False
) -> Path:
    """A VisualPlanning test ``.jsonl`` whose ``meta`` holds the symbolic state; images re-rendered.

    FrozenLake and Maze ``meta``: ``layout``, ``start_pos``, ``target_pos`` (flat ids r*L+c),
    ``distance_map``, ``level``; MiniBehaviour: ``start_pos``, ``printer_pos``, ``table_pos``, ``level``,
    ``idx`` and derived fields. ``skip_bad``: a row that fails is skipped and listed in the manifest.
    """
    path = Path(path)
    task = get_task(task_name)
    if not path.is_file():
        raise DataError(f"VisualPlanning file not found: {path}")
    log = ImportLog(str(path.resolve()), task.name)
    rows = []
    first_line: dict[str, int] = {}
    lines = jsonl_lines(path.read_text())
    for lineno, line in enumerate(
        tqdm(lines, desc=f"visualplanning {task.name}", disable=not progress, leave=False), start=1
    ):
        if not line.strip():
            continue
        try:
            try:
                record = json.loads(line)
                meta = record["meta"]
                state = task.validate(type(task).from_visualplanning_meta(meta))  # type: ignore[attr-defined]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{path}:{lineno}: not a VisualPlanning {task.name} row ({exc})") from None
            sample_id = visualplanning_id(task.name, task.level_of(state), meta.get("idx"), lineno)
            if sample_id in first_line:
                raise DataError(
                    f"{path}:{lineno}: sample id {sample_id!r} collides with line {first_line[sample_id]} "
                    "(same level and idx)"
                )
            row = _row(task.name, state, png_bytes(task.render(state)), sample_id, "visualplanning")
            try:
                _check_visualplanning(record, meta, state, row["optimal_length"], log)
            except (ValueError, TypeError) as exc:
                raise DataError(f"{path}:{lineno}: {exc}") from None
        except DataError as exc:
            if not skip_bad or "collides" in str(exc):  # a collision is a broken file, never skipped
                raise
            log.skipped.append({"line": str(lineno), "error": str(exc)})
            continue
        first_line[sample_id] = lineno
        rows.append(row)
    return _finish(rows, log, Path(out) / f"{task.name}-visualplanning.parquet", str(path))


# -- checks on imported sets --------------------------------------------------------------------------


def check_imported(sets: dict[str, Path]) -> dict[str, int]:
    """Read every imported external set (schema and id uniqueness, as an evaluation will) and return
    its size; DataError naming the set otherwise. Cheap, so ``mgsd run`` does it before any training."""
    sizes = {}
    for name, d in sets.items():
        try:
            rows = read_rows(d, columns=["id", "task", "level", "state"])
        except DataError as exc:
            raise DataError(f"external test set {name!r} ({d}): {exc}; delete {d} to re-import it") from None
        if not rows:
            raise DataError(f"external test set {name!r} ({d}) is empty")
        sizes[name] = len(rows)
    return sizes


def content_hash(paths: Iterable[Path], root: Path | None = None) -> str:
    """A hash of files' relative names and bytes (the key of a cached import)."""
    h = hashlib.sha256(f"mgsd-import-v{IMPORTER_VERSION}\n".encode())
    for p in sorted(paths):
        name = str(p.relative_to(root)) if root is not None else p.name
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]
