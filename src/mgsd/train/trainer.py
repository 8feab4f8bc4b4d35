"""The one training loop every objective uses (SFT stages and on-policy self-distillation).

Read ``Trainer.run`` top to bottom: per optimizer step it takes the step's slice of a seeded global
batch, computes the objective over micro-batches with gradients accumulated, sums gradients over
processes, clips, steps AdamW on fp32 master weights, logs, validates and checkpoints.

Determinism: the data order is a seeded permutation per epoch and every random draw of step ``s``
(sampling, dropout) comes from a generator seeded with ``(seed, s, rank)``; so a resumed run replays
exactly what an uninterrupted one would have done. Losses are normalised by the number of target
tokens of the whole global batch (all processes, all micro-batches), so N processes and one process
compute the same gradient.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
import zlib
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mgsd.config import changed_keys, to_dict
from mgsd.data.io import parquet_files, read_rows, tree_fingerprint
from mgsd.data.scenes import SCENE_TASK
from mgsd.files import jsonl_lines, write_json, write_text
from mgsd.models import lora as lora_lib
from mgsd.models.backbone import Backbone
from mgsd.models.context import Context
from mgsd.models.logprobs import logprob_gap
from mgsd.scoring.aggregate import aggregate
from mgsd.scoring.perception import score_perception
from mgsd.scoring.plans import score_response
from mgsd.tasks import get_task
from mgsd.train import objectives as obj
from mgsd.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mgsd.train.config import TrainConfig
from mgsd.train.dense import DenseHead, VisualTap, scene_token_labels, visual_module
from mgsd.train.examples import Example, build_examples
from mgsd.train.grounding import AttentionTap, grid_size, grounding_loss, token_cells

_TRAIN_COLUMNS = ["id", "task", "level", "state", "image", "optimal_plan", "optimal_length"]
# Settings a resumed run may change: where it writes, how it reports, and when it checkpoints.
# Everything else (lr, objective, data, model, steps...) shapes the weights, so a change refuses.
RESUME_EXEMPT = ("out", "progress", "log_every", "eval_every", "val_samples", "save_every", "keep_last")


class TrainingError(ValueError):
    """Training cannot go on (a non-finite loss, gradient or weight); nothing was saved from it."""


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


def _spread(rows: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """At most ``n`` rows, tasks taking turns (a file-order prefix would be all FrozenLake)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    turns = itertools.chain.from_iterable(itertools.zip_longest(*by_task.values()))
    return [r for r in turns if r is not None][:n]


