"""Evaluating a model (local or behind an API) on a dataset: planning from the image or from the text
state, and perception. ``mgsd eval model`` is a thin layer over ``evaluate_model`` and
``evaluate_perception``.

Here: planning (``evaluate_model``, seeds combined). Beside it: ``queries`` (dataset rows, the
queries), ``responses`` (the resumable, cached generation) and ``perception`` (perception scoring).

Prompts: ``image`` modality = ``student_prompt(task)`` followed by the dataset image; ``text`` modality
= ``text_student_prompt(task, state)`` alone (no image); perception = ``perception_prompt(task, state)``
followed by the image, scored with ``score_perception`` (exact, set-based; a missing answer is wrong).

Output directory (the same files as ``mgsd eval plans``, plus each sample's ``response``):

    .cache.jsonl     append-only finished responses, flushed after every batch; the first line holds the
                     run's settings, so a rerun with other settings refuses instead of mixing them;
                     each response carries the ``key`` of what it answers (the model's weights, the
                     system and user text, the image pixels), so a rerun on other data under the
                     same ids, or with retrained weights at the same path, answers those afresh
    samples.jsonl    one scored record per sample, in dataset order (``error`` set for failed requests)
    metrics.json     aggregates with 95% bootstrap CIs (perception: ``perception_metrics.json``);
                     written last, so its presence means the run finished

A killed run resumes from the cache and ends with the same files as an uninterrupted one. Failed
requests are not cached (a rerun retries them); in the results they are failures with reason
``request_failed: ...``, counted in ``request_failures``, never dropped from a denominator.

Sampling with several seeds (``seeds > 1``) writes one run per seed to ``OUT/seed{S}/`` and, in
``OUT``, the per-sample mean over seeds: its point estimates are the mean of the per-seed metrics, and
its CIs resample dataset samples (the seeds of one sample move together).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mgsd.backends.base import Backend, GenerationConfig
from mgsd.eval.plans import write_results
from mgsd.eval.queries import MODALITIES, load_samples, plan_query
from mgsd.eval.responses import CACHE_NAME, ResponseCache, cache_settings, run_info, run_queries
from mgsd.files import read_jsonl
from mgsd.scoring.plans import METRICS, score_plan, score_response
from mgsd.tasks import get_task


def score_record(sample: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """The ``eval plans`` score of one response, plus the response itself and any request error."""
    task = get_task(sample["task"])
    state = task.load_state(sample["state"])
    optimal = int(sample["optimal_length"])
    if record.get("error"):
        row = score_plan(task, state, None, sample_id=sample["id"], optimal_length=optimal).to_dict()
        row["reason"] = f"request_failed: {record['error']}"
    else:
        row = score_response(
            task, state, record["response"], sample_id=sample["id"], optimal_length=optimal
        ).to_dict()
    return {
        **row,
        "missing": False,
        "response": record.get("response"),
        "error": record.get("error"),
        "tokens": record.get("tokens", 0),
        "truncated": bool(record.get("truncated")),
    }


def _evaluate_plans_once(
    backend: Backend,
    samples: Sequence[Mapping[str, Any]],
    out: Path,
    info: Mapping[str, Any],
    *,
    modality: str,
    cfg: GenerationConfig,
    batch_size: int,
    progress: bool,
    desc: str,
) -> dict[str, Any]:
    cache = ResponseCache(out / CACHE_NAME, cache_settings(f"plan-{modality}", info["model"], backend, cfg))
    records = run_queries(
        backend,
        samples,
        lambda s: plan_query(s, modality),
        cfg,
        cache,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    rows = [score_record(s, records[s["id"]]) for s in samples]
    extra = {
        **info,
        "generation": cfg.to_dict(),
        "modality": modality,
        "request_failures": sum(r["error"] is not None for r in rows),
        "truncated": sum(r["truncated"] for r in rows),
    }
    return write_results(out, rows, extra)


def _seed_summary(m: Mapping[str, Any]) -> dict[str, float]:
    return {
        **{k: m[k] for k in METRICS},
        "macro_success": m["macro"]["success"],
        "request_failures": m["request_failures"],
    }


def _combine_seeds(
    out: Path, per_seed: Mapping[int, Mapping[str, Any]], info: Mapping[str, Any]
) -> dict[str, Any]:
    """OUT/samples.jsonl and metrics.json from the seed runs: per-sample means over seeds.

    Written with ``write_results``; its ``missing_predictions`` is 0 here (mean rows never lack a response).
    """
    runs = {s: read_jsonl(out / f"seed{s}" / "samples.jsonl") for s in per_seed}
    first = runs[min(runs)]
    rows = []
    for i, base in enumerate(first):
        per = [runs[s][i] for s in sorted(runs)]
        rows.append(
            {
                "id": base["id"],
                "task": base["task"],
                "level": base["level"],
                **{k: float(np.mean([float(p[k]) for p in per])) for k in METRICS},
                "success_by_seed": [bool(p["success"]) for p in per],
                "reason": None,
            }
        )
    outcomes: dict[str, int] = {}
    for m in per_seed.values():
        for k, v in m["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + v
    summaries = {str(s): _seed_summary(m) for s, m in sorted(per_seed.items())}
    extra = {
        **info,
        "outcomes": dict(sorted(outcomes.items())),  # summed over seeds
        "seeds": sorted(per_seed),
        "per_seed": summaries,
        "seed_std": {
            k: float(np.std([v[k] for v in summaries.values()], ddof=1)) for k in (*METRICS, "macro_success")
        },
        "request_failures": sum(m["request_failures"] for m in per_seed.values()),
        "truncated": sum(m["truncated"] for m in per_seed.values()),
    }
    return write_results(out, rows, extra)


def check_generation(gen: GenerationConfig | None) -> GenerationConfig:
    """``gen`` (default: greedy ``GenerationConfig()``), or ValueError if it cannot generate anything."""
    gen = gen or GenerationConfig()
    if gen.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    return gen


def evaluate_model(
    backend: Backend,
    data: Sequence[str | Path],
    out: str | Path,
    *,
    model: str | None = None,
    modality: str = "image",
    gen: GenerationConfig | None = None,
    seeds: int = 1,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
    samples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Plan every sample with ``backend`` and score it; writes OUT/samples.jsonl and metrics.json.

    ``seeds > 1`` (sampling only) runs seeds ``gen.seed .. gen.seed + seeds - 1`` (see module doc).
    ``samples``: the rows ``load_samples(data, limit=limit)`` returns, when the caller has them already
    (``data`` and ``limit`` are then only recorded in metrics.json).
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r} (choose from {', '.join(MODALITIES)})")
    gen = check_generation(gen)
    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    if seeds > 1 and gen.greedy:
        raise ValueError("--seeds > 1 needs sampling (--temperature > 0): greedy runs are identical")
    out = Path(out)
    if samples is None:
        samples = load_samples(data, limit=limit)
    info = {**run_info(model, backend, data, gen, limit), "modality": modality}
    if seeds == 1:
        return _evaluate_plans_once(
            backend,
            samples,
            out,
            info,
            modality=modality,
            cfg=gen,
            batch_size=batch_size,
            progress=progress,
            desc=modality,
        )
    per_seed = {}
    for k in range(seeds):
        cfg = GenerationConfig(gen.max_new_tokens, gen.temperature, gen.top_p, gen.seed + k)
        per_seed[cfg.seed] = _evaluate_plans_once(
            backend,
            samples,
            out / f"seed{cfg.seed}",
            info,
            modality=modality,
            cfg=cfg,
            batch_size=batch_size,
            progress=progress,
            desc=f"{modality} seed {cfg.seed}",
        )
    return _combine_seeds(out, per_seed, info)
