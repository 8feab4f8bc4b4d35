"""Resumable generation for ``mgsd eval model``: every sample gets a response record, cached ones are
reused (``ResponseCache``, keyed by what each response answers: ``query_key``), the rest generated in
batches and cached as each batch returns (``run_queries``); and the run settings the cache header and
metrics.json record."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mgsd import __version__
from mgsd.backends.base import Backend, GenerationConfig, Query, Reply
from mgsd.data.io import DataError
from mgsd.eval.plans import data_paths
from mgsd.files import atomic_write, jsonl_lines

CACHE_NAME = ".cache.jsonl"


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


def response_record(sample_id: str, reply: Reply, key: str | None = None) -> dict[str, Any]:
    return {
        "id": sample_id,
        "key": key,
        "response": reply.text,
        "error": reply.error,
        "tokens": reply.tokens,
        "truncated": reply.truncated,
    }


def task_batches(samples: Sequence[Mapping[str, Any]], size: int) -> list[list[Mapping[str, Any]]]:
    """Batches of at most ``size`` samples, each of one task (tasks in order of first appearance):
    the prompts of a task share their instruction, which a local model prefills once per batch
    (models/prefix.py)."""
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for s in samples:
        groups.setdefault(s.get("task"), []).append(s)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


# Over 60 lines, kept whole: the cache lookup, the batches, the cache appends and the progress bar
# share one set of records; split, the pieces would pass all of them back and forth.
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
        for chunk in task_batches(pending, batch_size):
            queries: list[Query] = []
            for s in chunk:
                try:
                    queries.append(make_query(s))
                except ValueError as exc:  # DataError included: bad input is a counted failure
                    results[s["id"]] = response_record(s["id"], Reply(None, f"bad input: {exc}"))
            replies = backend.generate(queries, cfg) if queries else []
            if len(replies) != len(queries):
                raise RuntimeError(f"backend returned {len(replies)} replies for {len(queries)} queries")
            fresh = [response_record(q.id, r, keys.get(q.id)) for q, r in zip(queries, replies, strict=True)]
            cache.append(r for r in fresh if r["error"] is None)  # failures are retried by a rerun
            results.update((r["id"], r) for r in fresh)
            failed = sum(r["error"] is not None for r in results.values())
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            bar.update(len(chunk))
    finally:
        bar.close()
    return results


def cache_settings(kind: str, model: str | None, backend: Backend, cfg: GenerationConfig) -> dict[str, Any]:
    info = backend.describe()
    return {
        "kind": kind,
        "model": model,
        "backend": info.get("type"),
        "api_base": info.get("api_base"),
        "api_model": info.get("api_model"),
        "generation": cfg.to_dict(),
    }


def run_info(
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
