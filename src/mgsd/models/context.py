"""A batch of encoded prompts (contexts) and how a response is appended to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

# Image tensors, never per-token even if a shape happens to coincide with the ids.
_IMAGE_KEYS = frozenset({"pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask"})


@dataclass
class Context:
    """Left-padded prompts plus the processor's extra model inputs.

    ``extras`` holds what the processor returned besides ids and mask (``pixel_values``,
    ``image_grid_thw``, ``mm_token_type_ids``, ...). Tensors shaped like ``input_ids`` are per-token
    and are extended with zeros when a response is appended. ``template_id`` and ``tokenizer_id``
    fingerprint the chat template and vocabulary that produced the ids, so contexts built
    differently can never be compared by mistake.
    """

    input_ids: torch.Tensor  # (B, L) long, left-padded
    attention_mask: torch.Tensor  # (B, L)
    extras: dict[str, Any] = field(default_factory=dict)
    images_per_sample: list[int] = field(default_factory=list)
    template_id: str = ""
    tokenizer_id: str = ""
    generation_prompt: bool = True

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def to(self, device: torch.device | str) -> Context:
        extras = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.extras.items()}
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            extras=extras,
        )

    def per_token_keys(self) -> list[str]:
        """Extras aligned with ``input_ids`` (one value per token)."""
        shape = tuple(self.input_ids.shape)
        return [
            k
            for k, v in self.extras.items()
            if k not in _IMAGE_KEYS and isinstance(v, torch.Tensor) and tuple(v.shape) == shape
        ]

    def rows(self) -> list[list[int]]:
        """The unpadded token ids of each prompt."""
        return [
            ids[mask.bool()].tolist() for ids, mask in zip(self.input_ids, self.attention_mask, strict=True)
        ]

    def select(self, indices: Sequence[int]) -> Context:
        """A sub-batch (e.g. a micro-batch), with the shared left padding trimmed."""
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        mask = self.attention_mask[idx]
        width = int(mask.sum(-1).max().item()) if len(idx) else 0
        cut = mask.shape[1] - width
        extras: dict[str, Any] = {}
        per_token = set(self.per_token_keys())
        image_keys = _image_rows(self, list(indices))
        for key, value in self.extras.items():
            if key in per_token:
                extras[key] = value[idx][:, cut:]
            elif key in image_keys:
                extras[key] = image_keys[key]
            elif key in _IMAGE_KEYS:
                continue  # no image in the selection
            else:
                extras[key] = value
        return replace(
            self,
            input_ids=self.input_ids[idx][:, cut:],
            attention_mask=mask[:, cut:],
            extras=extras,
            images_per_sample=[self.images_per_sample[i] for i in indices] if self.images_per_sample else [],
        )


def _image_rows(ctx: Context, indices: list[int]) -> dict[str, torch.Tensor]:
    """Slice the image tensors of the chosen samples (flattened Qwen patches or one row per image)."""
    if "pixel_values" not in ctx.extras or not ctx.images_per_sample:
        return {}
    first_image = [0]
    for n in ctx.images_per_sample:
        first_image.append(first_image[-1] + n)
    images = [j for i in indices for j in range(first_image[i], first_image[i + 1])]
    if not images:
        return {}
    out: dict[str, torch.Tensor] = {}
    pixel_values = ctx.extras["pixel_values"]
    grid = ctx.extras.get("image_grid_thw")
    if grid is not None:
        # Qwen-VL: pixel_values is (sum of patches, patch_dim) with prod(t, h, w) rows per image.
        counts = grid.prod(-1).tolist()
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        out["pixel_values"] = torch.cat([pixel_values[starts[j] : starts[j + 1]] for j in images])
        out["image_grid_thw"] = grid[images]
    else:
        out["pixel_values"] = pixel_values[images]
    for key in ("image_sizes",):
        if key in ctx.extras:
            out[key] = ctx.extras[key][images]
    return out


def append_responses(
    ctx: Context, responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], int]:
    """``[pad… prompt | response pad…]``: each left-padded prompt followed by its response ids.

    The prompt part keeps its left padding, so the first response token of every row sits at the
    same column ``L`` (the prompt width); shorter responses are right-padded. Returns
    ``(input_ids, attention_mask, extras, R)`` where ``R`` is the longest response.
    """
    B = ctx.input_ids.shape[0]
    R = max(len(r) for r in responses)
    resp = torch.full((B, R), pad_id, dtype=ctx.input_ids.dtype, device=ctx.device)
    resp_mask = torch.zeros((B, R), dtype=ctx.attention_mask.dtype, device=ctx.device)
    for i, r in enumerate(responses):
        resp[i, : len(r)] = torch.as_tensor(list(r), dtype=resp.dtype, device=ctx.device)
        resp_mask[i, : len(r)] = 1
    extras = dict(ctx.extras)
    for key in ctx.per_token_keys():
        value = ctx.extras[key]
        extras[key] = torch.cat([value, value.new_zeros((B, R))], dim=1)  # response tokens are text
    input_ids = torch.cat([ctx.input_ids, resp], dim=1)
    attention_mask = torch.cat([ctx.attention_mask, resp_mask], dim=1)
    return input_ids, attention_mask, extras, R
