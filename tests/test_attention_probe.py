"""The object-attention probe: where the LM's answer position looks when asked where an object is."""

from __future__ import annotations

import pytest
import torch

from mgsd.eval.attention import object_attention
from mgsd.models import Backbone, init_tiny
from mgsd.models.positions import cell_mask


def test_cell_mask_picks_the_tokens_whose_centre_lies_in_the_cell() -> None:
    m = cell_mask(8, 8, 4, 4, (1, 2)).view(8, 8)  # 8x8 tokens over a 4x4 grid: 2x2 tokens per cell
    assert m.sum() == 4 and m[2:4, 4:6].all()
    assert cell_mask(8, 8, 8, 8, (7, 0)).view(8, 8)[7, 0] and cell_mask(8, 8, 8, 8, (7, 0)).sum() == 1
    assert sum(cell_mask(8, 8, 3, 3, (r, c)).sum() for r in range(3) for c in range(3)) == 64


def test_object_attention_reports_normalised_statistics_per_layer_and_head(tmp_path) -> None:
    bb = Backbone.load(init_tiny(tmp_path / "m", seed=0))
    before = bb.model.config._attn_implementation
    r = object_attention(bb, n=4)
    assert bb.model.config._attn_implementation == before  # restored
    cfg = bb.model.config.text_config
    assert r["n"] == 4 and len(r["layers"]) == cfg.num_hidden_layers
    for heads in r["layers"]:
        assert len(heads) == cfg.num_attention_heads
        for h in heads:
            assert 0 < h["image_mass"] <= 1 and 0 < h["entropy"] <= 1.0001
            assert 0 <= h["on_object"] <= 1 and 0 < h["uniform"] < 1
    # an untrained model has no reason to look at the object: its best head is near uniform
    assert r["best_head"]["on_object_over_uniform"] == pytest.approx(1.0, abs=1.5)
    assert torch.is_grad_enabled()
