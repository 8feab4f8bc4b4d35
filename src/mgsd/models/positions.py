"""Position ids, computed explicitly for every forward so padding and context never shift them.

Text positions count only real tokens (``cumsum(mask) - 1``), so a left-padded row gets the same
positions as the unpadded sample. Qwen-VL models use M-RoPE: three more rows (temporal, height,
width) from the model's own ``get_rope_index``, which lays out each image on its grid and resumes
text after it; their text models accept ``(4, B, L)`` = text row + the three M-RoPE rows. This is
exactly what ``generate`` builds for the prompt, so scoring and sampling use the same positions.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn


def rope_index_owner(model: nn.Module) -> nn.Module | None:
    """The (sub)module that implements Qwen-style ``get_rope_index``, if any."""
    for candidate in (model, getattr(model, "model", None)):
        if candidate is not None and callable(getattr(candidate, "get_rope_index", None)):
            return candidate
    return None


def text_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row; 0 on padding."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def position_ids(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, extras: dict[str, Any]
) -> torch.Tensor:
    """``(4, B, L)`` for Qwen-VL models (text + M-RoPE), ``(B, L)`` otherwise."""
    text = text_positions(attention_mask)
    owner = rope_index_owner(model)
    if owner is None:
        return text
    has_vision = extras.get("image_grid_thw") is not None or extras.get("video_grid_thw") is not None
    if has_vision:
        params = inspect.signature(owner.get_rope_index).parameters
        candidates = {"attention_mask": attention_mask, **extras}
        kwargs = {k: v for k, v in candidates.items() if k in params and v is not None}
        vision, _ = owner.get_rope_index(input_ids, **kwargs)
    else:
        vision = text.unsqueeze(0).expand(3, -1, -1)
    return torch.cat([text.unsqueeze(0), vision.to(text.device)], dim=0)


def cell_mask(grid_h: int, grid_w: int, rows: int, cols: int, cell: tuple[int, int]) -> torch.Tensor:
    """Which of a ``grid_h x grid_w`` grid of merged visual tokens (row-major, as the image is laid
    out) have their centre in ``cell`` of a full-bleed ``rows x cols`` grid drawing."""
    r = ((torch.arange(grid_h) + 0.5) / grid_h * rows).floor().long() == cell[0]
    c = ((torch.arange(grid_w) + 0.5) / grid_w * cols).floor().long() == cell[1]
    return (r[:, None] & c[None, :]).flatten()
