"""A batch's shared prompt prefix, computed once and shared by every row's KV cache.

An evaluation batch asks one instruction of many samples: the prompts of a task begin with the same
100-200 tokens (template, task rules, answer format) and differ only from the image, or the state,
on. On a CPU the prefill is compute-bound (about two thirds of an image-plan batch's time), so that
common part is run once with batch 1, its cache repeated over the rows, and only each row's rest is
run per row. The rows are laid out ``[prefix | pad… rest]``: the rest keeps the column it had under
left padding, the padding moves between prefix and rest, and positions count only real tokens
(``positions.position_ids``), so every real token sees the same context at the same position as in
the left-padded prompt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch

from mgsd.models.context import Context

# Below this many shared tokens the extra forward costs more than it saves.
MIN_SHARED = 16


def shared_prefix_length(ctx: Context, stop_ids: Iterable[int]) -> int:
    """How many leading real tokens every row shares, stopping before the first of ``stop_ids`` (the
    vision markers: an image's tokens must stay with its features in the rows' own forward) and
    leaving every row at least one token of its own; 0 for a single row."""
    ids, mask = ctx.input_ids, ctx.attention_mask.bool()
    lengths = mask.sum(-1)
    n = int(lengths.min()) if len(ctx) else 0
    if len(ctx) < 2 or n < 2:
        return 0
    starts = ids.shape[1] - lengths  # left padding: row i's real tokens are columns [start, L)
    cols = starts[:, None] + torch.arange(n, device=ids.device)[None]
    aligned = ids.gather(1, cols)
    same = (aligned == aligned[:1]).all(0)
    stops = torch.as_tensor(sorted(set(stop_ids)), dtype=ids.dtype, device=ids.device)
    same &= ~torch.isin(aligned[0], stops).cumsum(0).bool()
    return min(int(same.long().cumprod(0).sum()), n - 1)


def hoist_prefix(ctx: Context, length: int, pad_id: int) -> Context:
    """``ctx`` laid out ``[prefix | pad… rest]`` for a shared prefix of ``length`` tokens."""
    ids, mask = ctx.input_ids, ctx.attention_mask
    L = ids.shape[1]
    starts = L - mask.sum(-1)
    col = torch.arange(L, device=ids.device)[None]
    # Under left padding row i's rest already sits at columns >= start_i + length; the first
    # ``length`` columns become the prefix, the ones between become padding.
    rest = col >= (starts[:, None] + length)
    head = col < length
    first = int(starts[0])

    def relay(values: torch.Tensor, fill: int) -> torch.Tensor:
        out = torch.where(rest, values, torch.full_like(values, fill))
        out[:, :length] = values[0, first : first + length]
        return out

    new_mask = (head | rest).to(mask.dtype)
    extras = dict(ctx.extras)
    for key in ctx.per_token_keys():
        extras[key] = relay(ctx.extras[key], 0)
    return replace(ctx, input_ids=relay(ids, pad_id), attention_mask=new_mask, extras=extras)
