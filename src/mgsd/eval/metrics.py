"""Per-sample planning scores and their aggregates with bootstrap confidence intervals.

Definitions (stated once, used everywhere):
- success: the plan reaches the goal (MiniBehaviour: a legal DROP) under the task's simulator; actions
  after the episode ends are ignored for success;
- optimal: success AND the whole plan is exactly as long as the optimal plan (no trailing junk);
- progress: longest prefix whose every action strictly lowers the optimal distance-to-go, divided by
  the optimal length;
- invalid: the episode ended on an illegal action (hole, wall, off-grid, table, ...);
- parse_failure: no usable ``<answer>`` block (a missing prediction counts here too).
Aggregates: micro (sample-weighted) over everything; per task and per (task, level); a task's
level-balanced score is the mean over its levels; ``macro`` is the mean over tasks of level-balanced
task scores. Confidence intervals are 95% percentile bootstrap, resampling within each (task, level)
cell so the level and task mix stays fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mgsd.actions import parse_plan
from mgsd.tasks import Task

METRICS: tuple[str, ...] = ("success", "optimal", "progress", "invalid", "parse_failure")
_NOT_INVALID = (None, "incomplete", "parse_failure")


@dataclass(frozen=True)
class SampleScore:
    id: str
    task: str
    level: int
    plan: str | None  # the parsed plan in the task's answer format, None on parse failure
    success: bool
    optimal: bool
    progress: float
    invalid: bool
    parse_failure: bool
    reason: str | None  # None on success; the invalid reason, "incomplete" or the parse error
    steps: int
    plan_length: int
    optimal_length: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_plan(
    task: Task,
    state: dict[str, Any],
    actions: Sequence[str] | None,
    *,
    sample_id: str,
    optimal_length: int,
    parse_error: str | None = None,
) -> SampleScore:
    """Score one plan (``actions=None`` is a parse failure) against one state."""
    level = task.level_of(state)
    if actions is None:
        return SampleScore(
            sample_id,
            task.name,
            level,
            None,
            False,
            False,
            0.0,
            False,
            True,
            f"parse_failure: {parse_error or 'no plan'}",
            0,
            0,
            optimal_length,
        )
    run = task.rollout(state, actions)
    return SampleScore(
        id=sample_id,
        task=task.name,
        level=level,
        plan=task.format_plan(actions),
        success=run.success,
        optimal=run.success and len(actions) == optimal_length,
        progress=task.progress(state, actions, optimal_length),
        invalid=run.reason not in _NOT_INVALID,
        parse_failure=False,
        reason=run.reason,
        steps=run.steps,
        plan_length=len(actions),
        optimal_length=optimal_length,
    )


def score_response(
    task: Task, state: dict[str, Any], response: str | None, *, sample_id: str, optimal_length: int
) -> SampleScore:
    """Parse a model response with the one plan parser and score it."""
    if response is None:
        return score_plan(
            task, state, None, sample_id=sample_id, optimal_length=optimal_length, parse_error="no prediction"
        )
    parsed = parse_plan(response)
    return score_plan(
        task,
        state,
        parsed.actions,
        sample_id=sample_id,
        optimal_length=optimal_length,
        parse_error=parsed.error,
    )


# -- aggregation ------------------------------------------------------------------------------------


def _cells(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], np.ndarray]:
    """Per (task, level): a (n, len(METRICS)) float matrix of the per-sample metric values."""
    groups: dict[tuple[str, int], list[list[float]]] = {}
    for r in rows:
        groups.setdefault((r["task"], int(r["level"])), []).append([float(r[m]) for m in METRICS])
    return {k: np.asarray(v, dtype=np.float64) for k, v in sorted(groups.items())}


def _means(x: np.ndarray) -> dict[str, float]:
    return {m: float(v) for m, v in zip(METRICS, x.mean(axis=0), strict=True)}


def _level_balanced(cells: Mapping[tuple[str, int], np.ndarray], task: str) -> np.ndarray:
    return np.mean([x.mean(axis=0) for (t, _), x in cells.items() if t == task], axis=0)


def _macro(cells: Mapping[tuple[str, int], np.ndarray]) -> np.ndarray:
    tasks = sorted({t for t, _ in cells})
    return np.mean([_level_balanced(cells, t) for t in tasks], axis=0)


def _bootstrap(cells: Mapping[tuple[str, int], np.ndarray], n_boot: int, seed: int) -> dict[str, Any]:
    """Bootstrap replicates of the micro, per-task and macro means (resampling within cells)."""
    rng = np.random.default_rng(seed)
    # Per cell, a (n_boot, n_metrics) matrix of resampled cell means.
    boot_means = {}
    for key, x in cells.items():
        idx = rng.integers(0, len(x), size=(n_boot, len(x)))
        boot_means[key] = x[idx].mean(axis=1)
    sizes = {k: len(x) for k, x in cells.items()}
    total = sum(sizes.values())
    micro = sum(boot_means[k] * sizes[k] for k in cells) / total
    tasks = sorted({t for t, _ in cells})
    per_task_micro, per_task_balanced = {}, {}
    for t in tasks:
        keys = [k for k in cells if k[0] == t]
        n_t = sum(sizes[k] for k in keys)
        per_task_micro[t] = sum(boot_means[k] * sizes[k] for k in keys) / n_t
        per_task_balanced[t] = np.mean([boot_means[k] for k in keys], axis=0)
    macro = np.mean([per_task_balanced[t] for t in tasks], axis=0)
    return {
        "micro": micro,
        "task": per_task_micro,
        "task_balanced": per_task_balanced,
        "macro": macro,
        "cell": boot_means,
    }


def _interval(reps: np.ndarray) -> dict[str, list[float]]:
    lo, hi = np.percentile(reps, [2.5, 97.5], axis=0)
    return {m: [float(a), float(b)] for m, a, b in zip(METRICS, lo, hi, strict=True)}


def aggregate(rows: Iterable[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The metrics.json structure for a list of per-sample score dicts."""
    rows = list(rows)
    if not rows:
        raise ValueError("no samples to aggregate")
    cells = _cells(rows)
    boot = _bootstrap(cells, n_boot, seed)
    everything = np.concatenate(list(cells.values()))
    out: dict[str, Any] = {"n": len(rows), **_means(everything), "ci": _interval(boot["micro"])}
    out["by_task"] = {}
    for t in sorted({t for t, _ in cells}):
        x = np.concatenate([v for (tt, _), v in cells.items() if tt == t])
        balanced = _level_balanced(cells, t)
        out["by_task"][t] = {
            "n": len(x),
            **_means(x),
            "ci": _interval(boot["task"][t]),
            "level_balanced": {m: float(v) for m, v in zip(METRICS, balanced, strict=True)},
            "level_balanced_ci": _interval(boot["task_balanced"][t]),
        }
    out["by_task_level"] = {
        f"{t}/{lv}": {
            "task": t,
            "level": lv,
            "n": len(x),
            **_means(x),
            "ci": _interval(boot["cell"][(t, lv)]),
        }
        for (t, lv), x in cells.items()
    }
    macro = _macro(cells)
    out["macro"] = {
        **{m: float(v) for m, v in zip(METRICS, macro, strict=True)},
        "ci": _interval(boot["macro"]),
        "definition": "mean over tasks of level-balanced task scores",
        "tasks": sorted({t for t, _ in cells}),
    }
    out["bootstrap"] = {"replicates": n_boot, "seed": seed, "level": 0.95}
    reasons: dict[str, int] = {}
    for r in rows:
        key = (r.get("reason") or "success").split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    out["outcomes"] = dict(sorted(reasons.items()))
    return out


def paired_bootstrap_diff(
    rows_a: Iterable[Mapping[str, Any]],
    rows_b: Iterable[Mapping[str, Any]],
    *,
    metric: str = "success",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Macro(b) - macro(a) on the same sample ids, with a paired 95% bootstrap interval."""
    a = {r["id"]: r for r in rows_a}
    b = {r["id"]: r for r in rows_b}
    if set(a) != set(b):
        raise ValueError("paired comparison needs the same sample ids in both runs")
    groups: dict[tuple[str, int], list[float]] = {}
    for i, ra in a.items():
        groups.setdefault((ra["task"], int(ra["level"])), []).append(float(b[i][metric]) - float(ra[metric]))
    cells = {k: np.asarray(v)[:, None] for k, v in sorted(groups.items())}
    rng = np.random.default_rng(seed)
    point = _macro(cells)[0]
    reps = {k: x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1) for k, x in cells.items()}
    tasks = sorted({t for t, _ in cells})
    macro = np.mean([np.mean([reps[k] for k in cells if k[0] == t], axis=0) for t in tasks], axis=0)
    lo, hi = np.percentile(macro[:, 0], [2.5, 97.5])
    return {"metric": metric, "diff": float(point), "ci": [float(lo), float(hi)], "n": len(a)}
