"""Attention grounding: which target tokens name which cell, and a loss that rewards looking there."""

import json
import math

import pytest
import torch

from mgsd.models.positions import cell_mask
from mgsd.train.grounding import AttentionTap, grid_size, grounding_loss, token_cells


def test_coordinates_and_glyph_rows_name_their_cells():
    pieces = [
        "size",
        ":",
        " 2x3",
        "\n",
        "player",
        ":",
        " (1,2)",
        "\n",
        "open",
        "_",
        "dirs",
        ":",
        "\n",
        "┌",
        "┐",
        "╷",
        "\n",
        "└",
        "┘",
        "│",
        "\n",
        "goal",
        ":",
        " (0,0)",
    ]
    cells = token_cells(pieces)
    assert cells[6] == (1, 2) and cells[23] == (0, 0)
    assert [cells[i] for i in (13, 14, 15, 17, 18, 19)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert all(c is None for i, c in enumerate(cells) if i not in (6, 23, 13, 14, 15, 17, 18, 19))


def test_grid_size_reads_the_facts_size_line():
    assert grid_size("size: 4x4\nplayer: (0,1)") == (4, 4)
    assert grid_size("map_size: 5x5\nagent: (4,3)") == (5, 5)
    assert grid_size("(0,1)") is None


def test_cell_mask_picks_the_tokens_centred_in_the_cell():
    m = cell_mask(8, 8, 4, 4, (1, 2)).view(8, 8)
    assert m.sum() == 4 and m[2:4, 4:6].all()
    assert cell_mask(8, 8, 16, 16, (0, 1)).sum() == 0  # a cell smaller than a token holds no centre


def test_loss_is_low_when_the_head_looks_at_the_cell_and_high_when_it_pools():
    # One sample: prompt of 3 text + 4 image tokens (2x2 token grid of a 2x2 drawing), 2 response tokens.
    img = 9
    ids = torch.tensor([[1, 2, img, img, img, img, 3]])
    L, T = ids.shape[1], ids.shape[1] + 2
    cells = [[(1, 0), None]]  # response token 0 names cell (1,0) = image token 2 (index 4)
    grids = [(2, 2, 2, 2)]
    looking = torch.zeros(1, 2, T, T)
    looking[0, 0, L - 1, 4] = 1.0
    pooling = torch.zeros(1, 2, T, T)
    pooling[0, 0, L - 1, 2:6] = 0.25
    good, n = grounding_loss([looking], ids, img, L, cells, grids)
    bad, _ = grounding_loss([pooling], ids, img, L, cells, grids)
    assert n == 1 and good < 1e-3 and float(bad) == pytest.approx(-math.log(0.25 + 1e-6), rel=1e-4)
    assert grounding_loss([pooling], ids, img, L, [[None, None]], grids) == (None, 0)


def test_perception_training_with_grounding_logs_the_loss(tmp_path):
    from mgsd.data.generate import generate_dataset
    from mgsd.models import init_tiny
    from mgsd.tasks import get_task
    from mgsd.train.config import TrainConfig
    from mgsd.train.trainer import train

    model = init_tiny(tmp_path / "tiny", preset="tiny", seed=0)
    generate_dataset(
        get_task("maze"), [3], 8, split="train", seed=0, out=tmp_path / "train", progress=False, workers=1
    )
    cfg = TrainConfig(
        objective="perception",
        model=str(model),
        out=str(tmp_path / "run"),
        train_data=[str(tmp_path / "train")],
        max_steps=2,
        batch_size=4,
        micro_batch_size=4,
        progress=False,
        save_every=0,
        grounding_weight=1.0,
        grounding_layers=[0, 3],
    )
    train(cfg)
    logs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if x]
    assert all(r["grounding_loss"] > 0 for r in logs if "loss" in r and "val_loss" not in r)
    assert any("grounding_loss" in r for r in logs)


def test_grounding_refuses_layers_the_model_does_not_have(tmp_path):
    from mgsd.models import init_tiny
    from mgsd.models.backbone import Backbone

    bb = Backbone.load(init_tiny(tmp_path / "tiny", preset="tiny", seed=0))
    with pytest.raises(ValueError, match="out of range"):
        AttentionTap(bb.model, [7])


def test_grounding_is_refused_for_stage_2():
    from mgsd.train.config import TrainConfig

    with pytest.raises(ValueError, match="grounding_weight is for the SFT objectives"):
        TrainConfig(objective="opsd", grounding_weight=1.0)
