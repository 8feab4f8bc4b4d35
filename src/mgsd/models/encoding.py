"""Chat turns to token ids for ``Backbone``: conversations rendered with the chat template and
tokenised into one left-padded ``Context`` (images to the processor), and target texts to response ids
that start a new token after the generation prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from mgsd.models.chat import Message, count_images
from mgsd.models.context import Context
from mgsd.models.parts import ModelParts


def encode_conversations(
    bb: ModelParts,
    conversations: Sequence[Sequence[Message]],
    images: Sequence[Sequence[Image.Image]] | None,
    *,
    add_generation_prompt: bool,
) -> Context:
    """``Backbone.encode`` (see there)."""
    conversations = [list(c) for c in conversations]
    if images is None:
        images = [images_in(c) for c in conversations]
    if len(images) != len(conversations):
        raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
    counts = [count_images(c) for c in conversations]
    for i, (n, imgs) in enumerate(zip(counts, images, strict=True)):
        if n != len(imgs):
            raise ValueError(f"conversation {i} has {n} image slots but {len(imgs)} images were given")
    texts = [
        bb.processor.apply_chat_template(
            strip_images(c), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        for c in conversations
    ]
    flat = [img.convert("RGB") for imgs in images for img in imgs]
    batch = bb.processor(text=texts, images=flat or None, padding=True, return_tensors="pt")
    extras = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    ctx = Context(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        extras=extras,
        images_per_sample=counts,
        template_id=bb.template_id,
        tokenizer_id=bb.tokenizer_id,
        generation_prompt=add_generation_prompt,
    ).to(bb.device)
    bb.check_image_tokens(ctx)
    return ctx


def response_ids(bb: ModelParts, texts: Sequence[str], *, add_eos: bool) -> list[list[int]]:
    """``Backbone.encode_responses`` (see there)."""
    texts = list(texts)
    if not texts:
        return []
    prompt = bb._generation_prompt_ids or []
    alone = bb.tokenizer(texts, add_special_tokens=False)["input_ids"]
    joints: list[Any] = [None] * len(texts)
    if prompt:
        if bb._generation_prompt_text is None:
            bb._generation_prompt_text = bb.tokenizer.decode(prompt, skip_special_tokens=False)
        prompt_text = bb._generation_prompt_text
        joints = bb.tokenizer([prompt_text + t for t in texts], add_special_tokens=False)["input_ids"]
    out = []
    for i, (text, ids, joint) in enumerate(zip(texts, alone, joints, strict=True)):
        ids = list(ids)
        if prompt and list(joint) != prompt + ids:
            raise ValueError(
                f"response {i} ({text[:12]!r}) would merge into the prompt boundary: after the"
                " generation prompt it tokenises differently than on its own"
            )
        out.append(ids + ([bb.eos_token_ids[0]] if add_eos else []))
    return out


def images_in(conversation: Sequence[Message]) -> list[Image.Image]:
    """The PIL images inline in a conversation's parts, in order."""
    out = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            out += [
                p["image"]
                for p in content
                if p.get("type") == "image" and isinstance(p.get("image"), Image.Image)
            ]
    return out


def strip_images(conversation: Sequence[Message]) -> list[Message]:
    # The template only needs the slots; the PIL objects go to the processor separately.
    out = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            content = [{"type": "image"} if p.get("type") == "image" else p for p in content]
        out.append({**message, "content": content})
    return out
