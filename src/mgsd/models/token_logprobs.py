"""``Backbone.token_logprobs``: the one forward that scores fixed response ids under a context, from
the logits or, with ``logit_chunk``, from the final hidden states a block at a time (``output_head``
says when a model allows that)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from mgsd.models.context import Context, append_responses
from mgsd.models.logprobs import OutputStates, TokenLogProbs, chunked_logprobs, gather_logprobs
from mgsd.models.parts import ModelParts
from mgsd.models.positions import position_ids

# Config keys of HF models that change the logits after ``lm_head`` (Gemma's soft-cap, Cohere's and
# Granite's scales, muP-style multipliers): the chunked path, head(hidden), would miss them.
LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "lm_head_multiplier",
    "output_multiplier",
)


def model_inputs(
    bb: ModelParts, ctx: Context, responses: list[list[int]]
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, int]:
    """The forward's keyword arguments over ``[pad… prompt | response pad…]``, the response targets
    and mask, and the padded response length ``R``; the prompt/response seam is checked."""
    input_ids, mask, extras, R = append_responses(ctx, responses, bb.pad_token_id)
    L = ctx.input_ids.shape[1]
    for i, r in enumerate(responses):  # concatenated ids, never re-tokenised text: check the seam
        if input_ids[i, L : L + len(r)].tolist() != r or int(mask[i, L - 1]) != 1:
            raise ValueError(f"sample {i}: first response token not adjacent to the prompt")
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": position_ids(bb.model, input_ids, mask, extras),
        "use_cache": False,
        **extras,
    }
    return kwargs, input_ids[:, L:], mask[:, L:].to(torch.float32), R


def token_logprobs(
    bb: ModelParts,
    ctx: Context,
    response_ids: Sequence[Sequence[int]],
    *,
    grad: bool,
    full_vocab: bool,
    logit_chunk: int,
) -> TokenLogProbs:
    """``Backbone.token_logprobs`` (see there)."""
    if grad and bb._teacher_mode:
        raise ValueError("grad=True inside teacher(): the teacher is frozen")
    if logit_chunk < 0:
        raise ValueError(f"logit_chunk must be >= 0, got {logit_chunk}")
    responses = [[int(t) for t in r] for r in response_ids]
    bb.check_context(ctx)
    bb._check_responses(ctx, responses)
    kwargs, targets, resp_mask, R = model_inputs(bb, ctx, responses)
    # Without grad (teacher, old log-probs) the model runs in eval mode, like the sampler.
    mode = nullcontext() if grad else bb.eval_mode()
    full = hidden = None
    # The training forward goes through a data-parallel wrapper when there is one (DDP's hooks).
    wrapper = bb.train_forward if grad else None
    if logit_chunk:
        inner, head = bb.output_head()
        # Under FSDP2 (``synced``) only the whole model's forward gathers the parameters outside
        # its blocks (embeddings, the head): run it, and keep the inner model's hidden states.
        through = wrapper if wrapper is not None else (bb.model if bb.synced else None)
        with mode, torch.set_grad_enabled(grad), bb.autocast():
            if through is not None:
                states = _hidden_through(bb, through, inner, kwargs)[:, -(R + 1) : -1]
            else:
                states = inner(**kwargs).last_hidden_state[:, -(R + 1) : -1]
            out = OutputStates(states, head=head, frozen=not grad)
            # Under autocast, so the head's matmul runs in the compute dtype as lm_head would.
            logprobs = chunked_logprobs(out, targets, resp_mask, logit_chunk)
        hidden = out if full_vocab else None
    else:
        if "logits_to_keep" in bb._forward_params:
            kwargs["logits_to_keep"] = R + 1  # only the positions that predict response tokens
        model = wrapper if wrapper is not None else bb.model
        with mode, torch.set_grad_enabled(grad), bb.autocast():
            logits = model(**kwargs).logits
        logits = logits[:, -(R + 1) : -1]  # position L-1+t predicts response token t
        logprobs = gather_logprobs(logits, targets) * resp_mask
        full = torch.log_softmax(logits.float(), dim=-1) if full_vocab else None
    return TokenLogProbs(
        logprobs=logprobs,
        mask=resp_mask,
        response_ids=tuple(tuple(r) for r in responses),
        template_id=ctx.template_id,
        tokenizer_id=ctx.tokenizer_id,
        full=full,
        hidden=hidden,
    )


def _hidden_through(
    bb: ModelParts, whole: nn.Module, inner: nn.Module, kwargs: dict[str, Any]
) -> torch.Tensor:
    """The final hidden states of ``inner`` from a forward of the whole model ``whole`` (a DDP
    wrapper, or an FSDP2 root), one logit row kept: the head is applied in chunks by the caller."""
    if "logits_to_keep" not in bb._forward_params:
        raise ValueError("logit_chunk under a data-parallel engine needs a model taking logits_to_keep")
    seen: dict[str, torch.Tensor] = {}
    hook = inner.register_forward_hook(lambda _m, _a, out: seen.__setitem__("h", out.last_hidden_state))
    try:
        whole(**kwargs, logits_to_keep=1)
    finally:
        hook.remove()
    return seen["h"]


def output_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """``Backbone.output_head`` (see there): ``model`` without its head, and the head, or the reason
    the chunked path would compute other log-probs for it."""
    inner = getattr(model, "model", None)
    head = model.get_output_embeddings()
    name = type(model).__name__
    if not isinstance(inner, nn.Module) or inner is model:
        raise ValueError(f"logit_chunk: {name} has no inner .model returning the final hidden states")
    if type(head) is not nn.Linear:
        raise ValueError(f"logit_chunk: {name}'s output head is {type(head).__name__}, not a plain nn.Linear")
    configs = [model.config, getattr(model.config, "text_config", None)]
    for key in LOGIT_TRANSFORMS:
        for config in configs:
            value = getattr(config, key, None) if config is not None else None
            if value not in (None, 0, 1, 0.0, 1.0):
                raise ValueError(
                    f"logit_chunk: {name} transforms its logits after the head ({key}={value}): "
                    "the chunked path would compute other log-probs; use logit_chunk: 0"
                )
    return inner, head
