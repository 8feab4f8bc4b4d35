"""``mgsd run``: the main job. Today: build the held-out benchmark and score reference planners on it.

Steps are skipped when their output is complete (the file that is written last exists), so a rerun
after a crash resumes.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from mgsd.data.generate import generate_dataset
from mgsd.data.io import read_rows
from mgsd.eval.plans import score_dataset, write_results
from mgsd.tasks import TASK_NAMES, get_task


def _random_predictions(samples: list[dict[str, Any]], seed: int) -> dict[str, str]:
    """A chance baseline: a uniformly random plan of the optimal length from the task's actions."""
    rng = random.Random(seed)
    preds = {}
    for s in samples:
        task = get_task(s["task"])
        plan = [rng.choice(task.actions) for _ in range(int(s["optimal_length"]))]
        preds[s["id"]] = f"<answer>{task.format_plan(plan)}</answer>"
    return preds


def run_benchmark(out: str | Path, *, per_level: int = 50, seed: int = 0) -> dict[str, Any]:
    out = Path(out)
    test_dir = out / "data" / "test"
    for name in TASK_NAMES:
        task = get_task(name)
        if not (test_dir / f"{name}-test.json").exists():  # the manifest is written after the data
            generate_dataset(task, task.levels, per_level, split="test", seed=seed, out=test_dir)
    samples = read_rows(test_dir, columns=["id", "task", "level", "state", "optimal_plan", "optimal_length"])
    models = {"oracle": None, "random": _random_predictions(samples, seed)}
    summary: dict[str, Any] = {"n": len(samples), "per_level": per_level, "seed": seed, "models": {}}
    for name, preds in models.items():
        summary["models"][name] = write_results(out / "eval" / name, score_dataset(samples, preds))
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "summary.json")
    return summary
