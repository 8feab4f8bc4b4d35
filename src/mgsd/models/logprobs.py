"""Per-token log-probabilities of fixed response tokens, and the teacher-student gap.

Everything here is at temperature 1: ``log softmax(logits)`` gathered at the response tokens.

The sequence-chunked path (``logit_chunk > 0``): instead of the ``(B, R, V)`` logits, keep the final
hidden states ``(B, R, H)`` and the output head (``OutputStates``), and compute anything over the
vocabulary a block of ``chunk`` tokens at a time (``map_token_chunks``), each block recomputed in
backward, so at most one block's ``(chunk, V)`` logits are alive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class OutputStates:
    """Final hidden states at the response positions and the linear output head that maps them to
    logits: ``logits = states @ weight.T + bias``. ``states``: ``(B, R, H)``; the head is given as
    ``weight`` ``(V, H)`` and ``bias``, or as the ``head`` module itself, read each time logits are
    computed: under FSDP2 the head's parameters exist whole only while its model is gathered, so
    they cannot be kept from the forward. ``frozen`` (a teacher) detaches them; a student's live
    parameters get gradients (the head trains with full fine-tuning)."""

    states: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    head: nn.Linear | None = None
    frozen: bool = False

    def parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's ``(weight, bias)`` as they are now (detached for a frozen teacher)."""
        w, b = (self.head.weight, self.head.bias) if self.head is not None else (self.weight, self.bias)
        if w is None:
            raise ValueError("OutputStates needs a weight or a head")
        if self.frozen:
            return w.detach(), None if b is None else b.detach()
        return w, b

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of some rows of ``states`` (``(..., H)`` -> ``(..., V)``), in the head's dtype
        (or autocast's, as the model's own ``lm_head`` would compute them)."""
        weight, bias = self.parameters()
        return F.linear(hidden.to(weight.dtype), weight, bias)


@dataclass
class TokenLogProbs:
    """Log-probs of the response tokens under one context.

    ``logprobs`` and ``mask`` are ``(B, R)`` float32, right-padded (``mask`` is 1 up to and including
    each response's last token, EOS included when the response has one). ``full`` optionally holds
    the full-vocabulary log-probs ``(B, R, V)`` at the same positions; ``hidden`` instead holds the
    hidden states and output head they come from (the chunked path). ``response_ids``,
    ``template_id`` and ``tokenizer_id`` record what was scored, for the pairing guards.
    Unpacks as ``logprobs, mask = backbone.token_logprobs(...)``.
    """

    logprobs: torch.Tensor
    mask: torch.Tensor
    response_ids: tuple[tuple[int, ...], ...]
    template_id: str = ""
    tokenizer_id: str = ""
    full: torch.Tensor | None = None
    hidden: OutputStates | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.logprobs, self.mask))


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[targets]`` without materialising a second ``(B, R, V)`` tensor."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def map_token_chunks(
    fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor], chunk: int
) -> torch.Tensor:
    """``fn`` over consecutive blocks of ``chunk`` rows of ``tensors`` (all ``(N, ...)``), outputs
    concatenated along rows. ``fn`` maps a block to one value per row (a log-prob, a divergence).

    With gradients on, every block runs under non-reentrant activation checkpointing: the forward
    keeps only the block's inputs, and backward recomputes the block's logits one block at a time
    (tensors ``fn`` reads from its closure, such as a trainable head weight, get gradients too).
    The price is one more head matmul per block in backward.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = tensors[0].shape[0]
    outs = []
    for start in range(0, n, chunk):
        block = [t[start : start + chunk] for t in tensors]
        if torch.is_grad_enabled():
            outs.append(checkpoint(fn, *block, use_reentrant=False))
        else:
            outs.append(fn(*block))
    return torch.cat(outs)


def chunked_logprobs(
    hidden: OutputStates, targets: torch.Tensor, mask: torch.Tensor, chunk: int
) -> torch.Tensor:
    """``gather_logprobs(logits, targets) * mask`` ``(B, R)`` from hidden states, computed over the
    masked tokens ``chunk`` at a time: never more than ``(chunk, V)`` logits at once."""
    keep = mask.bool()
    if not bool(keep.any()):  # nothing to score; keep the result on the graph for a backward
        return hidden.states.sum(-1).float() * 0.0
    values = map_token_chunks(
        lambda h, y: gather_logprobs(hidden.logits(h), y), [hidden.states[keep], targets[keep]], chunk
    )
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    return out.index_put((keep,), values) * mask.to(values.dtype)


def check_same_responses(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> None:
    """Raise ``ValueError`` unless both sides scored exactly the same response tokens."""
    if len(a) != len(b):
        raise ValueError(f"teacher/student batch sizes differ: {len(a)} vs {len(b)}")
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if tuple(x) != tuple(y):
            raise ValueError(
                f"teacher and student response tokens differ in sample {i} "
                f"(lengths {len(x)} vs {len(y)}): both must score the student's own sampled ids"
            )


def check_paired(student: TokenLogProbs, teacher: TokenLogProbs) -> None:
    """Guards for a teacher/student pair: same response ids, chat template and tokenizer."""
    check_same_responses(student.response_ids, teacher.response_ids)
    if student.template_id != teacher.template_id:
        raise ValueError(
            "student and teacher contexts were built with different chat templates "
            f"({student.template_id[:12]} vs {teacher.template_id[:12]})"
        )
    if student.tokenizer_id != teacher.tokenizer_id:
        raise ValueError("student and teacher contexts were tokenised with different vocabularies")


def logprob_gap(student: TokenLogProbs, teacher: TokenLogProbs) -> torch.Tensor:
    """Per-token sampled reverse-KL estimate ``log pi_S - log pi_T`` (B, R), zero on padding.

    The OPCD advantage is its negative. Both inputs must come from the same response ids.
    """
    check_paired(student, teacher)
    mask = student.mask
    return (student.logprobs - teacher.logprobs.to(student.logprobs.device)) * mask
