"""Shipped configs: every training recipe loads into TrainConfig; the paper recipes carry the paper's
values; ``mgsd train --section`` picks one stage; the accelerate config is one accelerate accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mgsd.cli import main
from mgsd.config import load_config, load_yaml
from mgsd.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = {"4b": "Qwen/Qwen3-VL-4B-Instruct", "8b": "Qwen/Qwen3-VL-8B-Instruct"}


def training_recipes() -> list[tuple[Path, str | None]]:
    """(file, section) of every training recipe under configs/: a mapping that names an ``objective``,
    at the top level (section None) or one level down (a multi-stage file). Pipeline configs
    (``mgsd run``) and accelerate files name none and are not TrainConfig documents."""
    found: list[tuple[Path, str | None]] = []
    for path in sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml")):
        data = load_yaml(path)
        if "objective" in data:
            found.append((path, None))
        found += [(path, k) for k, v in data.items() if isinstance(v, dict) and "objective" in v]
    return found


def _id(item: tuple[Path, str | None]) -> str:
    path, section = item
    return f"{path.relative_to(CONFIGS)}:{section or '-'}"


@pytest.mark.parametrize("recipe", training_recipes(), ids=_id)
def test_every_training_recipe_loads(recipe: tuple[Path, str | None]) -> None:
    path, section = recipe
    cfg = load_config(TrainConfig, path, section=section)  # unknown keys or bad values raise
    assert cfg.objective == (load_yaml(path)[section] if section else load_yaml(path))["objective"]


def test_the_paper_recipes_are_found() -> None:
    names = {(p.name, s) for p, s in training_recipes()}
    for size in PAPER:
        assert {(f"paper-qwen3vl-{size}.yaml", "stage1"), (f"paper-qwen3vl-{size}.yaml", "stage2")} <= names


@pytest.mark.parametrize("size", sorted(PAPER))
def test_paper_stage1_is_the_grounding_sft(size: str) -> None:
    c = load_config(TrainConfig, CONFIGS / f"paper-qwen3vl-{size}.yaml", section="stage1")
    assert c.objective == "perception" and c.model == PAPER[size]
    assert (c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.train_vision) == (8, 16, 0.0, False)
    assert (c.optim.lr, c.optim.schedule, c.optim.warmup_ratio) == (1e-4, "cosine", 0.1)
    assert (c.epochs, c.batch_size, c.max_steps) == (3.0, 64, 0)
    assert c.compute_dtype == "bfloat16"
    assert c.save_merged  # stage 2 fully fine-tunes the merged model


@pytest.mark.parametrize("size", sorted(PAPER))
def test_paper_stage2_is_mgsd_opsd(size: str) -> None:
    c = load_config(TrainConfig, CONFIGS / f"paper-qwen3vl-{size}.yaml", section="stage2")
    stage1 = load_config(TrainConfig, CONFIGS / f"paper-qwen3vl-{size}.yaml", section="stage1")
    o = c.opsd
    assert c.objective == "opsd" and c.lora.r == 0 and c.lora.train_vision  # full fine-tune, ViT too
    assert c.model == f"{stage1.out}/model"  # the student starts from stage 1's merged model
    assert (o.teacher, o.teacher_path) == ("path", PAPER[size])  # frozen pre-SFT base as teacher
    assert (o.privileged, o.loss, o.reward_weight) == ("state+plan", "sampled", 0.0)
    assert (o.rollouts_per_prompt, o.updates_per_rollout) == (1, 1)
    assert (o.temperature, o.top_p, o.max_new_tokens) == (1.0, 1.0, 2048)
    assert (c.optim.lr, c.optim.schedule, c.optim.warmup_ratio) == (1e-6, "constant", 0.0)
    assert (c.optim.weight_decay, c.optim.max_grad_norm) == (0.01, 1.0)
    assert (c.batch_size, c.epochs, c.max_steps) == (32, 5.0, 0)
    assert (c.eval_every, c.save_every, c.keep_last) == (20, 20, 3)
    assert c.compute_dtype == "bfloat16"  # bf16 arithmetic; the trainer keeps fp32 master weights
    assert c.logit_chunk == 256  # the sampled loss never holds a micro-batch's (tokens, vocab) logits


def test_4b_and_8b_differ_only_in_model_names() -> None:
    def normalised(size: str) -> Any:
        text = (CONFIGS / f"paper-qwen3vl-{size}.yaml").read_text()
        return yaml.safe_load(text.replace(PAPER[size], "MODEL").replace(f"qwen3vl-{size}", "RUN"))

    assert normalised("4b") == normalised("8b")


def test_train_cli_picks_a_section(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    seen: list[TrainConfig] = []

    def fake_train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
        seen.append(cfg)
        return {}

    monkeypatch.setattr("mgsd.train.trainer.train", fake_train)
    recipe = str(CONFIGS / "paper-qwen3vl-4b.yaml")
    args = ["train", "opsd", "--config", recipe, "--section", "stage2", "--set", "max_steps=3"]
    assert main([*args, "--model", "m"]) == 0
    (cfg,) = seen
    assert (cfg.objective, cfg.model, cfg.max_steps, cfg.optim.lr) == ("opsd", "m", 3, 1e-6)

    assert main(["train", "opsd", "--config", recipe, "--section", "stage3"]) == 2
    assert "sections: stage1, stage2" in capsys.readouterr().err
    assert main(["train", "opsd", "--config", recipe, "--section", "stage1"]) == 2
    assert "'perception' stage, not 'opsd'" in capsys.readouterr().err
    assert main(["train", "opsd", "--section", "stage2"]) == 2
    assert "--section needs --config" in capsys.readouterr().err
    assert len(seen) == 1


def test_accelerate_ddp_and_fsdp2_configs_are_valid() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / "accelerate" / "ddp.yaml"))  # unknown keys raise
    assert cfg.distributed_type == "MULTI_GPU" and cfg.mixed_precision == "no" and not cfg.use_cpu
    fsdp = load_config_from_file(str(CONFIGS / "accelerate" / "fsdp2.yaml"))
    assert fsdp.distributed_type == "FSDP" and fsdp.mixed_precision == "no"
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_reshard_after_forward"]
    # DeepSpeed is not routed through our loop (untested here): no config for it is shipped.
    assert not [p for p in (CONFIGS / "accelerate").iterdir() if "deepspeed" in p.name.lower()]


@pytest.mark.parametrize("name", ["default.yaml", "smoke.yaml", "scratch.yaml"])
def test_pipeline_configs_load_with_valid_stage_overrides(name: str) -> None:
    from mgsd.pipeline import PipelineConfig

    cfg = load_config(PipelineConfig, CONFIGS / name)  # unknown keys raise
    assert cfg.data.test_per_task >= (300 if name != "smoke.yaml" else 1)
    for stage in (cfg.stage1, cfg.stage2):
        load_config(TrainConfig, None, ["objective=perception", *stage.overrides])  # bad keys raise
    # the paper's schedules: stage 1 warms up, stage 2 keeps a constant LR
    assert cfg.stage2.schedule == "constant"
    assert name == "smoke.yaml" or cfg.stage1.warmup_ratio == 0.1


def test_pretrain_config_loads() -> None:
    from mgsd.train.pretrain import PretrainConfig

    cfg = load_config(PretrainConfig, CONFIGS / "pretrain-tiny.yaml")
    assert cfg.preset == "tiny" and cfg.steps > 0 and cfg.data.scenes > 0


def test_pipeline_defaults_are_the_default_config() -> None:
    from mgsd.pipeline import PipelineConfig

    assert load_config(PipelineConfig, CONFIGS / "default.yaml") == PipelineConfig()
