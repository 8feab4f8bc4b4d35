"""The checks ``Backbone`` runs before it trusts a context or a response: image tokens against image
features, the tokenizer and chat template a context was built with, left padding, the generation
prompt at the end, response ids inside the vocabulary; and the end-of-turn ids and generation prompt
they are checked against, read once from the tokenizer and template."""

from __future__ import annotations

from typing import Any

import torch

from mgsd.models.context import Context
from mgsd.models.parts import ModelParts


def config_value(config: Any, *names: str) -> Any:
    """The first of ``names`` set on ``config`` (``None`` when none is, or there is no config)."""
    for name in names:
        value = getattr(config, name, None) if config is not None else None
        if value is not None:
            return value
    return None


def check_image_tokens(bb: ModelParts, ctx: Context) -> None:
    """Raise ``ValueError`` if image placeholder tokens and image features disagree."""
    if bb.image_token_id is None:
        return
    found = (ctx.input_ids == bb.image_token_id).sum(-1).tolist()
    grid = ctx.extras.get("image_grid_thw")
    if grid is None:
        if any(n and not f for n, f in zip(ctx.images_per_sample, found, strict=False)):
            raise ValueError("a sample has images but no image tokens in input_ids")
        return
    merge = config_value(getattr(bb.model.config, "vision_config", None), "spatial_merge_size") or 1
    per_image = (grid.prod(-1) // merge**2).tolist()
    if not ctx.images_per_sample:  # unknown split over samples: check the batch total only
        found, counts = [sum(found)], [len(per_image)]
    else:
        counts = ctx.images_per_sample
    if sum(counts) != len(per_image):
        raise ValueError(f"{sum(counts)} images in the conversations but {len(per_image)} image grids")
    start = 0
    for i, n in enumerate(counts):
        expected = sum(per_image[start : start + n])
        start += n
        if found[i] != expected:
            where = f"sample {i}" if ctx.images_per_sample else "batch"
            raise ValueError(f"{where}: {found[i]} image tokens in input_ids but the images give {expected}")
    pixels = ctx.extras.get("pixel_values")
    patches = int(grid.prod(-1).sum())
    if pixels is not None and pixels.shape[0] != patches:
        raise ValueError(f"pixel_values has {pixels.shape[0]} patches, image_grid_thw implies {patches}")


def check_context(bb: ModelParts, ctx: Context) -> None:
    """Raise ``ValueError`` if ``ctx`` cannot be continued by a response of this model."""
    if ctx.tokenizer_id != bb.tokenizer_id:
        raise ValueError("context was tokenised with a different vocabulary than this model's tokenizer")
    if ctx.template_id != bb.template_id:
        raise ValueError("context was built with a different chat template than this model's")
    if not ctx.generation_prompt:
        raise ValueError("context has no generation prompt: a response would not start an assistant turn")
    if not bool(ctx.attention_mask[:, -1].all()):
        raise ValueError("context is not left-padded: a response would follow padding, not the prompt")
    suffix = bb._generation_prompt_ids
    if suffix:
        tail = ctx.input_ids[:, -len(suffix) :]
        if not bool((tail == torch.as_tensor(suffix, device=tail.device)).all()):
            raise ValueError("context does not end with the generation prompt: the response boundary is lost")
    check_image_tokens(bb, ctx)


def check_responses(bb: ModelParts, ctx: Context, responses: list[list[int]]) -> None:
    """One non-empty response per context, without image placeholders, inside the vocabulary."""
    if len(responses) != len(ctx):
        raise ValueError(f"{len(ctx)} contexts but {len(responses)} responses")
    vocab = bb.model.get_input_embeddings().num_embeddings
    for i, r in enumerate(responses):
        if not r:
            raise ValueError(f"response {i} is empty")
        if bb.image_token_id is not None and bb.image_token_id in r:
            raise ValueError(f"response {i} contains the image placeholder token")
        if min(r) < 0 or max(r) >= vocab:
            raise ValueError(f"response {i} has ids outside the vocabulary [0, {vocab})")


def end_of_turn_ids(tokenizer: Any, model: Any) -> list[int]:
    """The ids that end an assistant turn: eos, ``<|im_end|>`` and the model's generation eos."""
    ids: list[int] = []
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    unk = tokenizer.unk_token_id
    candidates = [tokenizer.eos_token_id, im_end if im_end != unk else None]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates += gen_eos if isinstance(gen_eos, list) else [gen_eos]
    for c in candidates:
        if c is not None and int(c) not in ids:
            ids.append(int(c))
    if not ids:
        raise ValueError("the tokenizer has no end-of-turn token")
    return ids


def generation_prompt_ids(processor: Any, tokenizer: Any) -> list[int] | None:
    """The ids the chat template appends for ``add_generation_prompt`` (``None``: not separable)."""
    conv = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    without = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=False)
    with_prompt = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    a = tokenizer(without, add_special_tokens=False)["input_ids"]
    b = tokenizer(with_prompt, add_special_tokens=False)["input_ids"]
    if len(b) > len(a) and b[: len(a)] == a:
        return list(b[len(a) :])
    return None  # the template's prompt merges with what precedes it: cannot check
