"""Dense grounding for pretraining a vision tower from scratch (scenes only; never task renders).

A from-scratch ViT trained only through the LM's next-token loss learns nothing useful on 2 CPU
cores: at the LM's lr its tokens collapse into one constant vector (cosine 1.0 between cells, norm
~600) and the LM learns to ignore the image; frozen at init, the LM cannot learn to read even the grid
size in a hundred steps. So pretraining adds a dense per-token objective, a segmentation-style pretext
that pretrained VLM towers get from their own pretraining: a temporary linear head reads every merged
visual token and predicts what lies under its centre (the cell's row and column, the grid size, the
cell's colour and shape, and the cell's open sides in wall scenes). The tokens then carry exactly the
facts the LM has to copy into ``key: value`` lines. The head is dropped when pretraining ends: the
saved model is a plain Qwen-VL checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mgsd.data.scenes import COLOURS, SHAPES

_COLOUR_IDS = {c: i for i, c in enumerate(COLOURS)}
_DIRS = "DLRU"  # bit i of the open-sides label: the side _DIRS[i] has no wall
MAX_GRID = 8  # scenes are 3..8 cells a side
# (name, classes): the label groups, in the order of the head's output blocks.
GROUPS: tuple[tuple[str, int], ...] = (
    ("row", MAX_GRID),
    ("col", MAX_GRID),
    ("size", MAX_GRID - 2),
    ("colour", len(COLOURS)),
    ("shape", len(SHAPES) + 1),
    ("open", 16),
)
IGNORE = -100


def scene_token_labels(scene: dict[str, Any], grid_h: int, grid_w: int, size: int = 256) -> torch.Tensor:
    """``(grid_h * grid_w, len(GROUPS))`` labels of the merged tokens of a ``size`` px scene image, in
    raster order (the order Qwen-VL's merger emits them); each token is labelled by the cell under its
    centre."""
    n = scene["size"]
    objects = {tuple(o["cell"]): o for o in scene["objects"]}
    fill = {tuple(c): colour for colour, cells in scene.get("fills", {}).items() for c in cells}
    out = torch.full((grid_h * grid_w, len(GROUPS)), IGNORE, dtype=torch.long)
    for i in range(grid_h):
        for j in range(grid_w):
            y, x = (i + 0.5) * size / grid_h, (j + 0.5) * size / grid_w
            r, c = min(n - 1, int(y * n / size)), min(n - 1, int(x * n / size))
            obj = objects.get((r, c))
            colour = obj["colour"] if obj else fill.get((r, c), scene["background"])
            row = [r, c, n - 3, _COLOUR_IDS[colour], 1 + SHAPES.index(obj["shape"]) if obj else 0, IGNORE]
            if scene["kind"] == "walls":
                sides = scene["open"][r][c]
                row[5] = sum(1 << k for k, d in enumerate(_DIRS) if d in sides)
            out[i * grid_w + j] = torch.tensor(row)
    return out


class DenseHead(nn.Module):
    """One linear read-out per label group over the merged visual tokens."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, sum(k for _, k in GROUPS))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over groups of each group's cross-entropy (ignored labels skipped), and the accuracy of
        every group (for the log)."""
        logits = self.proj(tokens.float())
        losses, acc, start = [], {}, 0
        for g, (name, k) in enumerate(GROUPS):
            lg, lb = logits[:, start : start + k], labels[:, g]
            start += k
            keep = lb != IGNORE
            if not bool(keep.any()):
                continue
            losses.append(nn.functional.cross_entropy(lg[keep], lb[keep]))
            acc[name] = float((lg[keep].argmax(-1) == lb[keep]).float().mean())
        return torch.stack(losses).mean(), acc


class VisualTap:
    """Keeps the merged visual tokens of the last forward of ``visual`` (a forward hook)."""

    def __init__(self, visual: nn.Module) -> None:
        self.tokens: torch.Tensor | None = None
        self._handle = visual.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        tokens = getattr(output, "pooler_output", None)
        if tokens is None:
            tokens = output[0] if isinstance(output, tuple) else output
        self.tokens = tokens

    def take(self) -> torch.Tensor:
        if self.tokens is None:
            raise RuntimeError("the vision tower did not run in this forward")
        tokens, self.tokens = self.tokens, None
        return tokens

    def close(self) -> None:
        self._handle.remove()


def visual_module(model: nn.Module) -> nn.Module:
    """The vision tower + merger of a Qwen-VL model (``model.model.visual`` or ``model.visual``),
    under a PEFT wrapper or not."""
    for name, module in model.named_modules():
        if name.endswith("visual"):
            return module
    raise ValueError("the model has no vision tower named 'visual'")
