"""Pretraining pieces: synthetic scenes, the pretrain mixture, task-balanced order, hash exclusion."""

from __future__ import annotations

import json
import random
from collections import Counter

from mgsd.data.generate import generate_rows, state_hash
from mgsd.data.scenes import SCENE_TASK, generate_scene, scene_image, scene_rows, scene_target
from mgsd.eval.perception import parse_section, split_keyed
from mgsd.tasks import get_task
from mgsd.train.examples import build_examples
from mgsd.train.trainer import epoch_order


def test_scenes_are_deterministic_and_described_in_the_facts_format():
    a, b = scene_rows(6, seed=3, progress=False), scene_rows(6, seed=3, progress=False)
    assert [r["state"] for r in a] == [r["state"] for r in b] and [r["image"] for r in a] == [
        r["image"] for r in b
    ]
    assert scene_rows(6, seed=4, progress=False)[0]["state"] != a[0]["state"]
    for seed in range(40):
        scene = generate_scene(random.Random(seed))
        n = scene["size"]
        target = scene_target(scene)
        keys = [line.split(":")[0] for line in target.splitlines() if ":" in line]
        sections = split_keyed(target, keys)
        assert parse_section("size", sections["size"]) == (n, n)
        for o in scene["objects"]:
            assert parse_section("position", sections[f"{o['colour']} {o['shape']}"]) == tuple(o["cell"])
        cells = [tuple(c) for o in scene["objects"] for c in [o["cell"]]]
        assert len(cells) == len(set(cells))  # one object per cell
        if scene["kind"] == "walls":
            grid = parse_section("open_dirs", sections["open_dirs"])
            assert len(grid) == n * n
            for (r, c), dirs in grid.items():  # a side open from one cell is open from its neighbour
                if "right" in dirs:
                    assert "left" in grid[(r, c + 1)]
                if "down" in dirs:
                    assert "up" in grid[(r + 1, c)]
        assert scene_image(scene).size == (256, 256)


def test_pretrain_mixture_pairs_scenes_with_images_and_tasks_with_text_only():
    task = get_task("maze")
    rows = generate_rows(task, [3], 4, split="pretrain", seed=0, render=False, progress=False)
    rows += scene_rows(3, seed=0, progress=False)
    exs = build_examples(rows, "pretrain")
    scenes = [e for e in exs if e.task == SCENE_TASK]
    tasks = [e for e in exs if e.task != SCENE_TASK]
    assert len(scenes) == 3 and all(e.image and e.target.startswith("size: ") for e in scenes)
    # never a task render paired with its state or plan: task examples are text only
    assert len(tasks) == 4 and all(e.image is None for e in tasks)
    assert json.loads(scenes[0].state)["size"] >= 3


def test_balanced_order_gives_every_task_an_equal_share_and_depends_on_the_objective():
    groups = [list(range(0, 60)), list(range(60, 80)), list(range(80, 85))]
    order = epoch_order(85, "0/pretrain/0", groups)
    share = Counter(0 if i < 60 else 1 if i < 80 else 2 for i in order)
    assert share[0] == share[1] == share[2] == 60
    assert set(order[: 3 * 20]) >= set(range(60, 80))  # the small task cycles, it is not dropped
    assert epoch_order(85, "0/perception/0") != epoch_order(85, "0/opsd/0")
    assert sorted(epoch_order(85, "0/plan/0")) == list(range(85))


def test_generation_excludes_hashed_states():
    task = get_task("frozenlake")
    first = generate_rows(task, [3], 30, split="x", seed=0, render=False, progress=False)
    hashes = frozenset(state_hash(r["state"]) for r in first)
    again = generate_rows(
        task, [3], 30, split="x", seed=0, render=False, progress=False, exclude_hashes=hashes
    )
    assert not {state_hash(r["state"]) for r in again} & hashes
