"""The evaluation steps: every model on the held-out test split (and the external sets), the gap
analysis for ``analysis_models``, and the teacher's competence from the base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mgsd.pipeline.config import PipelineConfig
from mgsd.pipeline.layout import RunLayout
from mgsd.pipeline.stages import Stage


def eval_stages(
    cfg: PipelineConfig, layout: RunLayout, models: dict[str, Path], ext: dict[str, Path]
) -> list[Stage]:
    """One step per model; each of its evaluations resumes from its own cache."""
    from mgsd.eval.gap import evaluate_gap
    from mgsd.eval.gates import teacher_competence
    from mgsd.eval.model import evaluate_model

    test = [layout.split("test")]
    stages = []
    for name, path in models.items():
        out = layout.eval(name)
        # (evaluation, data, output dir, file that marks it complete)
        if name in cfg.analysis_models:
            jobs = [(evaluate_gap, test, out, layout.gap(name))]
        else:
            jobs = [(evaluate_model, test, out / "image", layout.metrics(name))]
        if name == "base":  # does the privileged teacher know the answer? (the row every run reports)
            jobs.append((teacher_competence, test, out / "teacher", layout.teacher(name)))
        for e, d in ext.items():
            jobs.append((evaluate_model, [d], out / f"external-{e}", layout.metrics(name, f"external-{e}")))
        call = _evaluator(cfg, name, path, jobs)
        stages.append(Stage(f"eval {name}", (path, *test), tuple(done for *_, done in jobs), call))
    return stages


def _evaluator(cfg: PipelineConfig, name: str, path: Path, jobs: list[tuple[Any, ...]]) -> Any:
    def work() -> None:
        from mgsd.backends.base import GenerationConfig
        from mgsd.backends.local import LocalBackend

        gen = GenerationConfig(max_new_tokens=cfg.eval_max_new_tokens)
        backend = LocalBackend.load(str(path), batch_size=cfg.eval_batch_size)
        for evaluate, dirs, dst, _ in jobs:  # each resumes from its own cache
            evaluate(
                backend,
                dirs,
                dst,
                model=name,
                gen=gen,
                batch_size=cfg.eval_batch_size,
                progress=cfg.progress,
            )

    return work
