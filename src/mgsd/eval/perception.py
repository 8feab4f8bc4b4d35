"""Perception evaluation: each sample's numbered questions about its image, scored question by question
(``score_perception``), aggregated with CIs resampled within (task, level) cells; writes
OUT/samples.jsonl and perception_metrics.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mgsd.backends.base import Backend, GenerationConfig
from mgsd.eval.queries import load_samples, perception_query
from mgsd.eval.responses import CACHE_NAME, ResponseCache, cache_settings, run_info, run_queries
from mgsd.files import write_json, write_jsonl
from mgsd.prompts import answer_facts
from mgsd.scoring.aggregate import stratified_rate
from mgsd.scoring.perception import score_perception
from mgsd.tasks import get_task


def _perception_block(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], n_boot: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Rates over ``rows`` with CIs resampled within (task, level) cells; ``keys``: per-question rates."""
    rate = stratified_rate(rows, n_boot, rng)
    all_correct, all_ci = rate(lambda r: float(r["all_correct"]))
    accuracy, acc_ci = rate(lambda r: float(r["accuracy"]))
    block: dict[str, Any] = {
        "n": len(rows),
        "all_correct": all_correct,
        "all_correct_ci": all_ci,
        "question_accuracy": accuracy,
        "question_accuracy_ci": acc_ci,
    }
    if keys:
        block["questions"] = {}
        for k in keys:
            mean, ci = rate(lambda r, k=k: float(r["questions"][k]))
            block["questions"][k] = {"accuracy": mean, "ci": ci}
    return block


def aggregate_perception(
    rows: Sequence[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """perception_metrics.json: all-correct rate, mean question accuracy and per-question accuracy,
    overall, per task and per (task, level), each with n and a 95% bootstrap CI."""
    if not rows:
        raise ValueError("no samples to aggregate")
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = _perception_block(rows, (), n_boot, rng)
    out["by_task"], out["by_task_level"] = {}, {}
    for t in sorted({r["task"] for r in rows}):
        trows = [r for r in rows if r["task"] == t]
        keys = list(trows[0]["questions"])
        out["by_task"][t] = _perception_block(trows, keys, n_boot, rng)
        for lv in sorted({int(r["level"]) for r in trows}):
            lrows = [r for r in trows if int(r["level"]) == lv]
            block = _perception_block(lrows, keys, n_boot, rng)
            out["by_task_level"][f"{t}/{lv}"] = {"task": t, "level": lv, **block}
    out["bootstrap"] = {"replicates": n_boot, "seed": seed, "level": 0.95}
    out["request_failures"] = sum(r.get("error") is not None for r in rows)
    return out


def score_perception_record(
    sample: Mapping[str, Any], record: Mapping[str, Any], *, plan_answer: bool = False
) -> dict[str, Any]:
    """One sample's perception answer scored question by question (a failed request: all wrong).
    ``plan_answer``: ``record`` is a plan answer; its opening facts block is scored, on the
    questions a facts block answers (not the legal moves)."""
    task = get_task(sample["task"])
    state = task.load_state(sample["state"])
    items = task.fact_items(state) if plan_answer else task.perception(state)
    response = None if record.get("error") else record.get("response")
    if plan_answer and response is not None:
        response = answer_facts(response)
    scored = score_perception(items, response)
    return {
        "id": sample["id"],
        "task": sample["task"],
        "level": int(sample["level"]),
        **scored,
        "response": record.get("response"),
        "error": record.get("error"),
        "tokens": record.get("tokens", 0),
        "truncated": bool(record.get("truncated")),
    }


def score_answer_facts(
    samples: Sequence[Mapping[str, Any]], plan_rows: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The facts block of each image plan answer scored as a perception answer (no new request).

    A plan answer restates the state in the facts format before it plans (prompts/templates.py), so
    this is what the model perceives while it plans, and what stage 2's privileged teacher scores
    token by token; the perception probe asks another prompt, and after stage 2 the two can differ."""
    by_id = {r["id"]: r for r in plan_rows}
    missing = [s["id"] for s in samples if s["id"] not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} samples have no plan answer (first: {missing[0]})")
    rows = [score_perception_record(s, by_id[s["id"]], plan_answer=True) for s in samples]
    metrics = aggregate_perception(rows)
    metrics["source"] = "the facts block of the image plan answers"
    return metrics


def evaluate_perception(
    backend: Backend,
    data: Sequence[str | Path],
    out: str | Path,
    *,
    model: str | None = None,
    gen: GenerationConfig | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
    samples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Ask every sample's perception questions; writes OUT/samples.jsonl and perception_metrics.json.

    ``samples``: as for ``evaluate_model``, rows already loaded by ``load_samples(data, limit=limit)``.
    """
    gen = gen or GenerationConfig()
    out = Path(out)
    if samples is None:
        samples = load_samples(data, limit=limit)
    cache = ResponseCache(out / CACHE_NAME, cache_settings("perception", model, backend, gen))
    records = run_queries(
        backend,
        samples,
        perception_query,
        gen,
        cache,
        batch_size=batch_size,
        progress=progress,
        desc="perception",
    )
    rows = [score_perception_record(s, records[s["id"]]) for s in samples]
    metrics = aggregate_perception(rows)
    metrics.update(run_info(model, backend, data, gen, limit))
    metrics["modality"] = "image"
    metrics["truncated"] = sum(r["truncated"] for r in rows)
    write_jsonl(rows, out / "samples.jsonl")
    write_json(metrics, out / "perception_metrics.json")
    return metrics
