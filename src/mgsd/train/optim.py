"""The optimizer side of a step: AdamW groups, the learning-rate schedule, the gradient all-reduce."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.distributed as dist

from mgsd.models import lora as lora_lib
from mgsd.train.config import OptimConfig


def build_optimizer(params: Mapping[str, torch.nn.Parameter], o: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; fully trained vision weights (not LoRA's) get their own
    group whose lr is scaled by ``vision_lr_scale`` (``lr_scale`` in each group)."""
    vision = [p for n, p in params.items() if lora_lib.is_vision(n) and "lora_" not in n]
    ids = {id(p) for p in vision}
    groups = [{"params": [p for p in params.values() if id(p) not in ids], "lr_scale": 1.0}]
    if vision:
        groups.append({"params": vision, "lr_scale": o.vision_lr_scale})
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def learning_rate(o: OptimConfig, step: int, total: int) -> float:
    """Linear warmup over ``warmup_ratio`` of the steps, then cosine, linear or constant."""
    warm = int(o.warmup_ratio * total)
    if step < warm:
        return o.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if o.schedule == "cosine":
        return o.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if o.schedule == "linear":
        return o.lr * (1 - progress)
    return o.lr


def sync_gradients(params: Mapping[str, torch.nn.Parameter], world: int) -> None:
    """Sum gradients over processes (each rank's loss is already a share of the global mean)."""
    if world == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params.values()]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    # Each grad becomes a disjoint view of the freshly allocated ``flat`` (no copy): clipping and
    # AdamW only read or scale them in place, and zero_grad(set_to_none=True) drops them every step.
    offset = 0
    for p, g in zip(params.values(), grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p)
        offset += n
