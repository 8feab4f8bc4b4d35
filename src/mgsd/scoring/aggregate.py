"""Aggregates of per-sample plan scores with bootstrap confidence intervals.

Micro (sample-weighted) over everything; per task and per (task, level); a task's level-balanced score
is the mean over its levels; ``macro`` is the mean over tasks of level-balanced task scores. Confidence
intervals are 95% percentile bootstrap, resampling within each (task, level) cell so the level and
task mix stays fixed. The per-sample definitions are in ``mgsd.scoring.plans``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mgsd.scoring.plans import METRICS


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


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval of ``k`` successes in ``n`` trials."""
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / d
    return [max(0.0, mid - half), min(1.0, mid + half)]


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


def print_metrics(m: dict) -> None:
    """A compact results table: per (task, level), per task, then the level-balanced macro."""
    keys = METRICS
    print(f"{'scope':<24}{'n':>6}" + "".join(f"{k[:10]:>11}" for k in keys))
    rows = [
        *m["by_task_level"].items(),
        *m["by_task"].items(),
        ("macro (level-balanced)", {**m["macro"], "n": m["n"]}),
    ]
    for name, v in rows:
        print(f"{name:<24}{v['n']:>6}" + "".join(f"{100 * v[k]:>11.1f}" for k in keys))
    lo, hi = m["macro"]["ci"]["success"]
    print(f"macro success 95% CI: [{100 * lo:.1f}, {100 * hi:.1f}]")


def stratified_ci(groups: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> list[float]:
    """95% percentile bootstrap CI of the pooled mean, resampling within each group (level mix fixed)."""
    total = sum(len(g) for g in groups)
    reps = np.zeros(n_boot)
    for g in groups:
        reps += g[rng.integers(0, len(g), size=(n_boot, len(g)))].sum(axis=1)
    lo, hi = np.percentile(reps / total, [2.5, 97.5])
    return [float(lo), float(hi)]


def stratified_rate(
    rows: Sequence[Mapping[str, Any]], n_boot: int, rng: np.random.Generator
) -> Callable[[Callable[[Mapping[str, Any]], Any]], tuple[float, list[float]]]:
    """``rate(value)``: the mean of ``float(value(row))`` over ``rows`` and its 95% CI resampled within
    (task, level) cells (in order of first appearance); each call draws from ``rng``."""
    cells: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["task"], int(r["level"])), []).append(r)

    def rate(value: Callable[[Mapping[str, Any]], Any]) -> tuple[float, list[float]]:
        groups = [np.array([float(value(r)) for r in c], dtype=np.float64) for c in cells.values()]
        return float(np.concatenate(groups).mean()), stratified_ci(groups, n_boot, rng)

    return rate
