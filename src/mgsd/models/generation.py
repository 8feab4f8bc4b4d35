"""Generation results and the logits processors ``Backbone.generate`` installs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor


@dataclass
class Generation:
    """Sampled responses.

    ``sequences``: response ids per sample, cut after the first end-of-turn token, which is
    included; padding removed. ``finished``: whether that token was produced (False = hit
    ``max_new_tokens``). ``texts``: decoded with special tokens skipped. ``logprobs`` (when asked):
    per-token log-probs of the sampled ids under the model's own distribution at temperature 1
    (raw logits, before temperature/top-p), i.e. the same quantity ``token_logprobs`` returns.
    """

    sequences: list[list[int]]
    texts: list[str]
    finished: list[bool]
    logprobs: list[list[float]] | None = None


class RecordLogprobs(LogitsProcessor):
    """Records log softmax of the raw logits at each sampled token (placed first: sees raw logits)."""

    def __init__(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids)
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _take(self, ids: torch.Tensor) -> None:
        # The token sampled from the previous step's distribution is now the last input id.
        if self.previous is not None and ids.shape[1] > self.prompt_len + len(self.steps):
            self.steps.append(self.previous.gather(-1, ids[:, -1:]).squeeze(-1))

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        self._take(sequences)
        return (
            torch.stack(self.steps, dim=1) if self.steps else sequences.new_zeros((len(sequences), 0)).float()
        )


class Suppress(LogitsProcessor):
    """Never sample placeholder/vision tokens or ids past the tokenizer (rows the model only pads)."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.ids.numel():
            scores[:, self.ids.to(scores.device)] = -float("inf")
        return scores


def cut_at_stop(row: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token, and whether one was found."""
    stops = set(stop_ids)
    for t, tok in enumerate(row):
        if tok in stops:
            return list(row[: t + 1]), True
    return list(row), False
