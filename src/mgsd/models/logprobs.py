"""Per-token log-probabilities of fixed response tokens, and the teacher-student gap.

Everything here is at temperature 1: ``log softmax(logits)`` gathered at the response tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class TokenLogProbs:
    """Log-probs of the response tokens under one context.

    ``logprobs`` and ``mask`` are ``(B, R)`` float32, right-padded (``mask`` is 1 up to and including
    each response's last token, EOS included when the response has one). ``full`` optionally holds
    the full-vocabulary log-probs ``(B, R, V)`` at the same positions. ``response_ids``,
    ``template_id`` and ``tokenizer_id`` record what was scored, for the pairing guards.
    Unpacks as ``logprobs, mask = backbone.token_logprobs(...)``.
    """

    logprobs: torch.Tensor
    mask: torch.Tensor
    response_ids: tuple[tuple[int, ...], ...]
    template_id: str = ""
    tokenizer_id: str = ""
    full: torch.Tensor | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.logprobs, self.mask))


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[targets]`` without materialising a second ``(B, R, V)`` tensor."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


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
