"""Training objectives, each readable top to bottom. Shapes: B sequences x R response tokens (x V vocab).

``mask`` is 1 for response tokens that count (up to and including the end-of-turn token) and 0 for
prompt and padding. Every loss is a masked mean over tokens of the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mgsd.models.logprobs import OutputStates, TokenLogProbs, chunked_logprobs, map_token_chunks

if TYPE_CHECKING:
    from mgsd.train.config import OPSDConfig


def masked_mean(x: torch.Tensor, mask: torch.Tensor, denom: float | None = None) -> torch.Tensor:
    """Mean of ``x`` over masked tokens; with ``denom`` the masked sum divided by ``denom`` (the token
    count of the whole global batch, so micro-batches and processes add up to one mean)."""
    mask = mask.to(x.dtype)
    total = (x * mask).sum()
    return total / denom if denom is not None else total / mask.sum().clamp_min(1.0)


def reverse_kl_advantages(
    teacher_logp: torch.Tensor, student_logp: torch.Tensor, mask: torch.Tensor, clip: float | None = None
) -> torch.Tensor:
    """The MGSD per-token advantage ``log p_teacher(y_t) - log p_student(y_t)`` on the student's own
    sampled tokens: positive where the privileged teacher likes the token more than the student does.
    Optionally clipped to [-clip, clip] per token. Detached: it is a reward, not a path for gradients."""
    adv = (teacher_logp - student_logp).detach()
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv * mask


def policy_gradient_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ratio_clip: float | None = None,
    denom: float | None = None,
) -> torch.Tensor:
    """Sampled-token policy gradient. On-policy (``logp == old_logp``) its gradient is
    ``-mean(A_t * grad log p(y_t))``, i.e. a per-token estimate of the reverse-KL gradient when ``A`` is
    the teacher-student log-ratio. With ``ratio_clip`` it is PPO's clipped surrogate, for reusing one
    rollout batch for several updates."""
    ratio = torch.exp(logp - old_logp.detach())
    surrogate = ratio * advantages
    if ratio_clip is not None:
        clipped = ratio.clamp(1 - ratio_clip, 1 + ratio_clip) * advantages
        surrogate = torch.minimum(surrogate, clipped)
    return -masked_mean(surrogate, mask, denom)


# ---------------------------------------------------------------- vocabulary divergences, per token
# One definition of each divergence per token position, ``(..., V)`` logits -> ``(...)``. The
# unchunked losses apply it to the whole ``(B, R, V)`` batch; the chunked ones to blocks of tokens.


def reverse_kl_per_token(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, top_k: int | None = None
) -> torch.Tensor:
    """Reverse KL(student || teacher) at each position; with ``top_k`` over the student's k most
    likely tokens, both distributions renormalised on that support."""
    s = F.log_softmax(student_logits.float(), dim=-1)
    t = F.log_softmax(teacher_logits.float(), dim=-1).detach()
    if top_k is not None:
        idx = s.topk(top_k, dim=-1).indices
        s = F.log_softmax(s.gather(-1, idx), dim=-1)
        t = F.log_softmax(t.gather(-1, idx), dim=-1)
    return (s.exp() * (s - t)).sum(-1)


def jsd_per_token(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """Generalised JSD (GKD) at each position: ``beta * KL(t || m) + (1 - beta) * KL(s || m)`` with
    the mixture ``m = (1 - beta) s + beta t``."""
    if not 0.0 < beta < 1.0:
        raise ValueError("beta must be in (0, 1); use full_reverse_kl for beta = 1")
    s = F.log_softmax(student_logits.float(), dim=-1)
    t = F.log_softmax(teacher_logits.float(), dim=-1).detach()
    log_m = torch.logsumexp(
        torch.stack([s + torch.log1p(torch.tensor(-beta)), t + torch.log(torch.tensor(beta))]), 0
    )
    kl_t = (t.exp() * (t - log_m)).sum(-1)
    kl_s = (s.exp() * (s - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


# ---------------------------------------------------------------- unchunked: (B, R, V) logits in hand


def full_reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    top_k: int | None = None,
    denom: float | None = None,
) -> torch.Tensor:
    """Exact per-position reverse KL(student || teacher) over the vocabulary, at the student's sampled
    prefixes. With ``top_k`` the sum runs over the student's k most likely tokens, both distributions
    renormalised on that support (cheaper, lower variance than the sampled estimate)."""
    return masked_mean(reverse_kl_per_token(student_logits, teacher_logits, top_k), mask, denom)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.5,
    denom: float | None = None,
) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence (GKD): ``beta`` -> 0 approaches forward KL(teacher||student)
    in gradient, ``beta`` -> 1 reverse KL(student||teacher); 0.5 is the symmetric JSD."""
    return masked_mean(jsd_per_token(student_logits, teacher_logits, beta), mask, denom)


