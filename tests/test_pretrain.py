"""Pretraining pieces: synthetic scenes, the pretrain mixture, task-balanced order, hash exclusion."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from mgsd.data.generate import generate_rows, state_hash
from mgsd.data.scenes import (
    QUESTION_KINDS,
    SCENE_TASK,
    generate_scene,
    scene_image,
    scene_question,
    scene_rows,
    scene_target,
)
from mgsd.scoring.perception import parse_section, split_keyed
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


def test_scene_questions_answer_from_the_spec_and_cover_every_kind():
    seen = set()
    for seed in range(60):
        scene = generate_scene(random.Random(seed))
        objects = {tuple(o["cell"]): f"{o['colour']} {o['shape']}" for o in scene["objects"]}
        for key in range(8):
            kind, prompt, target = scene_question(scene, key)
            seen.add(kind)
            if kind == "where":
                name = prompt.removeprefix("Where is the ").split("?")[0]
                assert objects[tuple(int(x) for x in target.strip("()").split(","))] == name
            elif kind == "what":
                cell = tuple(int(x) for x in prompt.split("(")[1].split(")")[0].split(","))
                assert target == objects.get(cell, "nothing")
            elif kind == "colour":
                colour = prompt.removeprefix("Which cells are filled ").split("?")[0]
                assert target == ", ".join(f"({r},{c})" for r, c in scene["fills"][colour])
            else:
                assert target == f"{scene['size']}x{scene['size']}"
            assert scene_question(scene, key) == (kind, prompt, target)  # deterministic
    assert seen == set(QUESTION_KINDS)


def test_scene_questions_share_replaces_descriptions_only_for_scene_rows():
    rows = generate_rows(get_task("maze"), [3], 4, split="pretrain", seed=0, render=False, progress=False)
    rows += scene_rows(40, seed=0, progress=False)
    plain = build_examples(rows, "pretrain")
    asked = build_examples(rows, "pretrain", scene_questions=0.5)
    described = [a for a in asked if a.task == SCENE_TASK and a.target.startswith("size: ")]
    questions = [a for a in asked if a.task == SCENE_TASK and not a.target.startswith("size: ")]
    assert 8 <= len(questions) <= 32 and len(described) + len(questions) == 40
    assert all(q.image for q in questions)
    assert [e.target for e in plain if e.task != SCENE_TASK] == [
        e.target for e in asked if e.task != SCENE_TASK
    ]
    all_asked = build_examples(rows, "pretrain", scene_questions=1.0)
    assert not any(
        a.target.startswith("size: ") and a.task == SCENE_TASK and "\n" in a.target for a in all_asked
    )


def test_question_kinds_restrict_the_questions_asked():
    import pytest

    from mgsd.train.config import TrainConfig

    rows = scene_rows(40, seed=0, progress=False)
    asked = build_examples(rows, "pretrain", scene_questions=1.0, question_kinds=("where",))
    with_objects = [a for a in asked if json.loads(a.state)["objects"]]
    assert with_objects and all(a.prompt.startswith("Where is the ") for a in with_objects)
    # a scene with no object can only be asked its size
    assert all(a.target.endswith("x" + a.target.split("x")[0]) for a in asked if a not in with_objects)
    scene = generate_scene(random.Random(0))
    kinds = {scene_question(scene, k, ("where", "what"))[0] for k in range(8)}
    assert kinds == {"where", "what"}
    with pytest.raises(ValueError, match="question kinds"):
        scene_question(scene, 0, ("where", "shape"))
    with pytest.raises(ValueError, match="question_kinds"):
        TrainConfig(objective="pretrain", scene_questions=0.5, question_kinds=["colours"])


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


def test_weighted_order_gives_a_task_its_share():
    groups = [list(range(0, 40)), list(range(40, 50))]
    order = epoch_order(50, "0/pretrain/0", groups, weights=[1, 3])
    share = Counter(0 if i < 40 else 1 for i in order)
    assert share[1] == 3 * share[0] and share[0] == 40  # the epoch ends when group 0 has run once
    assert order[0] < 40 and all(i >= 40 for i in order[1:4])  # a turn: 1 of group 0, then 3 of group 1


def test_dense_labels_name_the_cell_under_each_token():
    import torch

    from mgsd.train.dense import GROUPS, IGNORE, scene_token_labels

    col = {name: i for i, (name, _) in enumerate(GROUPS)}
    scene = {
        "kind": "fills",
        "size": 8,
        "background": "white",
        "fills": {"red": [[0, 0]]},
        "objects": [{"shape": "disc", "colour": "blue", "cell": [3, 4]}],
    }
    lab = scene_token_labels(scene, 8, 8)
    assert lab.shape == (64, len(GROUPS))
    assert lab[3 * 8 + 4, col["row"]] == 3 and lab[3 * 8 + 4, col["col"]] == 4  # raster order, 1 cell/token
    assert lab[3 * 8 + 4, col["shape"]] == 1  # SHAPES[0] = disc, 0 = none
    assert lab[0, col["colour"]] != lab[1, col["colour"]]  # red fill vs white background
    assert bool((lab[:, col["size"]] == 5).all()) and bool((lab[:, col["open"]] == IGNORE).all())
    # a 4x4 grid: each cell spans 2x2 tokens; walls give every cell its open sides (D,L,R,U bits)
    scene4 = {**scene, "size": 4, "kind": "walls", "objects": [], "fills": {}}
    scene4["open"] = [["DR", "DL", "D", "D"], ["U", "U", "RU", "LU"], ["", "", "", ""], ["", "", "", ""]]
    lab4 = scene_token_labels(scene4, 8, 8)
    assert lab4[1 * 8 + 1, col["row"]] == 0 and lab4[2 * 8 + 7, col["col"]] == 3
    assert lab4[0, col["open"]] == 0b101 and lab4[2 * 8 + 5, col["open"]] == 0b1100
    assert torch.equal(lab4[0], lab4[9])  # tokens (0,0) and (1,1) lie in the same cell


def test_dense_pretraining_trains_and_saves_a_plain_model(tmp_path):
    from safetensors import safe_open

    from mgsd.data.io import write_rows
    from mgsd.models.tiny import init_tiny
    from mgsd.train.config import TrainConfig
    from mgsd.train.trainer import train

    rows = scene_rows(8, seed=0, progress=False)
    rows += generate_rows(
        get_task("frozenlake"), [3], 4, split="pretrain", seed=0, render=False, progress=False
    )
    write_rows(rows, tmp_path / "data" / "mix.parquet")
    init = init_tiny(tmp_path / "init", seed=0)
    cfg = TrainConfig(
        objective="pretrain",
        model=str(init),
        out=str(tmp_path / "run"),
        train_data=[str(tmp_path / "data")],
        max_steps=2,
        batch_size=4,
        micro_batch_size=4,
        dense_weight=1.0,
        task_weights={SCENE_TASK: 3},
        progress=False,
        save_every=0,
    )
    cfg.lora.train_vision = True
    train(cfg)
    logs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if x]
    assert any("dense_row_acc" in r for r in logs)
    with safe_open(str(next((tmp_path / "run" / "model").glob("*.safetensors"))), "pt") as f:
        assert not [k for k in f.keys() if "dense" in k]  # noqa: SIM118 (the head is not in the model)


def test_reset_vision_keeps_the_lm_and_starts_the_tower_afresh(tmp_path):
    import torch

    from mgsd.models.backbone import Backbone
    from mgsd.models.tiny import init_tiny
    from mgsd.train.pretrain import reset_vision_tower

    a = init_tiny(tmp_path / "a", seed=1)
    bb = Backbone.load(a)
    with torch.no_grad():
        for p in bb.model.parameters():
            p.add_(1.0)  # stands in for training
    bb.save(tmp_path / "trained")
    out = reset_vision_tower(tmp_path / "trained", tmp_path / "reset", "tiny", seed=1)
    trained = dict(Backbone.load(tmp_path / "trained").model.named_parameters())
    reset = dict(Backbone.load(out).model.named_parameters())
    fresh = dict(Backbone.load(a).model.named_parameters())
    for name, p in reset.items():
        ref = fresh[name] if ".visual." in f".{name}" else trained[name]
        assert torch.equal(p, ref), name


def test_model_card_reports_gates_questions_and_attention(tmp_path):
    from mgsd.data.generate import HASHES_FILE
    from mgsd.pipeline.base_card import write_model_card
    from mgsd.train.pretrain import PretrainConfig

    def block(s):
        by_task = {
            t: {"success": s, "ci": [s - 0.1, s + 0.1]} for t in ("frozenlake", "maze", "minibehaviour")
        }
        return {"macro": {"success": s, "ci": [s - 0.05, s + 0.05]}, "by_task": by_task}

    head = {"image_mass": 0.5, "entropy": 0.9, "on_object": 0.05, "uniform": 0.05}
    gates = {
        "teacher": {"n": 360, "teacher+plan": block(0.8), "teacher": block(0.6), "reference_logprob": {}},
        "text": block(0.6),
        "image": block(0.03),
        "passed": {"copy_per_task": False, "text_macro": True, "image_over_text": True},
        "scene_perception": {"size": {"accuracy": 1.0, "lines": 60}},
        "scene_questions": {"where": {"accuracy": 0.03, "n": 66, "ci": [0.008, 0.104], "chance": 0.054}},
        "object_attention": {
            "n": 32,
            "layers": [[head, head]],
            "best_head": {"layer": 0, "head": 1, "on_object_over_uniform": 2.3},
        },
    }
    root, base = tmp_path / "run", tmp_path / "run" / "base"
    (root / "train").mkdir(parents=True)
    base.mkdir()
    (root / "train" / "log.jsonl").write_text('{"step": 1, "loss": 0.7, "step_time": 60.0}\n')
    (base / HASHES_FILE).write_text("ab\ncd\n")
    write_model_card(base, PretrainConfig(scene_questions=0.5), gates, root)
    card = (base / "README.md").read_text()
    assert "| where | 3.0 [0.8, 10.4] | 66 | 5.4 |" in card
    assert "| 0 | 0.50 | 0.90 | 0.050 | 0.050 |" in card and "layer 0 head 1, 2.30x uniform" in card
    assert "50% of scene rows are one short question" in card and "copy" in card and "FAIL" in card


def test_pretrain_levels_and_states_per_task_read_old_keys_too() -> None:
    """``levels`` / ``per_level`` map task -> value; an older config's ``maze_levels`` /
    ``maze_per_level`` keys read as the same settings, and a task not named gets the defaults."""
    from mgsd.config import ConfigError, from_dict
    from mgsd.train.pretrain import PretrainConfig

    new = from_dict(PretrainConfig, {"data": {"levels": {"maze": "3-4"}, "per_level": {"maze": 7}}})
    old = from_dict(PretrainConfig, {"data": {"maze_levels": "3-4", "maze_per_level": 7}})
    assert old.data == new.data
    assert new.data.task_levels("maze") == [3, 4] and new.data.states_per_level("maze") == 7
    assert new.data.task_levels("frozenlake") == [3, 4, 5, 6, 7, 8]
    assert new.data.states_per_level("frozenlake") == 1000
    with pytest.raises(ConfigError, match=r"data\.bogus_levels_x"):
        from_dict(PretrainConfig, {"data": {"bogus_levels_x": 1}})


def test_a_run_recorded_with_the_old_pretrain_keys_reads_as_unchanged() -> None:
    """A run's settings.json from before the mappings holds ``<task>_levels`` / ``<task>_per_level``:
    read as today's keys it equals today's defaults, so a rerun does not redo the pretraining."""
    from mgsd.config import changed_keys, to_dict
    from mgsd.pipeline.config import PipelineConfig, upgrade_config

    today = to_dict(PipelineConfig())
    old_data = {k: v for k, v in today["pretrain"]["data"].items() if k not in ("levels", "per_level")}
    old_data = {k: v for k, v in old_data.items() if k not in ("tasks", "default_per_level")}
    for task in ("frozenlake", "maze", "minibehaviour"):
        old_data[f"{task}_levels"] = today["pretrain"]["data"]["levels"][task]
        old_data[f"{task}_per_level"] = today["pretrain"]["data"]["per_level"][task]
    old = {**today, "pretrain": {**today["pretrain"], "data": old_data}}
    assert changed_keys({"config": upgrade_config(old)}, {"config": today}, []) == []
    assert changed_keys({"config": old}, {"config": today}, []) != []
