"""The run's steps as data: each a name, its inputs, its outputs and the call that makes them.

A step is skipped when all its outputs exist, so a rerun after a crash resumes; its name is what the
run prints and the key of its wall time in ``timings.json``. The training steps (both MGSD stages and
the baselines) are described first as ``TrainSpec`` values, so their settings can be checked, every
one of them, before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgsd.config import ConfigError, apply_overrides, from_dict, to_dict
from mgsd.pipeline.config import PipelineConfig, StageSettings
from mgsd.pipeline.layout import RunLayout
from mgsd.tasks import get_task

BASELINES = ("plan_sft", "opsd_no_coldstart", "mgsd_no_plan")
_PERCEPTION_ONLY = frozenset({"facts_under_plan_prompt"})  # stage-1 keys the plan SFT baseline drops
_WITH_PLAN = ("opsd.teacher=base", "opsd.privileged=state+plan")
_WITHOUT_PLAN = ("opsd.teacher=base", "opsd.privileged=state")


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]  # files; the step is done when every one exists
    call: Callable[[], None]

    def done(self) -> bool:
        return all(p.is_file() for p in self.outputs)


@dataclass(frozen=True)
class TrainSpec:
    """One training step: ``objective`` with ``settings`` from model ``start`` into ``out``."""

    name: str
    model: str  # the model it makes: "coldstart", "mgsd" or a baseline's name
    objective: str
    settings: StageSettings
    start: Path
    out: Path  # its training directory; the model is saved in ``out / "model"``
    extra: tuple[str, ...] = ()  # TrainConfig settings of this step, before the stage's overrides


def training_stages(cfg: PipelineConfig, layout: RunLayout, base: Path) -> list[TrainSpec]:
    """Stage 1, stage 2 and the configured baselines, in the order they run."""
    coldstart = layout.model("coldstart")

    def spec(name: str, model: str, objective: str, st: StageSettings, start: Path, extra=()) -> TrainSpec:
        return TrainSpec(name, model, objective, st, start, layout.training(model), tuple(extra))

    stages = [
        spec("stage 1: cold-start perception SFT", "coldstart", "perception", cfg.stage1, base),
        spec("stage 2: MGSD on-policy self-distillation", "mgsd", "opsd", cfg.stage2, coldstart, _WITH_PLAN),
    ]
    if "plan_sft" in cfg.baselines:  # as many samples as stages 1 + 2 together
        # Stage 1's settings, less what only perception rows have: a plan answer already opens
        # with the facts block, under the plan prompt.
        kept = [o for o in cfg.stage1.overrides if o.partition("=")[0].strip() not in _PERCEPTION_ONLY]
        steps = cfg.stage1.steps + cfg.stage2.steps
        st = StageSettings(**{**to_dict(cfg.stage1), "steps": steps, "overrides": kept})
        stages.append(spec("baseline: plan SFT (same samples)", "plan_sft", "plan", st, base))
    if "opsd_no_coldstart" in cfg.baselines:
        # The paper's "without cold start" ablation: stage 2 as configured, started from the base.
        name = "baseline: OPSD without cold start"
        stages.append(spec(name, "opsd_no_coldstart", "opsd", cfg.stage2, base, _WITH_PLAN))
    if "mgsd_no_plan" in cfg.baselines:
        name = "ablation: MGSD, teacher without the plan"
        stages.append(spec(name, "mgsd_no_plan", "opsd", cfg.stage2, coldstart, _WITHOUT_PLAN))
    return stages


def stage_config(
    cfg: PipelineConfig,
    st: StageSettings,
    objective: str,
    model: Path,
    out: Path,
    data: Path,
    extra: Sequence[str] = (),
) -> Any:
    """The TrainConfig of one stage (ConfigError naming the key when the settings cannot train)."""
    from mgsd.train.config import TrainConfig

    settings = {
        "objective": objective,
        "model": str(model),
        "out": str(out),
        "train_data": [str(data / "train")],
        "balance_tasks": True,
        "val_data": [str(data / "val")],
        "max_steps": st.steps,
        "batch_size": st.batch_size,
        "micro_batch_size": st.micro_batch_size,
        "seed": cfg.seed,
        "progress": cfg.progress,
        "save_every": max(10, st.steps // 5),
        "optim": {"lr": st.lr, "schedule": st.schedule, "warmup_ratio": st.warmup_ratio},
        "lora": {"r": st.lora_r, "full_vision": st.full_vision and st.lora_r > 0},
        "opsd": {"max_new_tokens": st.max_new_tokens},
    }
    return from_dict(TrainConfig, apply_overrides(settings, [*extra, *st.overrides]))


def train_stage(cfg: PipelineConfig, spec: TrainSpec, data: Path) -> None:
    """Train one step, resuming from its latest checkpoint when a killed run left one."""
    from mgsd.train.checkpoint import latest_checkpoint
    from mgsd.train.trainer import train

    tc = stage_config(cfg, spec.settings, spec.objective, spec.start, spec.out, data, spec.extra)
    train(tc, resume=latest_checkpoint(spec.out / "checkpoints") is not None)


def check_settings(cfg: PipelineConfig, stages: Sequence[TrainSpec]) -> None:
    """Everything that can be refused before any work: levels, counts, every stage's TrainConfig."""
    for name in cfg.data.tasks:
        cfg.data.task_levels(name)  # unknown task, "6-3", out-of-range level
    for name in cfg.data.levels:  # a misspelt task there would silently run that task at all levels
        try:
            get_task(name)
        except ValueError as exc:
            raise ConfigError(f"data.levels: {exc}") from None
    for spec in stages:
        try:
            stage_config(cfg, spec.settings, spec.objective, spec.start, spec.out, Path("data"), spec.extra)
        except ConfigError as exc:
            raise ConfigError(f"{spec.name}: {exc}") from None
    unknown = sorted(set(cfg.baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"baselines: unknown {unknown[0]!r} (known: {', '.join(BASELINES)})")
    if cfg.eval_max_new_tokens < 1 or cfg.eval_batch_size < 1:
        raise ConfigError("eval_max_new_tokens and eval_batch_size must be at least 1")
