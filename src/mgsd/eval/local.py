"""A local model as an evaluation backend: batched generation through ``mgsd.models.Backbone``.

Queries are answered ``batch_size`` at a time (one left-padded ``generate`` call per batch). A batch
that cannot be encoded or generated (e.g. an image the processor refuses) is retried one query at a
time, so only the offending queries become failed ``Reply``s: nothing is dropped.

Sampling (``temperature > 0``) is seeded per batch from ``cfg.seed`` and the batch's query ids, so
the same batch gives the same responses whether or not the run was interrupted and resumed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mgsd.eval.backends import GenerationConfig, Query, Reply, one_line


def query_messages(q: Query) -> list[dict[str, Any]]:
    """A query as Backbone chat messages (PIL images inline, in their position in the user turn)."""
    content = [
        {"type": "text", "text": part} if isinstance(part, str) else {"type": "image", "image": part}
        for part in q.user
    ]
    messages: list[dict[str, Any]] = []
    if q.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": q.system}]})
    messages.append({"role": "user", "content": content})
    return messages


def batch_seed(seed: int, ids: Sequence[str]) -> int:
    """A sampling seed that depends only on the run seed and which queries share the batch."""
    key = "\x00".join([str(seed), *ids])
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class LocalBackend:
    """``generate(queries, cfg) -> list[Reply]`` over a ``Backbone``, ``batch_size`` queries per call."""

    def __init__(self, backbone: Any, *, batch_size: int = 8, name: str | None = None) -> None:
        if batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        self.bb = backbone
        self.batch_size = batch_size
        self.name = name
        # The weights' content, so cached answers of other (e.g. retrained) weights at the same path
        # are never reused; a backbone built in memory has none.
        self.weights: str | None = None
        if name and Path(name).is_dir():
            from mgsd.data.io import tree_fingerprint

            self.weights = tree_fingerprint(name, (".safetensors", ".json", ".bin", ".txt", ".model"))

    @classmethod
    def load(
        cls,
        model: str,
        *,
        batch_size: int = 8,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        device: str | None = None,
    ) -> LocalBackend:
        """Load a model directory or hub id; a path that is not a model is one ``ValueError`` line."""
        from mgsd.models import Backbone
        from mgsd.models.storage import resolve_model_path

        resolve_model_path(model)  # its own clear message for "no such directory" / "no config.json"
        try:
            bb = Backbone.load(model, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
        except Exception as exc:  # transformers raises many types for a broken model directory
            raise ValueError(f"cannot load model {model}: {one_line(exc)}") from None
        return cls(bb, batch_size=batch_size, name=str(model))

    def describe(self) -> dict[str, Any]:
        return {
            "type": "local",
            "batch_size": self.batch_size,
            "dtype": str(self.bb.param_dtype).removeprefix("torch."),
            "device": str(self.bb.device),
            "weights": self.weights,
        }

    def _run(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]:
        import torch

        ctx = self.bb.encode([query_messages(q) for q in queries])
        if not cfg.greedy:
            torch.manual_seed(batch_seed(cfg.seed, [q.id for q in queries]))
        gen = self.bb.generate(
            ctx,
            max_new_tokens=cfg.max_new_tokens,
            temperature=max(cfg.temperature, 1e-5),
            top_p=cfg.top_p,
            greedy=cfg.greedy,
        )
        return [
            Reply(text, None, len(seq), truncated=not done)
            for text, seq, done in zip(gen.texts, gen.sequences, gen.finished, strict=True)
        ]

    def _batch(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]:
        try:
            return self._run(queries, cfg)
        except Exception as exc:
            if len(queries) == 1:
                return [Reply(None, one_line(exc))]
        # Isolate the query that broke the batch; the others still get answers.
        return [r for q in queries for r in self._batch([q], cfg)]

    def generate(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]:
        out: list[Reply] = []
        for i in range(0, len(queries), self.batch_size):
            out += self._batch(queries[i : i + self.batch_size], cfg)
        return out
