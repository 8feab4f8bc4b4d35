"""Bad settings are refused before any work, with one line naming them; stale results are refused."""

import json
import re
from pathlib import Path

import pytest

from mgsd.cli import main
from mgsd.config import ConfigError, apply_overrides, changed_keys, load_config, to_dict
from mgsd.pipeline import PipelineConfig, reconcile, run_settings
from mgsd.tasks import get_task, parse_levels
from mgsd.train.config import TrainConfig


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=-1e-3", "optim.lr"),
        ("max_steps=-5", "max_steps"),
        ("log_every=0", "log_every"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("optim.betas=[0.9, 1.0]", "optim.betas"),
        ("optim.eps=0", "optim.eps"),
        ("optim.warmup_ratio=1.5", "optim.warmup_ratio"),
        ("batch_size=0", "batch_size"),
        ("micro_batch_size=-1", "micro_batch_size"),
        ("epochs=inf", "epochs"),
        ("opsd.top_p=0", "opsd.top_p"),
        ("opsd.max_new_tokens=0", "opsd.max_new_tokens"),
        ("lora.dropout=1", "lora.dropout"),
    ],
)
def test_nonsense_training_settings_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match="^config: " + re.escape(key) + " must be"):
        load_config(TrainConfig, None, [override])


def test_valid_settings_still_load():
    cfg = load_config(TrainConfig, None, ["optim.lr=1e-5", "optim.betas=[0.9, 0.95]", "max_steps=0"])
    assert cfg.optim.lr == 1e-5 and cfg.optim.betas == [0.9, 0.95]
    assert load_config(TrainConfig, None, ["opsd.adv_clip=null"]).opsd.adv_clip is None
    assert load_config(TrainConfig, None, ["progress=off", "lora.r=8"]).progress is False