class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: bool = False) -> None:
        from accelerate import Accelerator

        if not cfg.model:
            raise ValueError("config: model is required (a model directory or hub id)")
        if not cfg.out:
            raise ValueError("config: out is required (the run directory)")
        if not cfg.train_data:
            raise ValueError("config: train_data is required (one or more dataset directories)")
        self.cfg = cfg
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {self.world} processes")
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        if latest_checkpoint(self.ckpt_dir) and not resume:
            raise ValueError(f"{self.out} already has checkpoints: pass --resume or choose another --out")
        torch.manual_seed(cfg.seed)

        self.bb = Backbone.load(
            cfg.model,
            dtype="float32",
            compute_dtype=cfg.compute_dtype,
            trust_remote_code=cfg.trust_remote_code,
            device=self.acc.device,
        )
        if self.bb.has_lora:
            pass  # the model directory carries an adapter (e.g. stage 1 saved unmerged): keep training it
        elif cfg.lora.r > 0:
            targets: Any = cfg.lora.targets
            if "," in targets:
                targets = [t.strip() for t in targets.split(",") if t.strip()]
            self.bb.add_lora(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, targets, cfg.lora.train_vision)
        else:
            self.bb.model.requires_grad_(True)
            self.bb.set_vision_trainable(cfg.lora.train_vision)
        if self.bb.has_lora and cfg.lora.full_vision:
            self.bb.set_vision_trainable(True)
        self.params = {n: p for n, p in self.bb.model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("nothing to train: every parameter is frozen")
        self.teacher = self._make_teacher() if cfg.objective == "opsd" else None
        self.dense: tuple[DenseHead, VisualTap] | None = None
        if cfg.dense_weight > 0:
            if cfg.objective != "pretrain":
                raise ValueError("dense_weight is for the pretrain objective (scene images) only")
            head = DenseHead(int(self.bb.model.config.text_config.hidden_size)).to(self.acc.device)
            self.dense = (head, VisualTap(visual_module(self.bb.model)))
            # In self.params so that checkpoints and resume carry it; never part of the saved model.
            self.params |= {f"dense_head.{n}": p for n, p in head.named_parameters()}
        self.grounding: AttentionTap | None = None
        if cfg.grounding_weight > 0:
            self.bb.model.set_attn_implementation("eager")  # the only one that returns the weights
            self.grounding = AttentionTap(self.bb.model, cfg.grounding_layers)

        rows = read_rows(cfg.train_data, columns=_TRAIN_COLUMNS)
        self.train = build_examples(
            rows,
            cfg.objective,
            privileged=cfg.opsd.privileged,
            replay_symbolic=cfg.replay_symbolic,
            scene_questions=cfg.scene_questions,
        )
        if not self.train:
            raise ValueError("the training data is empty")
        self._task_index: dict[str, list[int]] = {}
        for i, e in enumerate(self.train):
            self._task_index.setdefault(e.task, []).append(i)
        unknown = set(cfg.task_weights) - set(self._task_index)
        if unknown:
            raise ValueError(f"task_weights names tasks not in the training data: {sorted(unknown)}")
        self._weights = [int(cfg.task_weights.get(t, 1)) for t in self._task_index]
        self._epoch_len = (
            max(math.ceil(len(v) / k) for v, k in zip(self._task_index.values(), self._weights, strict=True))
            * sum(self._weights)
            if cfg.balance_tasks
            else len(self.train)
        )
        self._order_cache: tuple[int, list[int]] | None = None
        val_rows = read_rows(cfg.val_data, columns=_TRAIN_COLUMNS) if cfg.val_data else []
        val_objective = {"opsd": "plan", "pretrain": "symbolic"}.get(cfg.objective, cfg.objective)
        self.val = build_examples(_spread(val_rows, cfg.val_samples), val_objective, teacher_prompts=False)

        steps_per_epoch = max(1, self._epoch_len // cfg.batch_size)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        o = cfg.optim
        vision = [p for n, p in self.params.items() if lora_lib.is_vision(n) and "lora_" not in n]
        ids = {id(p) for p in vision}
        groups = [{"params": [p for p in self.params.values() if id(p) not in ids], "lr_scale": 1.0}]
        if vision:
            groups.append({"params": vision, "lr_scale": o.vision_lr_scale})
        groups = [g for g in groups if g["params"]]
        self.opt = torch.optim.AdamW(
            groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.step = 0
        self.best: float | None = None
        self._fingerprint: dict[str, Any] | None = None
        if resume and (ck := latest_checkpoint(self.ckpt_dir)):
            self._check_resume(ck)
            state, extra = load_checkpoint(ck, params=self.params, optimizer=self.opt)
            self.step, self.best = int(state["step"]), state.get("best")
            if self.teacher is not None and extra and self.cfg.opsd.teacher == "ema":
                self._ema_load(extra)
        self.log_path = self.out / "log.jsonl"
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            self._truncate_log()
            write_json(to_dict(cfg), self.out / "config.json")
        self.writer = self._tensorboard()

    # ------------------------------------------------------------------ teacher (OPSD)
    def _make_teacher(self) -> Backbone | str:
        """The privileged teacher: ``"adapter-off"`` (the base under the LoRA), ``"live"`` (the policy
        itself), or a separate frozen Backbone (another path, the student's init, or an EMA)."""
        kind, cfg = self.cfg.opsd.teacher, self.cfg
        if kind == "live":
            return "live"
        if kind == "base":
            if not self.bb.has_lora:
                raise ValueError(
                    "opsd.teacher=base disables the student's LoRA adapter, but there is none: "
                    "use lora.r > 0, or teacher=init / teacher=path"
                )
            return "adapter-off"  # one copy of the weights: the base is the student with LoRA disabled
        if kind == "ema" and self.bb.has_lora:
            raise ValueError("opsd.teacher=ema needs full fine-tuning (lora.r = 0)")
        path = cfg.opsd.teacher_path if kind == "path" else cfg.model
        if kind == "path" and not path:
            raise ValueError("opsd.teacher=path needs opsd.teacher_path")
        teacher = Backbone.load(
            path,
            # A frozen teacher has no small updates to protect: store it in the compute dtype. The EMA
            # teacher does receive small updates, so it keeps fp32 like the student's master weights.
            dtype="float32" if kind == "ema" else cfg.compute_dtype,
            compute_dtype=cfg.compute_dtype,
            trust_remote_code=cfg.trust_remote_code,
            device=self.acc.device,
        ).freeze()
        if teacher.tokenizer_id != self.bb.tokenizer_id:
            raise ValueError("the teacher's tokenizer differs from the student's: it cannot score its tokens")
        return teacher

    def _teacher_logprobs(self, ctx: Context, responses: list[list[int]], full: bool) -> Any:
        t = self.teacher
        assert t in ("adapter-off", "live") or isinstance(t, Backbone)
        scorer = t if isinstance(t, Backbone) else self.bb  # "live": the policy scores its own tokens
        with self.bb.teacher() if t == "adapter-off" else nullcontext():
            return scorer.token_logprobs(ctx, responses, full_vocab=full, logit_chunk=self.cfg.logit_chunk)

    def _ema_update(self) -> None:
        assert isinstance(self.teacher, Backbone)
        d = self.cfg.opsd.ema_decay
        teacher_params = dict(self.teacher.model.named_parameters())
        with torch.no_grad():
            for name, p in self.params.items():
                teacher_params[name].mul_(d).add_(p.detach(), alpha=1 - d)

    def _ema_load(self, extra: dict[str, torch.Tensor]) -> None:
        assert isinstance(self.teacher, Backbone)
        teacher_params = dict(self.teacher.model.named_parameters())
        with torch.no_grad():
            for name, value in extra.items():
                if name.startswith("ema::") and name[5:] in teacher_params:
                    teacher_params[name[5:]].copy_(value)

    # ------------------------------------------------------------------ data
    def _global_batch(self, step: int) -> list[Example]:
        """The examples of global batch ``step``: consecutive slices of the per-epoch order."""
        bsz = self.cfg.batch_size
        out: list[Example] = []
        pos = step * bsz
        while len(out) < bsz:
            order = self._epoch_order(pos // self._epoch_len)
            offset = pos % self._epoch_len
            take = min(bsz - len(out), self._epoch_len - offset)
            out += [self.train[i] for i in order[offset : offset + take]]
            pos += take
        return out

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self._order_cache or self._order_cache[0] != epoch:
            key = f"{self.cfg.seed}/{self.cfg.objective}/{epoch}"
            groups = list(self._task_index.values()) if self.cfg.balance_tasks else None
            self._order_cache = (
                epoch,
                epoch_order(len(self.train), key, groups, self._weights if groups else None),
            )
        return self._order_cache[1]

    def _local(self, batch: Sequence[Example]) -> list[Example]:
        per = len(batch) // self.world
        return list(batch[self.rank * per : (self.rank + 1) * per])

    def _encode_student(self, exs: Sequence[Example]) -> Context:
        if all(e.image is not None for e in exs):
            return self.bb.encode_student([e.prompt for e in exs], [e.pil_image() for e in exs])
        if any(e.image is not None for e in exs):
            raise ValueError("a batch mixes image and text-only examples")
        # teacher_messages(None, text) is student_messages(text, "end", 0): no system turn when empty
        return self.bb.encode_teacher([e.system or None for e in exs], [e.prompt for e in exs])

    def _chunks(self, n: int, exs: Sequence[Example] | None = None) -> list[list[int]]:
        """Micro-batches of at most ``micro_batch_size``; with ``exs``, image and text-only examples
        go to separate micro-batches (one forward cannot mix them), each keeping its order."""
        m = self.cfg.micro_batch_size
        groups = [list(range(n))]
        if exs is not None:
            groups = [[i for i in range(n) if (exs[i].image is None) == text] for text in (False, True)]
        return [g[i : i + m] for g in groups for i in range(0, len(g), m)]

    def _sum_all(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.acc.device)
        dist.all_reduce(t)
        return float(t.item())

    # ------------------------------------------------------------------ objectives
    def _sft_step(self, exs: list[Example]) -> dict[str, float]:
        """Cross-entropy on the target tokens, normalised by the global number of target tokens."""
        targets = self.bb.encode_responses([e.target or "" for e in exs])
        n_tokens = self._sum_all(float(sum(len(t) for t in targets)))
        n_images = self._sum_all(float(sum(e.image is not None for e in exs)))
        loss_sum, dense_acc, grounded = 0.0, [], []
        for idx in self._chunks(len(exs), exs):
            ctx = self._encode_student([exs[i] for i in idx])
            lp, mask = self.bb.token_logprobs(
                ctx, [targets[i] for i in idx], grad=True, logit_chunk=self.cfg.logit_chunk
            )
            loss = -obj.masked_mean(lp, mask, n_tokens)
            weights = self.grounding.take() if self.grounding is not None else None
            if self.dense is not None and exs[idx[0]].image is not None:
                dense, acc = self._dense_loss([exs[i] for i in idx], ctx)
                loss = loss + self.cfg.dense_weight * dense * len(idx) / n_images
                dense_acc.append(acc)
            if weights is not None and exs[idx[0]].image is not None:
                ground = self._grounding_loss([exs[i] for i in idx], [targets[i] for i in idx], ctx, weights)
                if ground is not None:
                    loss = loss + self.cfg.grounding_weight * ground * len(idx) / n_images
                    grounded.append(float(ground.detach()))
            loss.backward()
            loss_sum += float(loss.detach()) * n_tokens
        logs = {"loss": self._sum_all(loss_sum) / n_tokens, "target_tokens": n_tokens}
        if grounded:
            logs["grounding_loss"] = sum(grounded) / len(grounded)
        for name in {k for a in dense_acc for k in a}:
            vals = [a[name] for a in dense_acc if name in a]
            logs[f"dense_{name}_acc"] = sum(vals) / len(vals)
        return logs

    def _dense_loss(self, exs: Sequence[Example], ctx: Context) -> tuple[torch.Tensor, dict[str, float]]:
        """The dense grounding loss of one image micro-batch (scene images only)."""
        assert self.dense is not None
        head, tap = self.dense
        merge = int(getattr(self.bb.model.config.vision_config, "spatial_merge_size", 2))
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

    def _grounding_loss(
        self, exs: Sequence[Example], targets: Sequence[list[int]], ctx: Context, weights: list[torch.Tensor]
    ) -> torch.Tensor | None:
        """The attention grounding loss of one image micro-batch (train/grounding.py)."""
        merge = int(getattr(self.bb.model.config.vision_config, "spatial_merge_size", 2))
        cells, grids = [], []
        for e, ids, (_, h, w) in zip(exs, targets, ctx.extras["image_grid_thw"].tolist(), strict=True):
            size = grid_size(e.target or "")
            if size is None and e.task == SCENE_TASK:  # a scene question's answer has no size line
                n = int(json.loads(e.state)["size"])
                size = (n, n)
            named = token_cells([self.bb.decode([t], skip_special_tokens=False) for t in ids])
            cells.append(named if size else [])
            grids.append((h // merge, w // merge, *(size or (0, 0))))
        loss, _ = grounding_loss(
            weights, ctx.input_ids, self.bb.image_token_id, ctx.input_ids.shape[1], cells, grids
        )
        return loss

    def _opsd_step(self, exs: list[Example]) -> dict[str, float]:
        """On-policy self-distillation: the student samples from the image; the teacher scores those
        same tokens from the privileged symbolic text; the student follows the per-token advantage
        ``log p_teacher - log p_student`` (or the full / top-k reverse KL, or generalised JSD)."""
        c, chunk = self.cfg.opsd, self.cfg.logit_chunk
        exs = [e for e in exs for _ in range(c.rollouts_per_prompt)]
        s_ctx = self._encode_student(exs)
        t0 = time.perf_counter()
        gen = self.bb.generate(
            s_ctx, max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p
        )
        gen_time = time.perf_counter() - t0
        responses = [list(s) for s in gen.sequences]
        t_ctx = self.bb.encode_teacher([e.teacher_system for e in exs], [e.teacher_prompt or "" for e in exs])
        scores = [
            score_response(
                get_task(e.task),
                get_task(e.task).load_state(e.state),
                txt,
                sample_id=e.id,
                optimal_length=e.optimal_length,
            )
            for e, txt in zip(exs, gen.texts, strict=True)
        ]
        success = torch.tensor([float(s.success) for s in scores])
        n_tokens = self._sum_all(float(sum(len(r) for r in responses)))
        global_success = self._sum_all(float(success.sum())) / self._sum_all(float(len(exs)))
        full = c.loss in ("full", "topk", "jsd")
        # Old log-probs and teacher scores once per rollout (no grad).
        old, teach = {}, {}
        for idx in self._chunks(len(exs)):
            key = tuple(idx)
            rs = [responses[i] for i in idx]
            if c.updates_per_rollout > 1:
                old[key] = self.bb.token_logprobs(s_ctx.select(idx), rs, logit_chunk=chunk).logprobs
            teach[key] = self._teacher_logprobs(t_ctx.select(idx), rs, full)
        stats = {"reverse_kl": 0.0, "teacher_logp": 0.0, "student_logp": 0.0}
        for update in range(c.updates_per_rollout):
            for idx in self._chunks(len(exs)):
                key = tuple(idx)
                rs = [responses[i] for i in idx]
                new = self.bb.token_logprobs(
                    s_ctx.select(idx), rs, grad=True, full_vocab=full, logit_chunk=chunk
                )
                mask, t = new.mask, teach[key]
                if c.loss == "sampled":
                    old_lp = old.get(key, new.logprobs.detach())
                    adv = obj.reverse_kl_advantages(t.logprobs, old_lp, mask, clip=c.adv_clip)
                    if c.reward_weight:  # centred on the global batch mean, the same on every process
                        centred = success[idx] - global_success
                        adv = adv + c.reward_weight * centred[:, None].to(adv) * mask
                    ratio_clip = c.ratio_clip if c.updates_per_rollout > 1 else None
                    loss = obj.policy_gradient_loss(
                        new.logprobs, old_lp, adv, mask, ratio_clip, denom=n_tokens
                    )
                elif chunk:  # from hidden states, under autocast so the head runs as lm_head would
                    with self.bb.autocast():
                        loss = self._chunked_vocabulary_loss(new, t, mask, n_tokens)
                elif c.loss in ("full", "topk"):
                    top_k = c.top_k if c.loss == "topk" else None
                    loss = obj.full_reverse_kl(new.full, t.full, mask, top_k=top_k, denom=n_tokens)
                else:
                    loss = obj.generalized_jsd(new.full, t.full, mask, beta=c.jsd_beta, denom=n_tokens)
                (loss / c.updates_per_rollout).backward()
                if update == 0:
                    gap = logprob_gap(new, t).detach()  # also checks the pair: same ids, template, vocabulary
                    stats["reverse_kl"] += float(gap.sum())
                    stats["teacher_logp"] += float((t.logprobs * mask).sum())
                    stats["student_logp"] += float((new.logprobs.detach() * mask).sum())
        out = {k: self._sum_all(v) / n_tokens for k, v in stats.items()}
        n = self._sum_all(float(len(exs)))
        out.update(
            rollout_success=self._sum_all(float(success.sum())) / n,
            rollout_parse_rate=self._sum_all(float(sum(not s.parse_failure for s in scores))) / n,
            response_tokens=n_tokens / n,
            gen_tokens_per_s=self._sum_all(sum(len(r) for r in responses) / max(gen_time, 1e-9)),
        )
        out["loss"] = out["reverse_kl"]
        return out

    def _chunked_vocabulary_loss(
        self, new: Any, teacher: Any, mask: torch.Tensor, n_tokens: float
    ) -> torch.Tensor:
        """The full / top-k reverse KL or the JSD, ``logit_chunk`` tokens at a time."""
        c, chunk = self.cfg.opsd, self.cfg.logit_chunk
        if c.loss == "jsd":
            return obj.chunked_jsd(new.hidden, teacher.hidden, mask, c.jsd_beta, n_tokens, chunk)
        top_k = c.top_k if c.loss == "topk" else None
        return obj.chunked_reverse_kl(new.hidden, teacher.hidden, mask, top_k, n_tokens, chunk)

    # ------------------------------------------------------------------ optimisation
    def _lr(self, step: int) -> float:
        o, total = self.cfg.optim, self.total_steps
        warm = int(o.warmup_ratio * total)
        if step < warm:
            return o.lr * (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        if o.schedule == "cosine":
            return o.lr * 0.5 * (1 + math.cos(math.pi * progress))
        if o.schedule == "linear":
            return o.lr * (1 - progress)
        return o.lr

    def _sync_gradients(self) -> None:
        """Sum gradients over processes (each rank's loss is already a share of the global mean)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params.values()]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        # Each grad becomes a disjoint view of the freshly allocated ``flat`` (no copy): clipping and
        # AdamW only read or scale them in place, and zero_grad(set_to_none=True) drops them every step.
        offset = 0
        for p, g in zip(self.params.values(), grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=f"train {cfg.objective}",
            unit="step",
            disable=not (cfg.progress and self.acc.is_main_process),
        )
        self.bb.model.train()
        last: dict[str, Any] = {}
        while self.step < self.total_steps:
            step = self.step
            seed = step_seed(cfg.seed, step, self.rank)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            t0 = time.perf_counter()
            exs = self._local(self._global_batch(step))
            logs = self._opsd_step(exs) if cfg.objective == "opsd" else self._sft_step(exs)
            self._sync_gradients()
            # The norm is always computed (clipping by inf scales by 1): a NaN or inf gradient stops
            # the run before AdamW writes it into the weights.
            max_norm = cfg.optim.max_grad_norm or math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.params.values()), max_norm))
            self._check_finite(step, logs["loss"], grad_norm)
            lr = self._lr(step)
            for group in self.opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            try:
                self.opt.step()
            except RuntimeError as exc:  # e.g. lr / bias correction overflows float32
                if "overflow" not in str(exc):
                    raise
                self.close()
                raise TrainingError(
                    f"the optimizer step overflowed at step {step + 1} ({exc}): stopped without saving "
                    "(lower optim.lr)"
                ) from None
            self.opt.zero_grad(set_to_none=True)
            if cfg.objective == "opsd" and cfg.opsd.teacher == "ema":
                self._ema_update()
            self.step = step + 1
            dt = time.perf_counter() - t0
            last = {
                "step": self.step,
                **logs,
                "lr": lr,
                "grad_norm": grad_norm,
                "step_time": dt,
                "samples_per_s": cfg.batch_size / dt,
            }
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                last.update(self._validate())
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                self._log(last)
            bar.update()
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                self._checkpoint()
        bar.close()
        final = self._validate() if self.val else {}
        if final:
            self._log({"step": self.step, **final})
        self._assert_finite_weights()
        if self.acc.is_main_process:
            self.bb.save(self.out / "model", merge_lora=cfg.save_merged)
            summary = {"steps": self.step, "final": last, "validation": final, "best": self.best}
            write_json(summary, self.out / "summary.json")
        self.close()
        return last | final

    # ------------------------------------------------------------------ validation, logs, checkpoints
    def fingerprint(self) -> dict[str, Any]:
        """What the weights depend on besides the config: the content of the training and validation
        data and of the starting model directory (a hub id is named by the config alone)."""
        if self._fingerprint is None:
            cfg = self.cfg
            fp = {"train_data": tree_fingerprint(parquet_files(cfg.train_data))}
            if cfg.val_data:
                fp["val_data"] = tree_fingerprint(parquet_files(cfg.val_data))
            if Path(cfg.model).is_dir():
                fp["model"] = tree_fingerprint(cfg.model, (".safetensors", ".json", ".txt", ".model"))
            self._fingerprint = fp
        return self._fingerprint

    def _check_resume(self, ck: Path) -> None:
        """Refuse to continue a checkpoint made with other settings or other data, naming them."""
        saved = json.loads((ck / "state.json").read_text())
        exempt = list(RESUME_EXEMPT)
        content: list[str] = []
        if "fingerprint" in saved:  # checkpoints of older versions lack it: only their config is compared
            old, new = saved["fingerprint"], self.fingerprint()
            content = [f"{k} (content changed)" for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
            # Data and a local model are compared by content, so a moved (or relative) path is fine.
            exempt += ["train_data", "val_data"] + (["model"] if "model" in old and "model" in new else [])
        changes = changed_keys(saved.get("config", {}), to_dict(self.cfg), exempt) + content
        if changes:
            shown = ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")
            raise ValueError(
                f"cannot resume {ck}: it was made with other settings: {shown}; "
                "use the original settings or another --out"
            )

    def _check_finite(self, step: int, loss: float, grad_norm: float) -> None:
        """Stop on a non-finite loss or gradient (every rank sees the same summed values)."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        value = loss if what == "loss" else grad_norm
        self.close()
        raise TrainingError(
            f"non-finite {what} ({value}) at step {step + 1}: stopped without saving this step "
            "(lower optim.lr or check the data, in a new --out)"
        )

    def _assert_finite_weights(self) -> None:
        """Never save NaN or inf weights (e.g. an lr so large that one finite step overflows)."""
        bad = next((n for n, p in self.params.items() if not bool(torch.isfinite(p.detach()).all())), None)
        if bad is not None:
            self.close()
            raise TrainingError(
                f"weight {bad} is not finite at step {self.step}: stopped without saving (lower optim.lr)"
            )

    def _validate(self) -> dict[str, float]:
        """Greedy answers on the validation examples: macro success (planning) or perception accuracy."""
        if not self.val:
            return {}
        scores, n = [], self.cfg.micro_batch_size
        for i in range(0, len(self.val), n):
            exs = self.val[i : i + n]
            gen = self.bb.generate(
                self._encode_student(exs), max_new_tokens=self.cfg.opsd.max_new_tokens, greedy=True
            )
            for e, text in zip(exs, gen.texts, strict=True):
                task = get_task(e.task)
                state = task.load_state(e.state)
                if self.cfg.objective == "perception":
                    scores.append(score_perception(task.perception(state), text)["accuracy"])
                else:
                    scores.append(
                        score_response(
                            task, state, text, sample_id=e.id, optimal_length=e.optimal_length
                        ).to_dict()
                    )
        self.bb.model.train()
        if self.cfg.objective == "perception":
            value = float(np.mean(scores))
            result = {"val_perception_accuracy": value}
        else:
            m = aggregate(scores, n_boot=1)
            value = m["macro"]["success"]
            result = {"val_success": value, "val_parse_rate": 1 - m["parse_failure"]}
        if self.best is None or value > self.best:
            self._assert_finite_weights()  # on every rank (replicas), so all stop together
        if self.acc.is_main_process and (self.best is None or value > self.best):
            self.best = value
            self.bb.save(self.out / "best", merge_lora=self.cfg.save_merged)
        return result

    def _log(self, record: dict[str, Any]) -> None:
        if not self.acc.is_main_process:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self.writer.add_scalar(k, v, record["step"])

    def _truncate_log(self) -> None:
        """On resume, drop log lines of steps after the checkpoint (they will be redone)."""
        if not self.log_path.exists():
            return
        lines = jsonl_lines(self.log_path.read_text())
        keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
        write_text(self.log_path, "".join(ln + "\n" for ln in keep))

    def _tensorboard(self) -> Any:
        if not self.acc.is_main_process:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional; log.jsonl always has everything
            return None
        return SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step or None)

    def _checkpoint(self) -> None:
        self._assert_finite_weights()
        if self.acc.is_main_process:
            extra = None
            if isinstance(self.teacher, Backbone) and self.cfg.opsd.teacher == "ema":
                extra = {f"ema::{k}": v for k, v in self.teacher.model.named_parameters()}
            save_checkpoint(
                self.ckpt_dir,
                self.step,
                params=self.params,
                optimizer=self.opt,
                state={"best": self.best, "config": to_dict(self.cfg), "fingerprint": self.fingerprint()},
                extra=extra,
                keep_last=self.cfg.keep_last,
            )
        self.acc.wait_for_everyone()

    def close(self) -> None:
        if self.grounding is not None:
            self.grounding.close()
        if self.writer is not None:
            self.writer.close()
        self.acc.wait_for_everyone()
        self.acc.end_training()
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run one training job; returns the last logged metrics."""
    return Trainer(cfg, resume=resume).run()
