"""Exports for LLaMA-Factory, EasyR1 and verl, and the reward file shipped with the RL exports.

Moved here from test_data.py's schema check, plus what a user of those trainers needs to hold: the
image where our own training puts it, train and val side by side, and a reward that scores any plan
reaching the goal, not only the one stored.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from mgsd.cli import main
from mgsd.data import easyr1_reward
from mgsd.data.exporters import export_easyr1, export_llamafactory, export_verl
from mgsd.data.generate import generate_dataset
from mgsd.data.io import DataError, png_bytes, write_rows
from mgsd.tasks import TASK_NAMES, get_task

# A 3x3 lake with one hole in the middle: RRDD and DDRR are both shortest plans.
TWO_WAYS = {"grid": ["SFF", "FHF", "FFG"]}


@pytest.fixture(scope="module")
def two_ways(tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = get_task("frozenlake")
    state = task.validate(TWO_WAYS)
    plan = task.solve(state)
    row = {
        "id": "frozenlake/train/level3/two_ways",
        "task": "frozenlake",
        "level": 3,
        "split": "train",
        "state": task.dump_state(state),
        "image": png_bytes(task.render(state)),
        "optimal_plan": task.format_plan(plan),
        "optimal_length": len(plan),
        "source": "mgsd",
    }
    out = tmp_path_factory.mktemp("two_ways")
    write_rows([row], out / "frozenlake_train.parquet")
    return out


def answer(plan: str) -> str:
    return f"size: 3x3\nPath: ...\n<answer>{plan}</answer>"


def test_the_reward_scores_an_alternative_optimal_plan_as_a_success(two_ways: Path, tmp_path: Path) -> None:
    path = export_easyr1(two_ways, tmp_path)
    (row,) = pq.read_table(path).to_pylist()
    stored = row["optimal_plan"]
    other = {"RRDD": "DDRR", "DDRR": "RRDD"}[stored]  # the shortest plan the file does not store
    truth = json.loads(row["answer"])
    assert truth["task"] == "frozenlake" and truth["level"] == 3 and truth["plan"] == stored
    assert json.loads(truth["state"]) == TWO_WAYS  # the canonical state, so the reward can replay
    inputs = [
        {"response": answer(p), "ground_truth": row["answer"], "response_length": 9} for p in (stored, other)
    ]
    inputs += [
        {"response": answer("RD"), "ground_truth": row["answer"]},  # into the hole
        {"response": answer("RRDDL"), "ground_truth": row["answer"]},  # reaches the goal, not shortest
        {"response": "I would go right.", "ground_truth": row["answer"]},  # no answer block
    ]
    scores = easyr1_reward.compute_score(inputs)
    assert [s["accuracy"] for s in scores] == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert [s["optimal"] for s in scores] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert scores[2]["invalid"] == 1.0 and [s["format"] for s in scores] == [1.0] * 4 + [0.0]
    assert [s["overall"] for s in scores] == [s["accuracy"] for s in scores]  # format_weight 0
    weighted = easyr1_reward.compute_score(inputs[4], format_weight=0.1)  # EasyR1 "sequential": one dict
    assert weighted["overall"] == 0.0 and isinstance(weighted, dict)
    assert easyr1_reward.compute_score(inputs[2:3], format_weight=0.1)[0]["overall"] == pytest.approx(0.1)


def test_the_reward_file_loads_by_path_without_torch(tmp_path: Path) -> None:
    # EasyR1 and verl load the file by path (not as a package module); torch must not be needed.
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('custom_reward_fn', {easyr1_reward.__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "assert callable(mod.compute_score) and callable(mod.verl_compute_score)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)
    assert importlib.util.find_spec("mgsd.data.easyr1_reward") is not None


def test_the_reward_refuses_a_ground_truth_that_is_not_ours() -> None:
    with pytest.raises(ValueError, match="not mgsd JSON"):
        easyr1_reward.compute_score([{"response": answer("R"), "ground_truth": "RRDD"}])
    with pytest.raises(ValueError, match="task, state, optimal_length"):
        easyr1_reward.score(answer("R"), {"task": "frozenlake"})


def test_verl_export_has_verl_layout_and_its_reward_scores_any_plan(two_ways: Path, tmp_path: Path) -> None:
    path = export_verl(two_ways, tmp_path)
    assert path.name == "verl_train.parquet"
    (row,) = pq.read_table(path).to_pylist()
    assert row["data_source"] == "mgsd/frozenlake" and row["ability"] == "visual_spatial_planning"
    (turn,) = row["prompt"]
    assert (
        turn["role"] == "user"
        and turn["content"].endswith("<image>")
        and turn["content"].count("<image>") == 1
    )
    assert len(row["images"]) == 1 and row["reward_model"]["style"] == "rule"
    extra = row["extra_info"]
    assert extra["level"] == 3 and extra["id"] == "frozenlake/train/level3/two_ways" and extra["index"] == 0
    gt = row["reward_model"]["ground_truth"]
    for plan in ("RRDD", "DDRR"):
        out = easyr1_reward.verl_compute_score(row["data_source"], answer(plan), gt, extra)
        assert out["score"] == 1.0 and out["optimal"] == 1.0
    assert easyr1_reward.verl_compute_score("mgsd/frozenlake", answer("DR"), gt)["score"] == 0.0


def test_easyr1_export_documents_pixels_and_the_reward_file(two_ways: Path, tmp_path: Path) -> None:
    export_easyr1(two_ways, tmp_path)
    export_verl(two_ways, tmp_path)  # one RECIPE.md, a section per trainer
    recipe = (tmp_path / "RECIPE.md").read_text()
    assert "data.min_pixels=65536 data.max_pixels=65536" in recipe  # 256x256 renders, not upsized
    assert f"worker.reward.reward_function={Path(easyr1_reward.__file__).resolve()}:compute_score" in recipe
    assert (
        "## EasyR1" in recipe
        and "## verl" in recipe
        and "custom_reward_function.name=verl_compute_score" in recipe
    )


def test_llamafactory_train_then_val_into_one_folder_keeps_both(tmp_path: Path, capsys) -> None:
    task = get_task("frozenlake")
    for split, seed in (("train", 0), ("val", 1)):
        generate_dataset(
            task, [3], 2, split=split, seed=seed, out=tmp_path / split, progress=False, workers=1
        )
    out = tmp_path / "lf"
    out.mkdir()
    theirs = {"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}  # a user's own entry
    (out / "dataset_info.json").write_text(json.dumps(theirs))
    assert main(["data", "export", "llamafactory", "--data", str(tmp_path / "train"), "--out", str(out)]) == 0
    assert main(["data", "export", "llamafactory", "--data", str(tmp_path / "val"), "--out", str(out)]) == 0
    assert "RECIPE.md" in capsys.readouterr().out
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"alpaca_en_demo", "mgsd_perception_sft_train", "mgsd_perception_sft_val"}
    for split in ("train", "val"):
        entry = info[f"mgsd_perception_sft_{split}"]
        assert entry["formatting"] == "sharegpt" and entry["file_name"] == f"mgsd_perception_sft_{split}.json"
        records = json.loads((out / entry["file_name"]).read_text())
        assert len(records) == 2 and all(f"/{split}/" in r["source_text"] for r in records)
        for rec in records:
            user = rec["messages"][0]["content"]
            assert user.endswith("<image>") and user.count("<image>") == 1  # text first, as our training
            assert (out / rec["images"][0]).is_file()
    assert "image_min_pixels: 65536" in (out / "RECIPE.md").read_text()


def test_llamafactory_refuses_a_broken_dataset_info_and_writes_nothing(
    two_ways: Path, tmp_path: Path
) -> None:
    (tmp_path / "dataset_info.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dataset_info\.json is not valid JSON"):
        export_llamafactory(two_ways, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset_info.json"]


def test_exports_of_every_task_load_with_datasets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in TASK_NAMES:
        task = get_task(name)
        generate_dataset(task, task.levels[:1], 3, split="train", seed=0, out=data, progress=False)
    sft = json.loads(export_llamafactory(data, tmp_path / "lf").read_text())
    assert len(sft) == 9 and sft[0]["messages"][1]["content"].startswith("size: ")  # the facts block
    opcd = load_dataset(
        "parquet",
        data_files=str(export_easyr1(data, tmp_path / "r1")),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert set(opcd.column_names) >= {
        "problem",
        "answer",
        "images",
        "teacher_images",
        "task",
        "vsp_task_text",
        "teacher_system_prompt",
        "teacher_text_context",
    }
    r = opcd[0]
    assert r["problem"].endswith("<image>")
    assert r["optimal_plan"] in r["teacher_text_context"]
    assert len(r["images"]) == 1 and r["teacher_images"] == []
    # Every stored plan scores as optimal through the shipped reward.
    scores = easyr1_reward.compute_score(
        [{"response": answer(x["optimal_plan"]), "ground_truth": x["answer"]} for x in opcd]
    )
    assert all(s["optimal"] == 1.0 for s in scores)
    verl = load_dataset(
        "parquet",
        data_files=str(export_verl(data, tmp_path / "r1")),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert len(verl) == 9 and verl[0]["prompt"][0]["content"] == r["problem"]


def test_exporting_an_empty_dataset_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        export_easyr1(tmp_path / "missing", tmp_path / "out")
