"""Evaluating a model (local or behind an API) on a dataset: planning from the image or from the text
state, and perception. ``mgsd eval model`` is a thin layer over ``evaluate_model`` and
``evaluate_perception``.

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

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mgsd import __version__
from mgsd.backends.base import Backend, GenerationConfig, Query, Reply
from mgsd.data.io import DataError, decode_image, read_rows
from mgsd.eval.plans import data_paths, write_results
from mgsd.files import atomic_write, jsonl_lines, read_jsonl, write_json, write_jsonl
from mgsd.prompts import (
    perception_prompt,
    student_prompt,
    teacher_context,
    teacher_system,
    text_student_prompt,
)
from mgsd.scoring.perception import score_perception
from mgsd.scoring.plans import METRICS, score_plan, score_response
from mgsd.tasks import get_task

# image: the visual student; text: the text-only student (the symbolic upper bound); teacher+plan /
# teacher: the stage-2 teacher's own context (system turn, symbolic state, with / without the plan).
MODALITIES = ("image", "text", "teacher+plan", "teacher")
CACHE_NAME = ".cache.jsonl"
_COLUMNS = ["id", "task", "level", "state", "image", "optimal_plan", "optimal_length"]


# -- data ---------------------------------------------------------------------------------------------


def load_samples(data: Sequence[str | Path], *, limit: int | None = None) -> list[dict[str, Any]]:
    """Dataset rows in file order; ``limit`` keeps at most that many per (task, level), so the level
    mix stays intact (the reference's "first N rows" was biased towards one level)."""
    rows = read_rows(data, columns=_COLUMNS)
    if not rows:
        raise DataError("the dataset is empty")
    for r in rows:
        get_task(r["task"])  # an unknown task name is a clear error now, not a crash mid-run
    if limit is None:
        return rows
    if limit < 1:
        raise ValueError("--limit must be at least 1")
    kept: list[dict[str, Any]] = []
    counts: dict[tuple[str, int], int] = {}
    for r in rows:
        key = (r["task"], int(r["level"]))
        if counts.get(key, 0) < limit:
            counts[key] = counts.get(key, 0) + 1
            kept.append(r)
    return kept


def model_label(model: str | None) -> str | None:
    """A model directory as an absolute path (stable across working directories); hub ids unchanged."""
    if model is None:
        return None
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


# -- queries ------------------------------------------------------------------------------------------


def plan_query(sample: Mapping[str, Any], modality: str) -> Query:
    """The student's planning request for one sample in the given input modality."""
    task = get_task(sample["task"])
    if modality == "image":
        return Query(sample["id"], [student_prompt(task), decode_image(sample["image"])])
    if modality == "text":
        return Query(sample["id"], [text_student_prompt(task, task.load_state(sample["state"]))])
    if modality in ("teacher+plan", "teacher"):
        state = task.load_state(sample["state"])
        plan = task.split_plan(sample["optimal_plan"]) if modality == "teacher+plan" else None
        return Query(sample["id"], [teacher_context(task, state, plan)], system=teacher_system(task))
    raise ValueError(f"unknown modality {modality!r} (choose from {', '.join(MODALITIES)})")


def perception_query(sample: Mapping[str, Any]) -> Query:
    """The numbered perception questions about one sample's image."""
    task = get_task(sample["task"])
    state = task.load_state(sample["state"])
    return Query(sample["id"], [perception_prompt(task, state), decode_image(sample["image"])])


# -- resumable generation -----------------------------------------------------------------------------


class ResponseCache:
    """Append-only JSONL of finished responses whose first line records the run's settings."""

    def __init__(self, path: str | Path, settings: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # normalised (tuples -> lists) for comparison

    def load(self) -> dict[str, dict[str, Any]]:
        """Cached records by id; ValueError if the cache belongs to a run with other settings."""
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # killed mid-write: drop the partial last line
            raw = raw[: raw.rfind(b"\n") + 1]
            self.path.write_bytes(raw)
        lines = [ln for ln in jsonl_lines(raw.decode("utf-8")) if ln.strip()]
        if not lines:
            return {}
        try:
            header = json.loads(lines[0])["settings"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{self.path} is not an mgsd response cache") from None
        if header != self.settings:
            diff = sorted(k for k in {*header, *self.settings} if header.get(k) != self.settings.get(k))
            raise ValueError(
                f"{self.path.parent} holds a run with other settings ({', '.join(diff)}); "
                "use another --out or delete that directory"
            )
        records: dict[str, dict[str, Any]] = {}
        for line in lines[1:]:
            rec = json.loads(line)
            records[rec["id"]] = rec
        return records

    def rewrite(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replace the cache by ``records`` (dropping stale answers), atomically."""

        def write(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as f:
                f.write(json.dumps({"settings": self.settings}) + "\n")
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())  # the rename must not publish a file whose bytes are still in cache

        atomic_write(self.path, write)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"settings": self.settings}) + "\n")
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a kill right after this batch keeps it


def query_key(q: Query, identity: str = "") -> str:
    """A hash of everything a response answers: the backend's ``identity`` (its weights), the system
    text and the user turn, text and image pixels alike (not the id, which names it only)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (identity, q.system or ""):
        h.update(f"s{len(part)}:".encode() + part.encode())
    for part in q.user:
        if isinstance(part, str):
            h.update(f"t{len(part)}:".encode() + part.encode())
        else:
            h.update(f"i{part.mode}{part.size}:".encode() + part.tobytes())
    return h.hexdigest()


def backend_identity(backend: Backend) -> str:
    """What, besides the settings in the cache header, makes a backend's answers its own: a local
    model's weights fingerprint (``describe()["weights"]``); empty when unknown (an API)."""
    return str(backend.describe().get("weights") or "")


def _record(sample_id: str, reply: Reply, key: str | None = None) -> dict[str, Any]:
    return {
        "id": sample_id,
        "key": key,
        "response": reply.text,
        "error": reply.error,
        "tokens": reply.tokens,
        "truncated": reply.truncated,
    }


def run_queries(
    backend: Backend,
    samples: Sequence[Mapping[str, Any]],
    make_query: Callable[[Mapping[str, Any]], Query],
    cfg: GenerationConfig,
    cache: ResponseCache,
    *,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, dict[str, Any]]:
    """A response record for every sample: cached ones are reused, the rest generated in batches of
    ``batch_size`` (each batch is cached as soon as it returns). Never drops a sample: a query that
    cannot be built (e.g. a corrupt image) or a failed request is a record with ``error`` set."""
    if batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    done = cache.load()
    identity = backend_identity(backend)
    results: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    pending: list[Mapping[str, Any]] = []
    stale: set[str] = set()
    for s in samples:  # queries are rebuilt per batch below: holding every image at once would not scale
        try:
            keys[s["id"]] = query_key(make_query(s), identity)
        except ValueError:
            pending.append(s)  # recorded as bad input below
            continue
        cached = done.get(s["id"])
        if cached is not None and cached.get("key") == keys[s["id"]]:
            results[s["id"]] = cached
        else:
            if cached is not None:  # the same id asked something else (other data or weights)
                stale.add(s["id"])
            pending.append(s)
    if stale:  # drop the stale answers (answers to ids not asked now are kept)
        cache.rewrite(r for i, r in done.items() if i not in stale)
    bar = tqdm(
        total=len(samples),
        initial=len(samples) - len(pending),
        unit="sample",
        desc=desc,
        disable=not progress,
    )
    try:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            queries: list[Query] = []
            for s in chunk:
                try:
                    queries.append(make_query(s))
                except ValueError as exc:  # DataError included: bad input is a counted failure
                    results[s["id"]] = _record(s["id"], Reply(None, f"bad input: {exc}"))
            replies = backend.generate(queries, cfg) if queries else []
            if len(replies) != len(queries):
                raise RuntimeError(f"backend returned {len(replies)} replies for {len(queries)} queries")
            fresh = [_record(q.id, r, keys.get(q.id)) for q, r in zip(queries, replies, strict=True)]
            cache.append(r for r in fresh if r["error"] is None)  # failures are retried by a rerun
            results.update((r["id"], r) for r in fresh)
            failed = sum(r["error"] is not None for r in results.values())
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            bar.update(len(chunk))
    finally:
        bar.close()
    return results


# -- planning -----------------------------------------------------------------------------------------


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


def _settings(kind: str, model: str | None, backend: Backend, cfg: GenerationConfig) -> dict[str, Any]:
    info = backend.describe()
    return {
        "kind": kind,
        "model": model,
        "backend": info.get("type"),
        "api_base": info.get("api_base"),
        "api_model": info.get("api_model"),
        "generation": cfg.to_dict(),
    }


def _run_info(
    model: str | None, backend: Backend, data: Sequence[str | Path], cfg: GenerationConfig, limit: int | None
) -> dict[str, Any]:
    return {
        "model": model,
        "backend": backend.describe(),
        "data": data_paths(data),
        "generation": cfg.to_dict(),
        "limit_per_level": limit,
        "mgsd_version": __version__,
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
    cache = ResponseCache(out / CACHE_NAME, _settings(f"plan-{modality}", info["model"], backend, cfg))
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
    info = {**_run_info(model, backend, data, gen, limit), "modality": modality}
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


# -- perception ---------------------------------------------------------------------------------------


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


def score_perception_record(sample: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """One sample's perception answer scored question by question (a failed request: all wrong)."""
    task = get_task(sample["task"])
    items = task.perception(task.load_state(sample["state"]))
    scored = score_perception(items, None if record.get("error") else record.get("response"))
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
    cache = ResponseCache(out / CACHE_NAME, _settings("perception", model, backend, gen))
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
    metrics.update(_run_info(model, backend, data, gen, limit))
    metrics["modality"] = "image"
    metrics["truncated"] = sum(r["truncated"] for r in rows)
    write_jsonl(rows, out / "samples.jsonl")
    write_json(metrics, out / "perception_metrics.json")
    return metrics
