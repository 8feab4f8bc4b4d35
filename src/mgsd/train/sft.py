"""The SFT step (perception, plan, symbolic, pretrain): next-token cross-entropy on the targets, plus
two optional auxiliary losses on image micro-batches: the dense per-token read-out of scene images
(train/dense.py, pretraining only) and attention grounding (train/grounding.py).

All three are normalised so that micro-batches and processes add up to one global mean: the
cross-entropy by the global number of target tokens, the auxiliary losses by the global number of
image examples.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from mgsd.data.scenes import SCENE_TASK
from mgsd.models.backbone import Backbone
from mgsd.models.context import Context
from mgsd.train import objectives as obj
from mgsd.train.batches import encode_student, micro_batches
from mgsd.train.config import TrainConfig
from mgsd.train.dense import DenseHead, VisualTap, scene_token_labels, visual_module
from mgsd.train.examples import Example
from mgsd.train.grounding import AttentionTap, grid_size, grounding_loss, token_cells

Dense = tuple[DenseHead, VisualTap]


def make_dense(cfg: TrainConfig, bb: Backbone, device: torch.device | str) -> Dense | None:
    """The dense head and the tap on the vision tower it reads, when ``dense_weight`` asks for them."""
    if cfg.dense_weight <= 0:
        return None
    if cfg.objective != "pretrain":
        raise ValueError("dense_weight is for the pretrain objective (scene images) only")
    head = DenseHead(int(bb.model.config.text_config.hidden_size)).to(device)
    return head, VisualTap(visual_module(bb.model))


def make_grounding(cfg: TrainConfig, bb: Backbone) -> AttentionTap | None:
    """The attention tap on the grounded layers, when ``grounding_weight`` asks for it."""
    if cfg.grounding_weight <= 0:
        return None
    bb.model.set_attn_implementation("eager")  # the only one that returns the weights
    return AttentionTap(bb.model, cfg.grounding_layers)


def sft_step(
    bb: Backbone,
    cfg: TrainConfig,
    exs: list[Example],
    sum_all: Callable[[float], float],
    dense: Dense | None = None,
    grounding: AttentionTap | None = None,
    *,
    weight: float = 1.0,
    sync: Callable[[bool], AbstractContextManager[object]] = lambda _last: nullcontext(),
) -> dict[str, float]:
    """Cross-entropy on the target tokens, normalised by the global number of target tokens; the
    gradients of every micro-batch (scaled by ``weight``, for an auxiliary use) accumulate in the
    parameters. ``sync(last)`` is each micro-batch's context, forward and backward (the engine's: DDP
    all-reduces on the last micro-batch only). Returns the step's logs (unscaled)."""
    targets = [bb.encode_responses([e.target or ""], add_eos=not e.open_end)[0] for e in exs]
    n_tokens = sum_all(float(sum(len(t) for t in targets)))
    n_images = sum_all(float(sum(e.image is not None for e in exs)))
    loss_sum, dense_acc, grounded = 0.0, [], []
    chunks = micro_batches(len(exs), cfg.micro_batch_size, exs)
    for j, idx in enumerate(chunks):
        # The forward too: DDP decides in its forward whether the backward all-reduces.
        with sync(j == len(chunks) - 1):
            ctx = encode_student(bb, [exs[i] for i in idx])
            lp, mask = bb.token_logprobs(
                ctx, [targets[i] for i in idx], grad=True, logit_chunk=cfg.logit_chunk
            )
            loss = -obj.masked_mean(lp, mask, n_tokens)
            weights = grounding.take() if grounding is not None else None
            if dense is not None and exs[idx[0]].image is not None:
                d, acc = dense_loss(bb, dense, [exs[i] for i in idx], ctx)
                loss = loss + cfg.dense_weight * d * len(idx) / n_images
                dense_acc.append(acc)
            if weights is not None and exs[idx[0]].image is not None:
                ground = attention_loss(bb, [exs[i] for i in idx], [targets[i] for i in idx], ctx, weights)
                if ground is not None:
                    loss = loss + cfg.grounding_weight * ground * len(idx) / n_images
                    grounded.append(float(ground.detach()))
            (loss * weight if weight != 1.0 else loss).backward()
        loss_sum += float(loss.detach()) * n_tokens
    logs = {"loss": sum_all(loss_sum) / n_tokens, "target_tokens": n_tokens}
    if grounded:
        logs["grounding_loss"] = sum(grounded) / len(grounded)
    for name in {k for a in dense_acc for k in a}:
        vals = [a[name] for a in dense_acc if name in a]
        logs[f"dense_{name}_acc"] = sum(vals) / len(vals)
    return logs


def _merge(bb: Backbone) -> int:
    """Vision patches per merged visual token, along each side."""
    return int(getattr(bb.model.config.vision_config, "spatial_merge_size", 2))


def dense_loss(
    bb: Backbone, dense: Dense, exs: Sequence[Example], ctx: Context
) -> tuple[torch.Tensor, dict[str, float]]:
    """The dense grounding loss of one image micro-batch (scene images only)."""
    head, tap = dense
    merge = _merge(bb)
    grids = ctx.extras["image_grid_thw"].tolist()
    labels = []
    for e, (_, h, w) in zip(exs, grids, strict=True):
        if e.task != SCENE_TASK:
            raise ValueError(f"dense grounding needs scene images, got {e.id}")
        labels.append(scene_token_labels(json.loads(e.state), h // merge, w // merge))
    tokens = tap.take()
    target = torch.cat(labels).to(tokens.device)
    if tokens.shape[0] != target.shape[0]:
        raise RuntimeError(f"{tokens.shape[0]} visual tokens but {target.shape[0]} dense labels")
    return head.loss(tokens, target)


def attention_loss(
    bb: Backbone,
    exs: Sequence[Example],
    targets: Sequence[list[int]],
    ctx: Context,
    weights: list[torch.Tensor],
) -> torch.Tensor | None:
    """The attention grounding loss of one image micro-batch (train/grounding.py)."""
    merge = _merge(bb)
    cells, grids = [], []
    for e, ids, (_, h, w) in zip(exs, targets, ctx.extras["image_grid_thw"].tolist(), strict=True):
        size = grid_size(e.target or "")
        if size is None and e.task == SCENE_TASK:  # a scene question's answer has no size line
            n = int(json.loads(e.state)["size"])
            size = (n, n)
        named = token_cells([bb.decode([t], skip_special_tokens=False) for t in ids])
        cells.append(named if size else [])
        grids.append((h // merge, w // merge, *(size or (0, 0))))
    loss, _ = grounding_loss(weights, ctx.input_ids, bb.image_token_id, ctx.input_ids.shape[1], cells, grids)
    return loss
