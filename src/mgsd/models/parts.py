"""``ModelParts``: what the helper modules beside ``Backbone`` (encoding, generation, guards, saving,
token_logprobs) read from it. They depend on this interface, not on the class, so ``backbone.py``
imports them and nothing imports it back: the arrows in ``models/`` run one way."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import nn

from mgsd.models.context import Context


class ModelParts(Protocol):
    model: nn.Module  # the HF model (with a peft LoRA: the base model with adapter layers injected)
    peft: Any  # the PeftModel wrapper, or None
    processor: Any
    tokenizer: Any
    source: str | None
    template_id: str
    tokenizer_id: str
    eos_token_ids: list[int]
    pad_token_id: int
    image_token_id: int | None
    train_forward: nn.Module | None  # a data-parallel engine's wrapper (DDP)
    synced: bool  # every rank runs the same forwards (FSDP2)
    _teacher_mode: bool
    _generation_prompt_ids: Sequence[int]
    _generation_prompt_text: str | None
    _forward_params: set[str]

    @property
    def device(self) -> torch.device: ...

    def autocast(self) -> Any: ...

    def eval_mode(self) -> AbstractContextManager[None]: ...

    def check_context(self, ctx: Context) -> None: ...

    def check_image_tokens(self, ctx: Context) -> None: ...

    def _check_responses(self, ctx: Context, responses: list[list[int]]) -> None: ...

    def _never_sample(self) -> torch.Tensor: ...

    def output_head(self) -> tuple[nn.Module, nn.Linear]: ...
