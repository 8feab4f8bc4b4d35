"""The paper's evaluation on the real external test sets, in one call: ``mgsd eval benchmark``.

Protocol (TASKS.md §5.2-5.3): FrozenLake on the VSP maps (levels 3-8; VSP's own start and goal from
the table files; the original PNG converted to RGB and LANCZOS-resized to 256x256, as the paper
does; ``rerender=True`` shows our renderer's image of the same maps instead, to measure the renderer
gap); Maze and MiniBehaviour on the VisualPlanning test files (symbolic ``meta``, re-rendered).
Generation at the paper's settings unless told otherwise: temperature 0, top-p 1, one sample, a
budget of 4096 new tokens for a local model and 10240 for an API model.

The table is the paper's (accuracy = success and optimal accuracy per task and level; per task the
sample-weighted accuracy and the level-balanced "task macro by level"; the all-task macro = the
unweighted mean over tasks of the sample-weighted task accuracies) plus ours: 95% bootstrap CIs
(resampling within each (task, level) cell), progress, invalid and parse-failure rates, our
level-balanced macro, and the overlap of the test states with the states the model was trained on
where these are known (a model directory's ``state_hashes.txt``, or datasets given as ``seen``).

Layout: imports are cached by source content under ``cache_dir`` (``{set}-{hash}/import``, the
importers' own output, and ``rerender/`` for that view); results go to ``OUT/{set}[-rerender]/``
(``eval model``'s files, resumable; a ``dataset.json`` stamp refuses to mix results of a changed
test file) and ``OUT/benchmark.json`` and ``OUT/benchmark.md``, written last.

``mgsd run --external`` imports with the same importers and scores with the same ``evaluate_model``,
so its external rows equal this command's for the same model at the same generation settings (the
run uses its ``eval_max_new_tokens`` and ``eval_batch_size``; pass them as ``--max-new-tokens`` and
``--batch-size`` to compare).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mgsd import __version__
from mgsd.backends.base import Backend, GenerationConfig
from mgsd.data.generate import read_state_hashes, state_hash
from mgsd.data.importers import (
    PAPER_IMAGE_SIZE,
    content_hash,
    import_visualplanning,
    import_vsp,
    manifest_path,
)
from mgsd.data.io import DataError, png_bytes, read_rows, write_rows
from mgsd.eval.gap import evaluate_gap, format_gap, gap_table
from mgsd.eval.model import evaluate_model
from mgsd.eval.queries import load_samples
from mgsd.files import read_jsonl, write_json
from mgsd.scoring.aggregate import aggregate
from mgsd.tasks import get_task

PAPER_MAX_TOKENS_LOCAL = 4096  # the checkpoint evaluation's max_tokens
PAPER_MAX_TOKENS_API = 10240  # the API evaluation's max_tokens
IMAGE_SIZE = PAPER_IMAGE_SIZE
SETS: dict[str, str] = {  # set name -> task
    "vsp": "frozenlake",
    "visualplanning-maze": "maze",
    "visualplanning-minibehaviour": "minibehaviour",
}
_TABLE_METRICS = ("success", "optimal", "progress", "invalid", "parse_failure")


@dataclass(frozen=True)
class PreparedSet:
    name: str
    task: str
    source: str
    content_hash: str
    data: Path  # the dataset of the chosen image view
    view: str  # "original" (the source's own images), "rerender" (ours) or "render" (VisualPlanning)
    skipped: int  # rows the import skipped (skip_bad)
    checks: dict[str, int]  # the import's consistency checks: name -> rows checked


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mgsd" / "imports"


def _source_files(name: str, src: Path) -> tuple[list[Path], Path | None]:
    if name == "vsp":
        if not src.is_dir():
            raise DataError(f"VSP folder not found: {src}")
        files = [
            p
            for p in src.glob("level*/*/*")
            if p.is_file() and p.parent.name in ("img", "table", "pure_text")
        ]
        return files, src
    if not src.is_file():
        raise DataError(f"VisualPlanning file not found: {src}")
    return [src], None


def _rerender(raw: Path, dst: Path, task_name: str) -> None:
    """The dataset ``raw`` with our renderer's image of every state, written to ``dst``."""
    task = get_task(task_name)
    rows = read_rows(raw)
    for r in rows:
        r["image"] = png_bytes(task.render(task.load_state(r["state"]), size=IMAGE_SIZE))
    write_rows(rows, dst / f"{task.name}.parquet")