# ---------------------------------------------------------------- chunked: hidden states + head
# The same losses from final hidden states and output heads (``Backbone.token_logprobs`` with
# ``logit_chunk``): the masked tokens are taken ``chunk`` at a time, each block's student and teacher
# logits computed, reduced to one divergence per token and recomputed in backward, so no step holds
# more than a block's ``(chunk, V)`` logits. They equal the unchunked losses up to float summation
# order. Call them under the backbone's autocast to compute the head in the model's compute dtype.


def chunked_divergence(
    per_token: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    student: OutputStates,
    teacher: OutputStates,
    mask: torch.Tensor,
    chunk: int,
    denom: float | None = None,
) -> torch.Tensor:
    """``masked_mean(per_token(student logits, teacher logits), mask, denom)`` block by block."""
    keep = mask.bool()
    weights = mask[keep].float()

    def block(s_h: torch.Tensor, t_h: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the teacher is a target, even when it is the live policy
            t_logits = teacher.logits(t_h)
        return per_token(student.logits(s_h), t_logits)

    per = map_token_chunks(block, [student.states[keep], teacher.states[keep].detach()], chunk)
    total = (per * weights).sum() if per.numel() else student.states.sum().float() * 0.0
    return total / denom if denom is not None else total / mask.float().sum().clamp_min(1.0)


def chunked_reverse_kl(
    student: OutputStates,
    teacher: OutputStates,
    mask: torch.Tensor,
    top_k: int | None = None,
    denom: float | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """``full_reverse_kl`` from hidden states, ``chunk`` tokens at a time."""
    return chunked_divergence(
        lambda s, t: reverse_kl_per_token(s, t, top_k), student, teacher, mask, chunk, denom
    )


def chunked_jsd(
    student: OutputStates,
    teacher: OutputStates,
    mask: torch.Tensor,
    beta: float = 0.5,
    denom: float | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """``generalized_jsd`` from hidden states, ``chunk`` tokens at a time."""
    if not 0.0 < beta < 1.0:  # before any block runs
        raise ValueError("beta must be in (0, 1); use full_reverse_kl for beta = 1")
    return chunked_divergence(lambda s, t: jsd_per_token(s, t, beta), student, teacher, mask, chunk, denom)


def chunked_token_logprobs(
    hidden: OutputStates, targets: torch.Tensor, mask: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """Sampled-token log-probs ``(B, R)`` from hidden states, ``chunk`` tokens at a time (what
    ``Backbone.token_logprobs`` computes with ``logit_chunk``; the sampled loss's input)."""
    return chunked_logprobs(hidden, targets, mask, chunk)


# ---------------------------------------------------------------- the stage-2 losses, by name
# ``opsd.loss`` names one entry of ``STAGE2_LOSSES``. The trainer asks the teacher for whole
# distributions when the entry is ``vocabulary`` and adds ``fn`` of every micro-batch to the loss. A
# new stage-2 loss is one entry here, plus its name in ``OPSDConfig.loss`` (a Literal, so the config
# stays free of torch; tests/test_objectives.py holds the two equal).


@dataclass
class Stage2Batch:
    """One micro-batch of rollouts as a stage-2 loss sees it.

    ``student``: the student's log-probs of its own sampled tokens, with gradients (``full`` or
    ``hidden`` filled for a vocabulary loss); ``teacher``: the teacher's of the same tokens under the
    privileged prompt; ``old_logprobs``: the student's when it sampled, when the rollout is reused for
    several updates (None: on-policy, the student's own detached); ``centred_success``: ``(B,)``
    simulator success minus the global batch mean; ``denom``: response tokens in the global batch;
    ``chunk``: ``logit_chunk`` (0: ``(B, R, V)`` log-probs in hand, else hidden states)."""

    student: TokenLogProbs
    teacher: TokenLogProbs
    old_logprobs: torch.Tensor | None
    centred_success: torch.Tensor
    denom: float
    chunk: int


def sampled_reverse_kl(b: Stage2Batch, c: OPSDConfig) -> torch.Tensor:
    """MGSD's default: the policy gradient of the per-token advantage ``log p_T - log p_S`` on the
    sampled tokens (plus ``reward_weight`` times the centred success; PPO-clipped when reused)."""
    mask = b.student.mask
    old_lp = b.old_logprobs if b.old_logprobs is not None else b.student.logprobs.detach()
    adv = reverse_kl_advantages(b.teacher.logprobs, old_lp, mask, clip=c.adv_clip)
    if c.reward_weight:  # centred on the global batch mean, the same on every process
        adv = adv + c.reward_weight * b.centred_success[:, None].to(adv) * mask
    ratio_clip = c.ratio_clip if c.updates_per_rollout > 1 else None
    return policy_gradient_loss(b.student.logprobs, old_lp, adv, mask, ratio_clip, denom=b.denom)


def _vocabulary_reverse_kl(b: Stage2Batch, top_k: int | None) -> torch.Tensor:
    s, t, mask = b.student, b.teacher, b.student.mask
    if b.chunk:
        assert s.hidden is not None and t.hidden is not None
        return chunked_reverse_kl(s.hidden, t.hidden, mask, top_k, b.denom, b.chunk)
    assert s.full is not None and t.full is not None
    return full_reverse_kl(s.full, t.full, mask, top_k=top_k, denom=b.denom)


def vocabulary_jsd(b: Stage2Batch, c: OPSDConfig) -> torch.Tensor:
    """``generalized_jsd`` with ``beta = jsd_beta`` (chunked when ``chunk``)."""
    s, t, mask = b.student, b.teacher, b.student.mask
    if b.chunk:
        assert s.hidden is not None and t.hidden is not None
        return chunked_jsd(s.hidden, t.hidden, mask, c.jsd_beta, b.denom, b.chunk)
    assert s.full is not None and t.full is not None
    return generalized_jsd(s.full, t.full, mask, beta=c.jsd_beta, denom=b.denom)


@dataclass(frozen=True)
class Stage2Loss:
    """``fn(batch, opsd config)`` -> this micro-batch's share of the loss; ``vocabulary``: it reads
    whole next-token distributions (else only the sampled tokens' log-probs)."""

    fn: Callable[[Stage2Batch, OPSDConfig], torch.Tensor]
    vocabulary: bool


STAGE2_LOSSES: dict[str, Stage2Loss] = {
    "sampled": Stage2Loss(sampled_reverse_kl, vocabulary=False),
    "full": Stage2Loss(lambda b, c: _vocabulary_reverse_kl(b, None), vocabulary=True),
    "topk": Stage2Loss(lambda b, c: _vocabulary_reverse_kl(b, c.top_k), vocabulary=True),
    "jsd": Stage2Loss(vocabulary_jsd, vocabulary=True),
}
