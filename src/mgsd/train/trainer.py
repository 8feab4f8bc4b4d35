"""The one training loop every objective uses (SFT stages and on-policy self-distillation).

Read ``Trainer.run`` top to bottom: per optimizer step it takes the step's slice of a seeded global
batch, computes the objective over micro-batches with gradients accumulated, sums gradients over
processes (through the launch's engine, train/engines.py: one process, DDP or FSDP2), clips, steps
AdamW on fp32 master weights, logs, validates and checkpoints. The SFT step
is train/sft.py; the stage-2 step, ``Trainer._opsd_step``, is here, its teachers in
train/teachers.py and its losses in ``objectives.STAGE2_LOSSES``.

Determinism: the data order is a seeded permutation per epoch and every random draw of step ``s``
(sampling, dropout) comes from a generator seeded with ``(seed, s, rank)``; so a resumed run replays
exactly what an uninterrupted one would have done. Losses are normalised by the number of target
tokens of the whole global batch (all processes, all micro-batches), so N processes and one process
compute the same gradient.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mgsd.config import to_dict
from mgsd.data.io import read_rows
from mgsd.data.scenes import QUESTION_KINDS
from mgsd.files import write_json
from mgsd.models.backbone import Backbone
from mgsd.models.logprobs import TokenLogProbs, logprob_gap
from mgsd.train import objectives as obj
from mgsd.train.batches import (
    BatchOrder,
    epoch_order,
    local_share,
    micro_batches,
    spread,
    step_seed,
)
from mgsd.train.checkpoint import check_engine, latest_checkpoint, load_checkpoint, save_checkpoint
from mgsd.train.config import TrainConfig
from mgsd.train.engines import Engine, full
from mgsd.train.examples import Example, build_examples, perception_twin
from mgsd.train.optim import build_optimizer, learning_rate, sync_gradients
from mgsd.train.resume import check_resume, fingerprint
from mgsd.train.rollouts import rollout, rollout_logs
from mgsd.train.run_log import RunLog, check_trackers
from mgsd.train.sft import make_dense, make_grounding, sft_step
from mgsd.train.teachers import Teacher, make_teacher
from mgsd.train.validation import VAL_OBJECTIVE, validate

__all__ = ["Trainer", "TrainingError", "epoch_order", "step_seed", "train"]

_TRAIN_COLUMNS = ["id", "task", "level", "state", "image", "optimal_plan", "optimal_length"]


class TrainingError(ValueError):
    """Training cannot go on (a non-finite loss, gradient or weight); nothing was saved from it."""


class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: bool = False) -> None:

        for key, what in (("model", "a model directory or hub id"), ("out", "the run directory")):
            if not getattr(cfg, key):
                raise ValueError(f"config: {key} is required ({what})")
        if not cfg.train_data:
            raise ValueError("config: train_data is required (one or more dataset directories)")
        check_trackers(cfg.trackers)
        self.cfg = cfg
        self.engine = Engine(cfg)
        self.acc, self.rank, self.world = self.engine.acc, self.engine.rank, self.engine.world
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {self.world} processes")
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        if latest_checkpoint(self.ckpt_dir) and not resume:
            raise ValueError(f"{self.out} already has checkpoints: pass --resume or choose another --out")
        torch.manual_seed(cfg.seed)

        self.bb = self._load_student()
        self.engine.wrap(self.bb)  # before the parameters are read: FSDP2 replaces them by shards
        self.params = {n: p for n, p in self.bb.model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("nothing to train: every parameter is frozen")
        self.teacher: Teacher | None = None
        if cfg.objective == "opsd":
            self.teacher = make_teacher(cfg, self.bb, self.acc.device, weights=self.engine.reads_weights)
        self.engine.wrap_teacher(self.teacher, self.bb)
        self.dense = make_dense(cfg, self.bb, self.acc.device)
        if (
            self.dense is not None
        ):  # in self.params so that checkpoints and resume carry it; never saved in the model
            self.params |= {f"dense_head.{n}": p for n, p in self.dense[0].named_parameters()}
        # Gradients the engine does not reduce (the dense head lives outside the model) are summed
        # by hand; with one process there is nothing to sum.
        self.hand_synced = {k: p for k, p in self.params.items() if k.startswith("dense_head.")}
        self.grounding = make_grounding(cfg, self.bb)
        self._load_data()
        self.opt = build_optimizer(self.params, cfg.optim)
        self.step = 0
        self.best: float | None = None
        self._fingerprint: dict[str, Any] | None = None
        if resume and (ck := latest_checkpoint(self.ckpt_dir)):
            check_resume(ck, cfg, self.fingerprint())
            check_engine(ck, self.engine.describe())
            rank = self.rank if self.engine.sharded else None
            state, extra = load_checkpoint(ck, params=self.params, optimizer=self.opt, rank=rank)
            self.step, self.best = int(state["step"]), state.get("best")
            if self.teacher is not None:
                self.teacher.load_state(extra)
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        self.log = RunLog(self.out, acc=self.acc, step=self.step, config=to_dict(cfg))
        if self.acc.is_main_process:
            write_json(to_dict(cfg), self.out / "config.json")

    def _load_student(self) -> Backbone:
        """The policy in fp32 master weights, with a LoRA adapter (new, or carried by the model
        directory) or fully trainable."""
        cfg = self.cfg
        bb = Backbone.load(
            cfg.model,
            dtype="float32",
            compute_dtype=cfg.compute_dtype,
            trust_remote_code=cfg.trust_remote_code,
            device=self.acc.device,
            weights=self.engine.reads_weights,
        )
        if bb.has_lora:
            pass  # the model directory carries an adapter (e.g. stage 1 saved unmerged): keep training it
        elif cfg.lora.r > 0:
            targets: Any = cfg.lora.targets
            if "," in targets:
                targets = [t.strip() for t in targets.split(",") if t.strip()]
            bb.add_lora(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, targets, cfg.lora.train_vision)
        else:
            bb.model.requires_grad_(True)
            bb.set_vision_trainable(cfg.lora.train_vision)
        if bb.has_lora and cfg.lora.full_vision:
            bb.set_vision_trainable(True)
        if cfg.gradient_checkpointing:
            bb.enable_gradient_checkpointing()
        return bb

    def _load_data(self) -> None:
        """The training examples and their batch order, the validation examples, the step count."""
        cfg = self.cfg
        rows = read_rows(cfg.train_data, columns=_TRAIN_COLUMNS)
        self.train = build_examples(
            rows,
            cfg.objective,
            privileged=cfg.opsd.privileged,
            replay_symbolic=cfg.replay_symbolic,
            facts_under_plan_prompt=cfg.facts_under_plan_prompt,
            scene_questions=cfg.scene_questions,
            question_kinds=cfg.question_kinds or QUESTION_KINDS,
        )
        if not self.train:
            raise ValueError("the training data is empty")
        self.batches = BatchOrder(
            self.train,
            seed=cfg.seed,
            objective=cfg.objective,
            batch_size=cfg.batch_size,
            balance_tasks=cfg.balance_tasks,
            task_weights=cfg.task_weights,
        )
        val_rows = read_rows(cfg.val_data, columns=_TRAIN_COLUMNS) if cfg.val_data else []
        val_objective = VAL_OBJECTIVE.get(cfg.objective, cfg.objective)
        self.val = build_examples(spread(val_rows, cfg.val_samples), val_objective, teacher_prompts=False)
        steps_per_epoch = max(1, self.batches.epoch_len // cfg.batch_size)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

    # ------------------------------------------------------------------ objectives
    def _sft_step(self, exs: list[Example]) -> dict[str, float]:
        sync = self.engine.backward_sync
        return sft_step(self.bb, self.cfg, exs, self.engine.sum_all, self.dense, self.grounding, sync=sync)

    def _opsd_step(self, exs: list[Example]) -> dict[str, float]:
        """On-policy self-distillation: the student samples from the image; the teacher scores those
        same tokens from the privileged symbolic text; the student follows the loss ``opsd.loss``
        names in ``objectives.STAGE2_LOSSES`` (by default the per-token advantage
        ``log p_teacher - log p_student``; or the full / top-k reverse KL, or generalised JSD)."""
        c, chunk, teacher = self.cfg.opsd, self.cfg.logit_chunk, self.teacher
        assert teacher is not None
        loss_fn = obj.STAGE2_LOSSES[c.loss]
        full = loss_fn.vocabulary  # the teacher returns whole distributions, not only sampled tokens
        ro = rollout(self.bb, c, [e for e in exs for _ in range(c.rollouts_per_prompt)])
        n_tokens = self.engine.sum_all(float(sum(len(r) for r in ro.responses)))
        global_success = self.engine.sum_all(float(ro.success.sum())) / self.engine.sum_all(
            float(len(ro.responses))
        )
        chunks = [
            (idx, [ro.responses[i] for i in idx])
            for idx in micro_batches(len(ro.responses), self.cfg.micro_batch_size)
        ]
        # The student's log-probs at sampling time (for a reused rollout) and the teacher's, once.
        old: list[torch.Tensor | None] = []
        teach: list[TokenLogProbs] = []
        for idx, rs in chunks:
            if c.updates_per_rollout > 1:
                old.append(self.bb.token_logprobs(ro.student.select(idx), rs, logit_chunk=chunk).logprobs)
            else:
                old.append(None)
            teach.append(teacher.logprobs(ro.teacher.select(idx), rs, full))
        stats = {"reverse_kl": 0.0, "teacher_logp": 0.0, "student_logp": 0.0}
        for update in range(c.updates_per_rollout):
            for j, ((idx, rs), old_lp, t) in enumerate(zip(chunks, old, teach, strict=True)):
                last = (update, j) == (c.updates_per_rollout - 1, len(chunks) - 1) and not c.perception_replay
                with self.engine.backward_sync(last):  # around the forward: DDP decides there
                    new = self.bb.token_logprobs(
                        ro.student.select(idx), rs, grad=True, full_vocab=full, logit_chunk=chunk
                    )
                    batch = obj.Stage2Batch(new, t, old_lp, ro.success[idx] - global_success, n_tokens, chunk)
                    # A chunked vocabulary loss runs the head under autocast, as lm_head would.
                    with self.bb.autocast() if full and chunk else nullcontext():
                        loss = loss_fn.fn(batch, c)
                    (loss / c.updates_per_rollout).backward()
                    if update == 0:
                        gap = logprob_gap(
                            new, t
                        ).detach()  # also checks the pair: same ids, template, vocabulary
                        stats["reverse_kl"] += float(gap.sum())
                        stats["teacher_logp"] += float((t.logprobs * new.mask).sum())
                        stats["student_logp"] += float((new.logprobs.detach() * new.mask).sum())
        logs = rollout_logs(stats, n_tokens, ro, self.engine.sum_all)
        if c.perception_replay > 0:  # not in the paper: see OPSDConfig.perception_replay
            twins = [perception_twin(e) for e in exs]
            sync, w = self.engine.backward_sync, c.perception_replay
            replay = sft_step(self.bb, self.cfg, twins, self.engine.sum_all, weight=w, sync=sync)
            logs["perception_replay_loss"] = replay["loss"]  # "loss" stays the reverse KL
        return logs

    # ------------------------------------------------------------------ the loop
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
            exs = local_share(self.batches.global_batch(step), self.rank, self.world)
            logs = self._opsd_step(exs) if cfg.objective == "opsd" else self._sft_step(exs)
            lr, grad_norm = self._optimizer_step(step, logs["loss"])
            if self.teacher is not None:
                self.teacher.update(self.params)  # the EMA follows the student; the others stay
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
        return self._finish(last)

    def _optimizer_step(self, step: int, loss: float) -> tuple[float, float]:
        """Sum, check and clip the gradients, step AdamW, clear the gradients; ``(lr, grad norm)``."""
        cfg = self.cfg
        sync_gradients(self.params if self.engine.name == "single" else self.hand_synced, self.world)
        # The norm is always computed (clipping by inf scales by 1): a NaN or inf gradient stops
        # the run before AdamW writes it into the weights.
        max_norm = cfg.optim.max_grad_norm or math.inf
        grad_norm = self.engine.grad_norm(list(self.params.values()), max_norm)
        self._check_finite(step, loss, grad_norm)
        lr = learning_rate(cfg.optim, step, self.total_steps)
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
        return lr, grad_norm

    def _finish(self, last: dict[str, Any]) -> dict[str, Any]:
        """The final validation, the saved model and summary.json; the last metrics."""
        final = self._validate() if self.val else {}
        if final:
            self._log({"step": self.step, **final})
        self._assert_finite_weights()
        self.engine.save_model(self.bb, self.out / "model", self.cfg.save_merged)
        if self.acc.is_main_process:
            summary = {"steps": self.step, "final": last, "validation": final, "best": self.best}
            write_json(summary, self.out / "summary.json")
        self.close()
        return last | final

    # ------------------------------------------------------------------ validation, logs, checkpoints
    def fingerprint(self) -> dict[str, Any]:
        """The content of the data and the model the weights depend on (train/resume.py)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.cfg)
        return self._fingerprint

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
        bad = self.engine.all_finite(self.params)
        if bad is not None:
            self.close()
            raise TrainingError(
                f"weight {bad} is not finite at step {self.step}: stopped without saving (lower optim.lr)"
            )

    def _validate(self) -> dict[str, float]:
        """Validation metrics (train/validation.py); a new best is saved under ``best/``."""
        if not self.val:
            return {}
        cfg = self.cfg
        value, result = validate(
            self.bb, self.val, cfg.objective, cfg.micro_batch_size, cfg.opsd.max_new_tokens
        )
        if self.best is None or value > self.best:  # every rank sees the same value: all save (FSDP2
            self._assert_finite_weights()  # gathers) or stop together
            self.best = value
            self.engine.save_model(self.bb, self.out / "best", cfg.save_merged)
        return result

    def _log(self, record: dict[str, Any]) -> None:
        self.log.write(record)

    def _checkpoint(self) -> None:
        self._assert_finite_weights()
        sharded = self.engine.sharded
        # Sharded: every rank gathers the whole weights (collective) and writes its optimizer shard.
        weights = {k: full(p.detach()) for k, p in self.params.items()} if sharded else None
        if self.acc.is_main_process or sharded:
            save_checkpoint(
                self.ckpt_dir,
                self.step,
                params=self.params,
                optimizer=self.opt,
                state={"best": self.best, "config": to_dict(self.cfg), "fingerprint": self.fingerprint()},
                extra=self.teacher.state() if self.teacher is not None else None,
                keep_last=self.cfg.keep_last,
                weights=weights,
                engine=self.engine.describe(),
            )
        self.acc.wait_for_everyone()

    def close(self) -> None:
        if self.grounding is not None:
            self.grounding.close()
        self.log.close()
        self.acc.wait_for_everyone()
        self.acc.end_training()
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run one training job; returns the last logged metrics."""
    return Trainer(cfg, resume=resume).run()
