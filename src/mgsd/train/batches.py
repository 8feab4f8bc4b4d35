"""What each optimizer step trains on: the seeded data order, global batches, micro-batches.

Determinism: the data order is a seeded permutation per epoch (tasks optionally taking turns), and
global batch ``s`` is the ``s``-th slice of it, so a resumed run replays exactly the batches an
uninterrupted one would have seen; every process takes its own share of each global batch.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mgsd.models.backbone import Backbone
from mgsd.models.context import Context
from mgsd.train.examples import Example


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank) % (2**63 - 1)


def epoch_order(
    n: int, key: str, groups: Sequence[Sequence[int]] | None = None, weights: Sequence[int] | None = None
) -> list[int]:
    """One epoch's order of ``n`` examples, seeded by ``key`` (seed, objective, epoch), so stages
    started from one another never walk the data in the same order. With ``groups`` (the example
    indices of each task) tasks take turns, each walking its own permutation and cycling when it runs
    out; in a turn, group ``g`` gives ``weights[g]`` examples (default 1: an equal share). The epoch
    lasts as many turns as the group slowest to run out needs."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if groups is None:
        return torch.randperm(n, generator=gen).tolist()
    w = list(weights) if weights is not None else [1] * len(groups)
    if len(w) != len(groups) or min(w) < 1:
        raise ValueError("epoch_order: one positive integer weight per group")
    perms = [[g[i] for i in torch.randperm(len(g), generator=gen).tolist()] for g in groups]
    turns = max(math.ceil(len(p) / k) for p, k in zip(perms, w, strict=True))
    return [
        p[(t * k + j) % len(p)] for t in range(turns) for p, k in zip(perms, w, strict=True) for j in range(k)
    ]


def spread(rows: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """At most ``n`` rows, tasks taking turns (a file-order prefix would be all FrozenLake)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    turns = itertools.chain.from_iterable(itertools.zip_longest(*by_task.values()))
    return [r for r in turns if r is not None][:n]


class BatchOrder:
    """Global batches of ``batch_size`` consecutive examples of the per-epoch order of ``examples``;
    with ``balance_tasks`` the tasks take turns, ``task_weights[t]`` examples of task ``t`` a turn."""

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        seed: int,
        objective: str,
        batch_size: int,
        balance_tasks: bool,
        task_weights: Mapping[str, int],
    ) -> None:
        self.examples, self.batch_size, self.balance = list(examples), batch_size, balance_tasks
        self._key = f"{seed}/{objective}"
        self._task_index: dict[str, list[int]] = {}
        for i, e in enumerate(self.examples):
            self._task_index.setdefault(e.task, []).append(i)
        unknown = set(task_weights) - set(self._task_index)
        if unknown:
            raise ValueError(f"task_weights names tasks not in the training data: {sorted(unknown)}")
        self._weights = [int(task_weights.get(t, 1)) for t in self._task_index]
        self.epoch_len = (
            max(math.ceil(len(v) / k) for v, k in zip(self._task_index.values(), self._weights, strict=True))
            * sum(self._weights)
            if balance_tasks
            else len(self.examples)
        )
        self._cache: tuple[int, list[int]] | None = None

    def global_batch(self, step: int) -> list[Example]:
        """The examples of global batch ``step``: consecutive slices of the per-epoch order."""
        bsz = self.batch_size
        out: list[Example] = []
        pos = step * bsz
        while len(out) < bsz:
            order = self.epoch(pos // self.epoch_len)
            offset = pos % self.epoch_len
            take = min(bsz - len(out), self.epoch_len - offset)
            out += [self.examples[i] for i in order[offset : offset + take]]
            pos += take
        return out

    def epoch(self, epoch: int) -> list[int]:
        if not self._cache or self._cache[0] != epoch:
            groups = list(self._task_index.values()) if self.balance else None
            order = epoch_order(
                len(self.examples), f"{self._key}/{epoch}", groups, self._weights if groups else None
            )
            self._cache = (epoch, order)
        return self._cache[1]


def local_share(batch: Sequence[Example], rank: int, world: int) -> list[Example]:
    """Process ``rank``'s consecutive share of a global batch."""
    per = len(batch) // world
    return list(batch[rank * per : (rank + 1) * per])


def micro_batches(n: int, size: int, exs: Sequence[Example] | None = None) -> list[list[int]]:
    """Index lists of at most ``size``; with ``exs``, image and text-only examples go to separate
    micro-batches (one forward cannot mix them), each keeping its order."""
    groups = [list(range(n))]
    if exs is not None:
        groups = [[i for i in range(n) if (exs[i].image is None) == text] for text in (False, True)]
    return [g[i : i + size] for g in groups for i in range(0, len(g), size)]


def encode_student(bb: Backbone, exs: Sequence[Example]) -> Context:
    """The student's prompts: image + question, or (text-only examples) the text alone."""
    if all(e.image is not None for e in exs):
        return bb.encode_student([e.prompt for e in exs], [e.pil_image() for e in exs])
    if any(e.image is not None for e in exs):
        raise ValueError("a batch mixes image and text-only examples")
    # teacher_messages(None, text) is student_messages(text, "end", 0): no system turn when empty
    return bb.encode_teacher([e.system or None for e in exs], [e.prompt for e in exs])
