"""Qwen-style chat template and the two kinds of turns MGSD needs.

Student: a user turn with the instruction text and the image (no system turn).
Teacher: a system turn plus a text-only user turn (the privileged symbolic context, no image).
Messages follow the Hugging Face chat format: ``{"role": ..., "content": [{"type": "text", ...}]}``.
"""

from __future__ import annotations

from typing import Any, Literal

Message = dict[str, Any]

# No default system prompt; one <|vision_start|><|image_pad|><|vision_end|> per image (the processor
# expands <|image_pad|> to the image's token count); generation prompt "<|im_start|>assistant\n".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def student_messages(
    text: str, image_position: Literal["start", "end"] = "end", num_images: int = 1
) -> list[Message]:
    """One user turn: instruction text plus ``num_images`` image slots (MGSD puts the image last)."""
    if image_position not in ("start", "end"):
        raise ValueError(f"image_position must be 'start' or 'end', got {image_position!r}")
    images = [{"type": "image"} for _ in range(num_images)]
    parts = [{"type": "text", "text": text}]
    content = parts + images if image_position == "end" else images + parts
    return [{"role": "user", "content": content}]


def teacher_messages(system: str | None, text: str) -> list[Message]:
    """A system turn (omitted when ``system`` is None) and a text-only user turn."""
    messages: list[Message] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
    return messages


def count_images(messages: list[Message]) -> int:
    """Number of image slots in a conversation."""
    n = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            n += sum(1 for part in content if part.get("type") == "image")
    return n
