"""The ``mgsd run`` config: what to generate, which base, both stages' settings, baselines, evaluation.

Levels are a mapping task -> level spec ("3-8", "3,5", "all"); a task it does not name runs at all its
levels, so a new task needs no entry here. Older configs' per-task keys (``data.maze_levels: 3-6``)
are still read (``DataSettings.upgrade_keys``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mgsd.tasks import get_task, parse_levels
from mgsd.train.pretrain import PretrainConfig, PretrainData

_LEGACY_LEVEL_SUFFIX = "_levels"  # data.<task>_levels, before levels became a mapping


@dataclass
class DataSettings:
    tasks: list[str] = field(default_factory=lambda: ["frozenlake", "maze", "minibehaviour"])
    levels: dict[str, str] = field(
        default_factory=lambda: {"frozenlake": "3-8", "maze": "3-6", "minibehaviour": "5-6"}
    )
    test_per_task: int = 300  # spread evenly over the task's levels
    val_per_level: int = 4
    train_per_level: int = 800
    seed: int = 0

    def __post_init__(self) -> None:
        # Refused here, before any work: 0 test samples trained every stage and then had nothing to
        # report; a val split may be empty (no validation during training).
        if self.test_per_task < 1 or self.train_per_level < 1 or self.val_per_level < 0:
            raise ValueError(
                "test_per_task and train_per_level must be at least 1 and val_per_level at least 0, got "
                f"{self.test_per_task}, {self.train_per_level}, {self.val_per_level}"
            )

    @staticmethod
    def upgrade_keys(data: Mapping[str, Any]) -> dict[str, Any]:
        """``<task>_levels: SPEC`` of older configs (and runs' settings) as ``levels: {<task>: SPEC}``."""
        out = {k: v for k, v in data.items() if not k.endswith(_LEGACY_LEVEL_SUFFIX)}
        legacy = {k.removesuffix(_LEGACY_LEVEL_SUFFIX): v for k, v in data.items() if k not in out}
        if legacy:
            levels = out.get("levels")
            out["levels"] = {**(levels if isinstance(levels, Mapping) else {}), **legacy}
        return out

    def task_levels(self, name: str) -> list[int]:
        """The levels of task ``name`` (all of them when ``levels`` does not name it); ValueError for
        an unknown task, a bad spec or a level out of range."""
        task = get_task(name)
        spec = self.levels.get(task.name, self.levels.get(name))
        return parse_levels(task, spec)


@dataclass
class StageSettings:
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 8
    micro_batch_size: int = 8
    lora_r: int = 0
    max_new_tokens: int = 256
    schedule: str = "cosine"  # "constant" for stage 2, as the paper
    warmup_ratio: float = 0.0
    full_vision: bool = True  # with LoRA: the vision tower and merger train in full beside it
    overrides: list[str] = field(default_factory=list)  # extra TrainConfig key=value settings


@dataclass
class PipelineConfig:
    # "tiny-base": the shipped pretrained tiny base; "tiny" / "small": pretrain that preset inside the
    # run first (the ``pretrain`` section); or a model directory / hub id, used as the base as it is.
    model: str = "tiny-base"
    seed: int = 0
    data: DataSettings = field(default_factory=DataSettings)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    # The defaults are configs/default.yaml (a test keeps the two equal).
    stage1: StageSettings = field(
        default_factory=lambda: StageSettings(
            steps=600,
            lr=1e-3,
            lora_r=16,
            warmup_ratio=0.1,
            overrides=[
                "optim.vision_lr_scale=0.2",
                "replay_symbolic=0.3",
                "grounding_weight=1.0",
                "facts_under_plan_prompt=0.5",
            ],
        )
    )
    stage2: StageSettings = field(
        default_factory=lambda: StageSettings(
            steps=480,  # 60 -> 480: image macro 10.8 -> 40.6 on seed 0 (README, default experiment)
            lr=2e-4,
            lora_r=16,
            max_new_tokens=128,
            schedule="constant",
            overrides=["opsd.loss=full"],
        )
    )
    baselines: list[str] = field(default_factory=lambda: ["plan_sft", "opsd_no_coldstart", "mgsd_no_plan"])
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 96
    analysis_models: list[str] = field(default_factory=lambda: ["base", "coldstart", "mgsd"])
    progress: bool = True


def upgrade_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline config as a mapping (a run's ``settings.json`` or ``config.json``) in today's keys."""
    out = dict(config)
    if isinstance(out.get("data"), Mapping):
        out["data"] = DataSettings.upgrade_keys(out["data"])
    pretrain = out.get("pretrain")
    if isinstance(pretrain, Mapping) and isinstance(pretrain.get("data"), Mapping):
        out["pretrain"] = {**pretrain, "data": PretrainData.upgrade_keys(pretrain["data"])}
    return out
