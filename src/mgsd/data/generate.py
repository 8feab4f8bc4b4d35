"""Seeded, deduplicated, decontaminated dataset generation."""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import signal
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mgsd.data.card import write_dataset_card
from mgsd.data.io import read_rows, write_manifest, write_rows
from mgsd.tasks import Task, get_task

# Consecutive duplicates tolerated per sample before concluding a level is exhausted (small levels,
# e.g. Maze 3x3, have only thousands of distinct instances).
MAX_DUPLICATE_RUN = 2000
# A dataset is built in memory (PNG bytes included, ~2 KB a sample), so a count beyond this is a slip
# (``--per-level 1000000000000``) refused before any work rather than a run that dies hours later.
MAX_PER_LEVEL = 1_000_000


def check_counts(levels: Sequence[int], per_level: int) -> None:
    """ValueError unless there is at least one level and 0 <= per_level <= MAX_PER_LEVEL (0 writes an
    empty split, e.g. no validation set)."""
    if not levels:
        raise ValueError("no levels to generate (an empty level range?)")
    if not 0 <= per_level <= MAX_PER_LEVEL:
        raise ValueError(f"per-level count must be between 0 and {MAX_PER_LEVEL:,}, got {per_level:,}")


def sample_seed(seed: int, task: str, split: str, level: int, attempt: int) -> int:
    """Independent per-draw seed: no formula collisions across tasks, splits or levels."""
    digest = hashlib.blake2b(f"{seed}/{task}/{split}/{level}/{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def state_hash(key: str) -> str:
    """The 16-hex-digit hash of a canonical state key (how a shipped base lists the states it saw)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


HASHES_FILE = "state_hashes.txt"  # beside a pretrained base's weights: one state_hash per line


def read_state_hashes(model_dir: str | Path) -> frozenset[str]:
    """The training-state hashes shipped with a model (empty when it lists none)."""
    f = Path(model_dir) / HASHES_FILE
    if not f.exists():
        return frozenset()
    return frozenset(line.strip() for line in f.read_text().splitlines() if line.strip())


def _draw(job: tuple[str, int, int, bool]) -> tuple[str, str, int, bytes]:
    """One generation attempt, fully processed: (state key, plan, plan length, PNG bytes).

    Runs in worker processes; its result depends only on the job, never on which worker ran it."""
    name, draw_seed, level, render = job
    task = get_task(name)
    state = task.generate(level, random.Random(draw_seed))
    plan = task.solve(state)
    assert plan is not None, "generators only return solvable states"
    image = task.render_png(state) if render else b""
    return task.dump_generated(state), task.format_plan(plan), len(plan), image


def _die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux, ask the kernel to end this worker when its parent dies, so a
    ``kill -9`` of ``mgsd data generate`` leaves no orphaned render processes behind."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: orphans are the OS's default, nothing worse
        return
    if os.getppid() != parent:  # the parent died before the call took effect
        os._exit(1)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def state_keys(task: Task, datasets: Iterable[str | Path]) -> set[str]:
    """Canonical state keys of ``task`` present in other datasets (for decontamination)."""
    keys: set[str] = set()
    for d in datasets:
        for r in read_rows(d, columns=["task", "state"]):
            if r["task"] == task.name:
                keys.add(task.dump_state(task.load_state(r["state"])))
    return keys


def generate_rows(
    task: Task,
    levels: Sequence[int],
    per_level: int,
    *,
    split: str,
    seed: int,
    exclude: set[str] | None = None,
    exclude_hashes: frozenset[str] = frozenset(),
    render: bool = True,
    progress: bool = True,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """``per_level`` unique instances per level. ``exclude`` (canonical keys) is extended in place,
    so consecutive calls sharing it never repeat a state across splits. States are drawn sequentially
    (deduplication is order-dependent); rendering is spread over ``workers`` processes. The result
    does not depend on ``workers``."""
    check_counts(levels, per_level)
    seen = exclude if exclude is not None else set()
    rows: list[dict[str, Any]] = []
    bar = tqdm(
        total=per_level * len(levels),
        desc=f"{task.name}/{split}",
        unit="sample",
        disable=not progress,
        leave=False,
    )
    pool = None
    if workers > 1 and per_level * len(levels) >= 64:
        pool = ProcessPoolExecutor(workers, initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        for level in levels:
            rows += _level_rows(task, level, per_level, split, seed, seen, exclude_hashes, render, pool, bar)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        bar.close()
    return rows


def _level_rows(
    task: Task,
    level: int,
    per_level: int,
    split: str,
    seed: int,
    seen: set[str],
    exclude_hashes: frozenset[str],
    render: bool,
    pool: ProcessPoolExecutor | None,
    bar: tqdm,
) -> list[dict[str, Any]]:
    """One level's unique rows: draws in batches (of 64 with a pool), skipping states in ``seen``
    or ``exclude_hashes``; a long run of duplicates means the level is exhausted."""
    rows: list[dict[str, Any]] = []
    batch = 64 if pool else 1
    attempt, index, duplicates = 0, 0, 0
    while index < per_level:
        jobs = [
            (task.name, sample_seed(seed, task.name, split, level, a), level, render)
            for a in range(attempt, attempt + batch)
        ]
        attempt += batch
        results = pool.map(_draw, jobs, chunksize=8) if pool else map(_draw, jobs)
        for key, plan, length, image in results:
            if index == per_level:
                break  # the rest of the batch is discarded, as if never drawn
            if key in seen or (exclude_hashes and state_hash(key) in exclude_hashes):
                duplicates += 1
                if duplicates >= MAX_DUPLICATE_RUN:
                    raise ValueError(
                        f"{task.name} level {level}: could only make {index} unique instances for "
                        f"split {split!r} (the level is nearly exhausted); ask for fewer per level"
                    )
                continue
            seen.add(key)
            rows.append(
                {
                    "id": f"{task.name}/{split}/level{level}/{index:05d}",
                    "task": task.name,
                    "level": level,
                    "split": split,
                    "state": key,
                    "image": image,
                    "optimal_plan": plan,
                    "optimal_length": length,
                    "source": "mgsd",
                }
            )
            index, duplicates = index + 1, 0
            bar.update()
    return rows


def generate_dataset(
    task: Task,
    levels: Sequence[int],
    per_level: int,
    *,
    split: str,
    seed: int,
    out: str | Path,
    exclude_dirs: Sequence[str | Path] = (),
    exclude: set[str] | None = None,
    exclude_hashes: frozenset[str] = frozenset(),
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Generate and write ``OUT/{task}-{split}.parquet`` plus a manifest; returns the file path.
    ``exclude_hashes``: ``state_hash`` values never to draw (a pretrained base's training states)."""
    check_counts(levels, per_level)
    out = Path(out)
    keys = state_keys(task, exclude_dirs) if exclude_dirs else set()
    if exclude is not None:
        keys |= exclude
    n_excluded = len(keys)
    rows = generate_rows(
        task,
        levels,
        per_level,
        split=split,
        seed=seed,
        exclude=keys,
        exclude_hashes=exclude_hashes,
        progress=progress,
        workers=default_workers() if workers is None else workers,
    )
    if exclude is not None:
        exclude |= keys
    path = write_rows(rows, out / f"{task.name}-{split}.parquet")
    write_manifest(
        out,
        f"{task.name}-{split}.json",
        {
            "task": task.name,
            "split": split,
            "levels": list(levels),
            "per_level": per_level,
            "seed": seed,
            "rows": len(rows),
            "excluded_states": n_excluded,
            "excluded_state_hashes": len(exclude_hashes),
            "exclude": [str(d) for d in exclude_dirs],
        },
    )
    write_dataset_card(out)
    return path
