"""Attention grounding: teach the LM to look where a cell it writes is.

Why this exists (measured, README "The tiny pretrained base"): the tiny base's visual tokens carry
each cell's position and content (a read-out head decodes row and column at 96%), yet its LM pools
the picture. Asked where an object is, the answering position's attention over the image is close
to uniform, so it answers at chance, and 900 steps of next-token loss on such questions did not move
it. A pretrained VLM has learned that lookup from billions of captions; the tiny one has to be shown.

The loss: whenever an image example's target writes a cell, as a coordinate token ``(r,c)`` or as a
glyph of a row-by-row drawing (the maze's ``open_dirs``), the position that predicts that token is
asked to put the attention of one head per chosen layer on the image tokens whose centre lies in
that cell: ``-log(attention mass on the cell)``, averaged over such positions. Nothing else about
the model or its inference changes; the next-token loss still decides what is written. No library
does this (it needs the attention weights of one forward and the cell each target token names), so
it is written here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mgsd.models.positions import cell_mask
from mgsd.tasks.maze import GLYPHS

_SIZE = re.compile(r"(?:^|\n)(?:map_)?size: (\d+)x(\d+)")
_CELL = re.compile(r"^\s*\((\d+),(\d+)\)\s*$")
_GLYPH_SET = frozenset(GLYPHS.values())


def grid_size(target: str) -> tuple[int, int] | None:
    """The ``rows x cols`` a target's facts state (``size: 4x4`` or ``map_size: 5x5``), if any."""
    m = _SIZE.search(target)
    return (int(m.group(1)), int(m.group(2))) if m else None


def token_cells(pieces: Sequence[str]) -> list[tuple[int, int] | None]:
    """For each decoded target token, the grid cell it names, else None.

    A coordinate token names its cell. A line made only of box-drawing glyphs is one row of a
    drawing; consecutive such lines are rows 0, 1, ... and each glyph names its column.
    """
    cells: list[tuple[int, int] | None] = []
    lines: list[list[int]] = [[]]  # token indices per line
    for i, piece in enumerate(pieces):
        m = _CELL.match(piece)
        cells.append((int(m.group(1)), int(m.group(2))) if m else None)
        if piece == "\n":
            lines.append([])
        else:
            lines[-1].append(i)
    row = 0
    for line in lines:
        if line and all(pieces[i] in _GLYPH_SET for i in line):
            for col, i in enumerate(line):
                cells[i] = (row, col)
            row += 1
        else:
            row = 0
    return cells


class AttentionTap:
    """Keeps the attention weights of chosen decoder layers in the last forward (forward hooks on
    their ``self_attn``; the model must run eager attention, which returns the weights)."""

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        decoder = [m for n, m in model.named_modules() if n.endswith("language_model.layers")]
        if not decoder:
            raise ValueError("the model has no language_model.layers to ground")
        blocks = decoder[0]
        bad = [i for i in layers if not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(f"grounding_layers {bad} out of range: the LM has {len(blocks)} layers")
        self.weights: dict[int, torch.Tensor] = {}
        self._handles = [blocks[i].self_attn.register_forward_hook(self._hook(i)) for i in layers]

    def _hook(self, index: int) -> Any:
        def keep(module: nn.Module, args: Any, output: Any) -> None:
            w = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if w is None:
                raise RuntimeError("attention grounding needs eager attention (no weights returned)")
            self.weights[index] = w

        return keep

    def take(self) -> list[torch.Tensor]:
        if not self.weights:
            raise RuntimeError("no grounded layer ran in this forward")
        out = [self.weights[i] for i in sorted(self.weights)]
        self.weights = {}
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def grounding_loss(
    weights: Sequence[torch.Tensor],
    input_ids: torch.Tensor,
    image_token_id: int,
    prompt_len: int,
    cells: Sequence[Sequence[tuple[int, int] | None]],
    grids: Sequence[tuple[int, int, int, int]],
    head: int = 0,
) -> tuple[torch.Tensor | None, int]:
    """Mean ``-log`` attention mass of ``head`` on the named cell, over every target token that
    names one and every grounded layer; ``None`` when no token names a cell.

    ``weights``: per layer ``(B, heads, T, T)`` over the prompt + response sequence whose prompt
    part is ``prompt_len`` long; ``cells[b][t]``: the cell response token ``t`` names;
    ``grids[b]``: ``(token rows, token cols, drawing rows, drawing cols)`` of sample ``b``'s image.
    Returns the loss and the number of grounded positions.
    """
    terms = []
    for b, sample in enumerate(cells):
        image = (input_ids[b] == image_token_id).nonzero().squeeze(1)
        gh, gw, rows, cols = grids[b]
        if len(image) != gh * gw:
            raise RuntimeError(f"sample {b}: {len(image)} image tokens for a {gh}x{gw} token grid")
        for t, cell in enumerate(sample):
            if cell is None or not (0 <= cell[0] < rows and 0 <= cell[1] < cols):
                continue
            on = cell_mask(gh, gw, rows, cols, cell)
            if not on.any():  # a cell smaller than a token holds no token centre
                continue
            pos = prompt_len - 1 + t  # the position that predicts response token t
            for w in weights:
                mass = w[b, head, pos, image[on.to(image.device)]].float().sum()
                terms.append(-torch.log(mass + 1e-6))
    if not terms:
        return None, 0
    return torch.stack(terms).mean(), len(terms) // max(len(weights), 1)