def test_train_cli_refuses_before_loading_anything(tmp_path, capsys):
    paths = ["--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--train-data", str(tmp_path)]
    code = main(["train", "plan", *paths, "--set", "optim.lr=inf"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "optim.lr must be a finite number > 0" in err
    assert not (tmp_path / "o").exists()


def test_override_scalars_are_taken_as_typed():
    got = apply_overrides({}, ["out=runs #1", "a=0123", "b=yes", "c=[1, 2]", "d='quoted'", "e=null", "f="])
    assert got == {"out": "runs #1", "a": "0123", "b": "yes", "c": [1, 2], "d": "quoted", "e": None, "f": ""}
    for raw in ("runs #1", "0123", "yes", "1e-3"):
        assert load_config(TrainConfig, None, [f"out={raw}"]).out == raw
    assert load_config(TrainConfig, None, ["max_steps=0123"]).max_steps == 123  # an int field: still 123


@pytest.mark.parametrize("out", ["runs #1", "0123", "yes", "null"])
def test_train_cli_paths_are_strings(monkeypatch, tmp_path, out):
    seen = {}
    monkeypatch.setattr("mgsd.train.trainer.train", lambda cfg, resume: seen.setdefault("cfg", cfg) and {})
    main(["train", "plan", "--model", "0777", "--out", out, "--train-data", "yes", "no"])
    cfg = seen["cfg"]
    assert (cfg.out, cfg.model, cfg.train_data) == (out, "0777", ["yes", "no"])


def test_level_ranges_and_counts_refused_up_front(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"empty level range '6-3'.*3-6"):
        parse_levels(get_task("maze"), "6-3")
    args = ["data", "generate", "--task", "maze", "--out", str(tmp_path / "d")]
    assert main([*args, "--levels", "6-3", "--per-level", "2"]) == 2
    assert "empty level range" in capsys.readouterr().err
    assert main([*args, "--per-level", str(10**12)]) == 2
    assert "--per-level must be between 1 and" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_pipeline_settings_refused_before_work():
    with pytest.raises(ConfigError, match=r"^data: test_per_task and train_per_level must be at least 1"):
        load_config(PipelineConfig, None, ["data.test_per_task=0"])

    from mgsd.pipeline import RunLayout, check_settings, training_stages

    for bad, match in (("stage2.lr=inf", r"stage 2.*optim\.lr"), ("data.maze_levels=6-3", "empty level")):
        cfg = load_config(PipelineConfig, None, [bad])
        with pytest.raises(ValueError, match=match):
            check_settings(cfg, training_stages(cfg, RunLayout(Path(".")), Path("base")))


def test_changed_keys_names_old_and_new():
    old = {"optim": {"lr": 0.001, "betas": [0.9, 0.99]}, "progress": True}
    new = {"optim": {"lr": 0.1, "betas": (0.9, 0.99)}, "progress": False}
    assert changed_keys(old, new, ["progress"]) == ["optim.lr (0.001 -> 0.1)"]


def _finished_run(tmp_path, cfg):
    out = tmp_path / "run"
    made = ("data/test", "models/coldstart/model", "models/mgsd/model", "models/plan_sft/model", "eval/mgsd")
    made += ("eval/coldstart", "eval/base")
    for rel in made:
        (out / rel).mkdir(parents=True)
    (out / "summary.json").write_text("{}")
    (out / "settings.json").write_text(json.dumps(run_settings(cfg, {})))
    return out


def test_rerun_with_other_settings_is_refused_naming_them(tmp_path):
    cfg = PipelineConfig()
    out = _finished_run(tmp_path, cfg)
    reconcile(out, run_settings(cfg, {}), redo=False)  # same settings: resumes
    changed = load_config(PipelineConfig, None, ["stage2.lr=0.1", "progress=false"])
    with pytest.raises(ValueError, match=r"other settings \(stage2\.lr \(0\.0002 -> 0\.1\)\): pass --redo"):
        reconcile(out, run_settings(changed, {}), redo=False)
    assert (out / "models" / "mgsd" / "model").is_dir() and (out / "summary.json").exists()


def test_redo_removes_the_affected_stages_and_downstream_only(tmp_path):
    cfg = PipelineConfig()
    out = _finished_run(tmp_path, cfg)
    changed = load_config(PipelineConfig, None, ["stage2.lr=0.1"])
    reconcile(out, run_settings(changed, {}), redo=True)
    assert not (out / "models" / "mgsd").exists() and not (out / "eval" / "mgsd").exists()
    assert not (out / "summary.json").exists()
    assert (out / "eval" / "coldstart").is_dir() and (out / "eval" / "base").is_dir()
    # stage 1, the plan-SFT baseline (stage 1's settings) and the data are untouched
    assert (out / "models" / "coldstart" / "model").is_dir() and (out / "models" / "plan_sft").is_dir()
    assert (out / "data" / "test").is_dir()


def test_run_cli_refuses_changed_settings_in_one_line(tmp_path, capsys):
    cfg = PipelineConfig()
    out = _finished_run(tmp_path, cfg)
    assert main(["run", "--out", str(out), "--set", "stage1.steps=7", "--set", "seed=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0 and "seed (0 -> 3)" in err and f"stage1.steps ({cfg.stage1.steps} -> 7)" in err
    )
    assert (out / "models" / "coldstart" / "model").is_dir()


def test_partial_nested_override_keeps_the_fields_own_defaults():
    cfg = load_config(PipelineConfig, None, ["stage2.lr=0.1"])
    assert cfg.stage2.lr == 0.1
    assert (cfg.stage2.steps, cfg.stage2.schedule) == (PipelineConfig().stage2.steps, "constant")


# -- one clear line, not a traceback --------------------------------------------------------------------


def test_serve_refuses_an_impossible_port_before_loading(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "absent"), "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "mgsd: error: --port must be between 0 and 65535, got 70000"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from mgsd.models import init_tiny

    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", preset="tiny", seed=0)


def test_model_info_on_broken_or_pickle_weights_is_one_line(tiny_model, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50_000])
    assert main(["model", "info", str(truncated)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mgsd: error: cannot load model {truncated}") and "\n" not in err

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    assert main(["model", "info", str(pickled)]) == 2
    assert "only pickle weights (pytorch_model.bin)" in capsys.readouterr().err


@pytest.mark.parametrize("bad_id", [["a"], {"x": 1}, True, None])
def test_prediction_ids_must_be_strings(tmp_path, bad_id):
    from mgsd.data.io import DataError
    from mgsd.eval.plans import read_predictions

    f = tmp_path / "p.jsonl"
    lines = [{"id": "ok", "response": "x"}, {"id": bad_id, "response": "y"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(DataError, match=r"p\.jsonl:2: 'id' must be a string"):
        read_predictions(f)


def test_mistyped_relative_model_directory_is_not_a_hub_id(tmp_path, monkeypatch):
    from mgsd.models.storage import resolve_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match=r"no such directory in runs/"):
        resolve_model_path("runs/mdoel")
    assert resolve_model_path("Qwen/Qwen3-VL-4B-Instruct") == "Qwen/Qwen3-VL-4B-Instruct"  # a hub id


def test_rerun_with_other_external_data_is_refused_and_a_moved_copy_is_not(tmp_path):
    import shutil

    cfg = PipelineConfig()
    ext = tmp_path / "vsp"
    ext.mkdir()
    (ext / "level3.txt").write_text("map A")
    out = _finished_run(tmp_path, cfg)
    (out / "settings.json").write_text(json.dumps(run_settings(cfg, {"vsp": str(ext)})))
    moved = tmp_path / "elsewhere"
    shutil.copytree(ext, moved)
    reconcile(out, run_settings(cfg, {"vsp": str(moved)}), redo=False)
    (moved / "level3.txt").write_text("map B")
    with pytest.raises(ValueError, match=r"other settings \(external\.vsp "):
        reconcile(out, run_settings(cfg, {"vsp": str(moved)}), redo=False)


def test_run_of_an_older_version_is_compared_by_its_config_json(tmp_path):
    cfg = PipelineConfig()
    out = _finished_run(tmp_path, cfg)
    (out / "settings.json").unlink()
    (out / "config.json").write_text(json.dumps(to_dict(cfg)))
    reconcile(out, run_settings(cfg, {}), redo=False)
    changed = load_config(PipelineConfig, None, ["eval_max_new_tokens=7"])
    with pytest.raises(ValueError, match=r"eval_max_new_tokens \(128 -> 7\)"):
        reconcile(out, run_settings(changed, {}), redo=False)