def prepare_set(
    name: str,
    source: str | Path,
    cache_dir: str | Path,
    *,
    rerender: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> PreparedSet:
    """Import one external set (once per source content) and return its dataset for the view."""
    if name not in SETS:
        raise ValueError(f"unknown benchmark set {name!r} (choose from {', '.join(SETS)})")
    task = SETS[name]
    src = Path(source).expanduser()
    files, root = _source_files(name, src)
    key = content_hash(files, root) + ("-skipbad" if skip_bad else "")
    base = Path(cache_dir) / f"{name}-{key}"
    raw = base / "import"
    if not (raw / "COMPLETE").exists():
        shutil.rmtree(raw, ignore_errors=True)
        if name == "vsp":
            import_vsp(src, raw, progress=progress, skip_bad=skip_bad)
        else:
            import_visualplanning(src, task, raw, progress=progress, skip_bad=skip_bad)
        (raw / "COMPLETE").write_text("ok\n")
    (parquet,) = sorted(raw.glob("*.parquet"))
    log = json.loads(manifest_path(parquet).read_text())
    if name == "vsp" and rerender:
        view, data = "rerender", base / "rerender"
        if not (data / "COMPLETE").exists():
            _rerender(raw, data, task)
            (data / "COMPLETE").write_text("ok\n")
    else:  # VSP: the import holds the paper's image; VisualPlanning: it is our render already
        view, data = ("original" if name == "vsp" else "render"), raw
    return PreparedSet(name, task, str(src.resolve()), key, data, view, len(log["skipped"]), log["checks"])


# -- overlap with training states -------------------------------------------------------------------


def seen_states(model: str | None, seen: Iterable[str | Path] = ()) -> tuple[frozenset[str], list[str]]:
    """State hashes the model was trained on: ``state_hashes.txt`` of a local model directory and of
    every ``seen`` entry (a model directory, a hashes file or a dataset); with their sources."""
    hashes: set[str] = set()
    sources: list[str] = []
    entries = [*([model] if model and Path(model).is_dir() else []), *seen]
    for entry in entries:
        p = Path(entry)
        if p.is_file() and p.suffix == ".txt":
            hashes |= {x.strip() for x in p.read_text().splitlines() if x.strip()}
            sources.append(str(p.resolve()))
        elif p.is_dir() and (p / "state_hashes.txt").is_file():
            hashes |= read_state_hashes(p)
            sources.append(str((p / "state_hashes.txt").resolve()))
        elif p.exists() and entry != model:  # a dataset: hash its states
            for r in read_rows(p, columns=["task", "state"]):
                t = get_task(r["task"])
                hashes.add(state_hash(t.dump_state(t.load_state(r["state"]))))
            sources.append(str(p.resolve()))
        elif entry != model:
            raise DataError(f"--seen {entry}: not a model directory, hashes file or dataset")
    return frozenset(hashes), sources


def overlap(samples: Sequence[Mapping[str, Any]], hashes: frozenset[str], known: bool) -> dict[str, Any]:
    """How many evaluated test states are among the training states (None when those are unknown)."""
    if not known:
        return {"n": len(samples), "seen_in_training": None}
    hits = 0
    for s in samples:
        task = get_task(s["task"])
        hits += state_hash(task.dump_state(task.load_state(s["state"]))) in hashes
    return {"n": len(samples), "seen_in_training": hits}


# -- the paper's table --------------------------------------------------------------------------------


def paper_macro(rows: Sequence[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The paper's all-task macro: the unweighted mean over tasks of each task's sample-weighted
    means, with a 95% bootstrap CI resampling within (task, level) cells."""
    cells: dict[tuple[str, int], np.ndarray] = {}
    groups: dict[tuple[str, int], list[list[float]]] = {}
    for r in rows:
        groups.setdefault((r["task"], int(r["level"])), []).append([float(r[m]) for m in _TABLE_METRICS])
    cells = {k: np.asarray(v, dtype=np.float64) for k, v in sorted(groups.items())}
    tasks = sorted({t for t, _ in cells})
    rng = np.random.default_rng(seed)
    boot = {k: x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1) for k, x in cells.items()}
    point, reps = [], []
    for t in tasks:
        keys = [k for k in cells if k[0] == t]
        n_t = sum(len(cells[k]) for k in keys)
        point.append(np.concatenate([cells[k] for k in keys]).mean(axis=0))
        reps.append(sum(boot[k] * len(cells[k]) for k in keys) / n_t)
    mean, rep = np.mean(point, axis=0), np.mean(reps, axis=0)
    lo, hi = np.percentile(rep, [2.5, 97.5], axis=0)
    return {
        **{m: float(v) for m, v in zip(_TABLE_METRICS, mean, strict=True)},
        "ci": {m: [float(a), float(b)] for m, a, b in zip(_TABLE_METRICS, lo, hi, strict=True)},
        "tasks": tasks,
        "definition": "unweighted mean over tasks of sample-weighted task scores (the paper's)",
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def format_table(result: Mapping[str, Any]) -> str:
    """The paper's table as Markdown: one row per (task, level), per task, and the macros."""
    m = result["metrics"]
    head = (
        "| task | level | n | accuracy | 95% CI | optimal acc. | 95% CI | progress | invalid | parse fail |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]

    def line(task: str, level: str, b: Mapping[str, Any], ci: Mapping[str, Any]) -> str:
        return (
            f"| {task} | {level} | {b['n']} | {_pct(b['success'])} | {_ci(ci['success'])} | "
            f"{_pct(b['optimal'])} | {_ci(ci['optimal'])} | {_pct(b['progress'])} | "
            f"{_pct(b['invalid'])} | {_pct(b['parse_failure'])} |"
        )

    for t, tb in m["by_task"].items():
        for b in (v for v in m["by_task_level"].values() if v["task"] == t):
            lines.append(line(t, str(b["level"]), b, b["ci"]))
        lines.append(line(t, "all (sample-weighted)", tb, tb["ci"]))
        lines.append(
            line(t, "task macro by level", {**tb["level_balanced"], "n": tb["n"]}, tb["level_balanced_ci"])
        )
    lines.append(
        line(
            "all tasks",
            "macro (paper: mean of task scores)",
            {**result["all_tasks_macro"], "n": m["n"]},
            result["all_tasks_macro"]["ci"],
        )
    )
    lines.append(line("all tasks", "macro (level-balanced)", {**m["macro"], "n": m["n"]}, m["macro"]["ci"]))
    notes = []
    for name, s in result["sets"].items():
        ov = s["overlap"]["seen_in_training"]
        seen = "unknown (no training states given)" if ov is None else f"{ov} of {s['overlap']['n']}"
        notes.append(f"- {name}: {s['task']}, view {s['view']}, test states seen in training: {seen}")
        if s["import_checks"]:
            checks = ", ".join(f"{k} {v}" for k, v in sorted(s["import_checks"].items()))
            notes.append(f"  import checks (rows): {checks}")
        if s["skipped_rows"]:
            notes.append(f"  ({s['skipped_rows']} source row(s) skipped as bad at import)")
    g = result["generation"]
    notes.append(
        f"- generation: temperature {g['temperature']}, top-p {g['top_p']}, 1 sample, "
        f"max {g['max_new_tokens']} new tokens; request failures {result['request_failures']}, "
        f"truncated responses {result['truncated']}"
    )
    text = "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    if "gap" in result:
        text += (
            "\nModality-gap attribution (percent of samples):\n\n```\n"
            + format_gap(result["gap"])
            + "\n```\n"
        )
    return text


# -- the whole benchmark ------------------------------------------------------------------------------


def _stamp(run_dir: Path, info: Mapping[str, Any]) -> None:
    """Refuse to reuse a results directory made from another version of the test set or view."""
    f = run_dir / "dataset.json"
    if f.exists():
        old = json.loads(f.read_text())
        if old != dict(info):
            raise ValueError(
                f"{run_dir} holds results for another version of this test set "
                f"({old.get('content_hash')}, view {old.get('view')}); use another --out or delete it"
            )
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(dict(info), f)


# Over 60 lines, kept whole: prepare the sets, evaluate each (gap or plans) into the shared rows and
# counts, then one result dict read top to bottom; split, each piece would pass most locals along.
def run_benchmark(
    backend: Backend,
    sources: Mapping[str, str | Path],
    out: str | Path,
    *,
    model: str | None = None,
    api: bool = False,
    gen: GenerationConfig | None = None,
    limit: int | None = None,
    rerender: bool = False,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    seen: Sequence[str | Path] = (),
    skip_bad: bool = False,
    gap: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``backend`` on the given external sets (``{"vsp": DIR, "visualplanning-maze": FILE,
    ...}``, any subset) and write OUT/benchmark.json and OUT/benchmark.md; returns the JSON.

    ``gap``: also plan from the text state and answer the perception questions on the same samples
    (``mgsd eval gap`` per set: OUT/{set}/{image,text,perception}) and attribute every image failure
    to perception or reasoning; the table is then read from the image run."""
    if not sources:
        raise ValueError(
            "give at least one test set (--vsp, --visualplanning-maze, --visualplanning-minibehaviour)"
        )
    gen = gen or GenerationConfig(
        max_new_tokens=PAPER_MAX_TOKENS_API if api else PAPER_MAX_TOKENS_LOCAL, temperature=0.0, top_p=1.0
    )
    out = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    prepared = [
        prepare_set(n, s, cache, rerender=rerender, skip_bad=skip_bad, progress=progress)
        for n, s in sources.items()
    ]
    hashes, hash_sources = seen_states(None if api else model, seen)
    known = bool(hash_sources)
    all_rows: list[dict[str, Any]] = []
    gap_rows: list[dict[str, Any]] = []
    sets: dict[str, Any] = {}
    failures = truncated = 0
    for p in prepared:
        run_name = p.name + ("-rerender" if p.view == "rerender" else "")
        run_dir = out / run_name
        _stamp(run_dir, {"set": p.name, "source": p.source, "content_hash": p.content_hash, "view": p.view})
        samples = load_samples([p.data], limit=limit)
        common = {"model": model, "gen": gen, "batch_size": batch_size, "limit": limit, "progress": progress}
        if gap:
            evaluate_gap(backend, [p.data], run_dir, **common)
            gap_rows.extend(read_jsonl(run_dir / "gap_samples.jsonl"))
            image_dir = run_dir / "image"
            metrics = json.loads((image_dir / "metrics.json").read_text())
        else:
            image_dir = run_dir
            metrics = evaluate_model(backend, [p.data], run_dir, samples=samples, **common)
        all_rows.extend(read_jsonl(image_dir / "samples.jsonl"))
        failures += metrics["request_failures"]
        truncated += metrics["truncated"]
        sets[run_name] = {
            "task": p.task,
            "source": p.source,
            "content_hash": p.content_hash,
            "view": p.view,
            "n": metrics["n"],
            "skipped_rows": p.skipped,
            "import_checks": p.checks,
            "overlap": overlap(samples, hashes, known),
            "results": str(run_dir),
        }
    metrics = aggregate(all_rows)
    result = {
        "protocol": {
            "frozenlake": "VSP maps, VSP's own start/goal; "
            + ("our renderer's image (--rerender)" if rerender else "original PNG, RGB, LANCZOS to 256x256"),
            "maze": "VisualPlanning test meta, re-rendered at 256x256",
            "minibehaviour": "VisualPlanning test meta, re-rendered at 256x256",
            "samples_per_query": 1,
            "limit_per_level": limit,
        },
        "generation": gen.to_dict(),
        "model": model,
        "backend": backend.describe(),
        "sets": sets,
        "metrics": metrics,
        "all_tasks_macro": paper_macro(all_rows),
        "training_states": {"known": known, "sources": hash_sources, "count": len(hashes)},
        "request_failures": failures,
        "truncated": truncated,
        "mgsd_version": __version__,
    }
    if gap:
        result["gap"] = gap_table(gap_rows)
    table = format_table(result)
    (out / "benchmark.md").write_text(table)
    write_json(result, out / "benchmark.json")
    return result
