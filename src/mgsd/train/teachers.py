"""Stage-2 teachers: who scores the student's sampled tokens from the privileged symbolic context.

Every teacher answers one question, ``logprobs(ctx, responses, full_vocab)``: the per-token
log-probs (and, for the vocabulary losses, the full distributions or the hidden states they come
from) of the student's own response tokens under the teacher's prompt. The kinds (``opsd.teacher``):

- ``base``: the frozen weights under the student's LoRA adapter, the adapter switched off for the
  call (one copy of the weights in memory);
- ``init`` / ``path``: a separate frozen model (the student's starting weights, or another model);
- ``live``: the current policy itself, scoring its own tokens;
- ``ema``: an exponential moving average of the policy, updated after every optimizer step and
  carried by checkpoints (``state`` / ``load_state``), so a resumed run has the same teacher.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from mgsd.models.backbone import Backbone
from mgsd.models.context import Context
from mgsd.models.logprobs import TokenLogProbs
from mgsd.train.config import TrainConfig
from mgsd.train.engines import full, local, shard_of

_EMA_PREFIX = "ema::"  # the checkpoint's extra tensors: "ema::<parameter name>"


class Teacher(Protocol):
    """Scores response tokens; ``update`` / ``state`` / ``load_state`` matter only to a teacher that
    changes during training (the EMA), and do nothing by default."""

    def logprobs(self, ctx: Context, responses: list[list[int]], full_vocab: bool) -> TokenLogProbs:
        """Log-probs of ``responses`` under ``ctx``, without gradients."""
        ...

    def update(self, params: Mapping[str, torch.nn.Parameter]) -> None:
        """Called after each optimizer step with the student's trainable parameters."""

    def state(self) -> dict[str, torch.Tensor] | None:
        """Tensors a checkpoint must carry for a resumed run to have this teacher (None: nothing)."""
        return None

    def load_state(self, extra: Mapping[str, torch.Tensor]) -> None:
        """Restore what ``state`` saved (``extra``: all of a checkpoint's extra tensors)."""


class AdapterOffTeacher(Teacher):
    """``base``: the student with its LoRA adapter disabled."""

    def __init__(self, student: Backbone, logit_chunk: int) -> None:
        self.student, self.logit_chunk = student, logit_chunk

    def logprobs(self, ctx: Context, responses: list[list[int]], full_vocab: bool) -> TokenLogProbs:
        with self.student.teacher():
            return self.student.token_logprobs(
                ctx, responses, full_vocab=full_vocab, logit_chunk=self.logit_chunk
            )


class ModelTeacher(Teacher):
    """``live`` (the student itself: no gradient flows through the target), ``init`` / ``path`` (a
    separate frozen Backbone): a Backbone that scores the tokens directly."""

    def __init__(self, model: Backbone, logit_chunk: int) -> None:
        self.model, self.logit_chunk = model, logit_chunk

    def logprobs(self, ctx: Context, responses: list[list[int]], full_vocab: bool) -> TokenLogProbs:
        return self.model.token_logprobs(ctx, responses, full_vocab=full_vocab, logit_chunk=self.logit_chunk)


class EMATeacher(ModelTeacher):
    """``ema``: a frozen copy of the student whose weights follow ``decay * teacher + (1 - decay) *
    student`` after every step (full fine-tuning only: the names of the student's trainable
    parameters are the teacher's)."""

    def __init__(self, model: Backbone, logit_chunk: int, decay: float) -> None:
        super().__init__(model, logit_chunk)
        self.decay = decay

    def update(self, params: Mapping[str, torch.nn.Parameter]) -> None:
        # Under FSDP2 teacher and student are sharded alike: each rank averages its own shards.
        d = self.decay
        teacher_params = dict(self.model.model.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                local(teacher_params[name]).mul_(d).add_(local(p.detach()), alpha=1 - d)

    def state(self) -> dict[str, torch.Tensor]:
        """The whole weights (under FSDP2 gathered: every rank calls this, in the same order)."""
        return {f"{_EMA_PREFIX}{k}": full(v.detach()) for k, v in self.model.model.named_parameters()}

    def load_state(self, extra: Mapping[str, torch.Tensor]) -> None:
        teacher_params = dict(self.model.model.named_parameters())
        n = len(_EMA_PREFIX)
        with torch.no_grad():
            for name, value in extra.items():
                if name.startswith(_EMA_PREFIX) and name[n:] in teacher_params:
                    p = teacher_params[name[n:]]
                    p.copy_(shard_of(p, value.to(p.dtype)))


def make_teacher(
    cfg: TrainConfig, student: Backbone, device: torch.device | str, *, weights: bool = True
) -> Teacher:
    """The teacher ``cfg.opsd.teacher`` names, checked against the student it will score;
    ``weights=False``: a separate teacher built on the meta device (FSDP2 rank-0 loading)."""
    kind, chunk = cfg.opsd.teacher, cfg.logit_chunk
    if kind == "live":
        return ModelTeacher(student, chunk)
    if kind == "base":
        if not student.has_lora:
            raise ValueError(
                "opsd.teacher=base disables the student's LoRA adapter, but there is none: "
                "use lora.r > 0, or teacher=init / teacher=path"
            )
        return AdapterOffTeacher(student, chunk)
    if kind == "ema" and student.has_lora:
        raise ValueError("opsd.teacher=ema needs full fine-tuning (lora.r = 0)")
    path = cfg.opsd.teacher_path if kind == "path" else cfg.model
    if kind == "path" and not path:
        raise ValueError("opsd.teacher=path needs opsd.teacher_path")
    model = Backbone.load(
        path,
        # A frozen teacher has no small updates to protect: store it in the compute dtype. The EMA
        # teacher does receive small updates, so it keeps fp32 like the student's master weights.
        dtype="float32" if kind == "ema" else cfg.compute_dtype,
        compute_dtype=cfg.compute_dtype,
        trust_remote_code=cfg.trust_remote_code,
        device=device,
        weights=weights,
    ).freeze()
    if model.tokenizer_id != student.tokenizer_id:
        raise ValueError("the teacher's tokenizer differs from the student's: it cannot score its tokens")
    if kind == "ema":
        return EMATeacher(model, chunk, cfg.opsd.ema_decay)
    return ModelTeacher(model, chunk)
