"""The base every run starts from: the shipped tiny base, one pretrained inside the run, or a given model."""

from __future__ import annotations

from pathlib import Path

from mgsd.config import from_dict, to_dict
from mgsd.pipeline.config import PipelineConfig
from mgsd.pipeline.layout import RunLayout
from mgsd.pipeline.stages import Stage


def shipped_base() -> Path:
    """The pretrained tiny base inside the package (``mgsd pretrain``'s result, with its model card)."""
    import mgsd.models

    path = Path(mgsd.models.__file__).parent / "pretrained" / "tiny-base"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the shipped tiny base is missing ({path}): reinstall mgsd, or set model: tiny to pretrain one"
        )
    return path


def pretrained_in_run(cfg: PipelineConfig) -> bool:
    """``model`` names a tiny preset: the base is pretrained inside the run (own data, fixed tokenizer)."""
    from mgsd.models.tiny import PRESETS

    return cfg.model in PRESETS


def given_base(cfg: PipelineConfig) -> Path:
    """The base of a run that does not pretrain one: the shipped base or ``model`` as it is."""
    return shipped_base() if cfg.model == "tiny-base" else Path(cfg.model)


def base_stage(cfg: PipelineConfig, layout: RunLayout) -> tuple[Path, Stage | None]:
    """The base's path and, when the run pretrains it, the step that does."""
    if not pretrained_in_run(cfg):
        return given_base(cfg), None
    from mgsd.pipeline.pretrained_base import pretrain_base
    from mgsd.train.pretrain import PretrainConfig

    pcfg = from_dict(PretrainConfig, {**to_dict(cfg.pretrain), "preset": cfg.model, "progress": cfg.progress})
    base = layout.pretrained_base
    stage = Stage(
        "base: pretraining",
        inputs=(),
        outputs=(base / "config.json",),
        call=lambda: pretrain_base(pcfg, layout.pretrain),
    )
    return base, stage
