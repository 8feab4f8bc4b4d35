"""A local model as a backend: batched generation through ``mgsd.models.Backbone``.

Queries are answered ``batch_size`` at a time (one left-padded ``generate`` call per batch,
``run_batch``). A batch that cannot be encoded or generated (e.g. an image the processor refuses) is
retried one query at a time (``isolate_failures``), so only the offending queries become failed
``Reply``s: nothing is dropped. ``mgsd serve`` batches and retries through the same two functions.

Sampling (``temperature > 0``) is seeded per batch from ``cfg.seed`` and the batch's query ids, so
the same batch gives the same responses whether or not the run was interrupted and resumed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mgsd.backends.base import BackendOptions, GenerationConfig, Query, Reply, one_line

if TYPE_CHECKING:  # torch and transformers: only when a model runs
    from mgsd.models.context import Context
    from mgsd.models.generation import Generation

T = TypeVar("T")
R = TypeVar("R")


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


def isolate_failures(
    items: Sequence[T], run: Callable[[Sequence[T]], list[R]], fail: Callable[[T, Exception], R]
) -> list[R]:
    """``run(items)``; when it raises, each item is run alone, so only the items that break it get
    ``fail(item, exc)``: one bad query must not fail its neighbours."""
    try:
        return run(items)
    except Exception as exc:
        if len(items) == 1:
            return [fail(items[0], exc)]
    return [r for item in items for r in isolate_failures([item], run, fail)]


class LocalBackend:
    """``generate(queries, cfg) -> list[Reply]`` over a ``Backbone``, ``batch_size`` queries per call."""

    def __init__(
        self,
        backbone: Any,
        *,
        batch_size: int = 8,
        name: str | None = None,
        shrink: bool = True,
        share_prefix: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        self.bb = backbone
        self.batch_size = batch_size
        self.name = name
        # Finished rows leave the batch and the rows' common prefix is prefilled once
        # (Backbone.generate): the same tokens, greedy or sampled for a seed.
        self.shrink = shrink
        self.share_prefix = share_prefix
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

    @classmethod
    def open(cls, model: str | None, options: BackendOptions) -> LocalBackend:
        """``load`` with the user's options; ``model`` is required."""
        if not model:
            raise ValueError("give --model (a model directory or hub id) or --api-base")
        return cls.load(
            model,
            batch_size=options.batch_size,
            dtype=options.dtype,
            trust_remote_code=options.trust_remote_code,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "type": "local",
            "batch_size": self.batch_size,
            "dtype": str(self.bb.param_dtype).removeprefix("torch."),
            "device": str(self.bb.device),
            "weights": self.weights,
        }

    def run_batch(
        self, conversations: Sequence[Any], cfg: GenerationConfig, *, seed: int | None
    ) -> tuple[Context, Generation]:
        """One left-padded ``generate`` call over Backbone ``conversations``: ``(Context, Generation)``.
        Sampling is seeded with ``seed`` first (``None``: the generator as it is)."""
        import torch

        ctx = self.bb.encode(list(conversations))
        if not cfg.greedy and seed is not None:
            torch.manual_seed(seed)
        gen = self.bb.generate(
            ctx,
            max_new_tokens=cfg.max_new_tokens,
            temperature=max(cfg.temperature, 1e-5),
            top_p=cfg.top_p,
            greedy=cfg.greedy,
            shrink=self.shrink,
            share_prefix=self.share_prefix,
        )
        return ctx, gen

    def _run(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]:
        seed = batch_seed(cfg.seed, [q.id for q in queries])
        _, gen = self.run_batch([query_messages(q) for q in queries], cfg, seed=seed)
        return [
            Reply(text, None, len(seq), truncated=not done)
            for text, seq, done in zip(gen.texts, gen.sequences, gen.finished, strict=True)
        ]

    def generate(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]:
        out: list[Reply] = []
        for i in range(0, len(queries), self.batch_size):
            out += isolate_failures(
                queries[i : i + self.batch_size],
                lambda batch: self._run(batch, cfg),
                lambda _, exc: Reply(None, one_line(exc)),
            )
        return out
