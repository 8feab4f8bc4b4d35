"""``run_pipeline``: the whole experiment in one directory, each step skipped once complete."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from mgsd.config import to_dict
from mgsd.data.generate import read_state_hashes
from mgsd.data.importers import check_imported
from mgsd.files import write_json
from mgsd.pipeline.base_model import base_stage
from mgsd.pipeline.config import PipelineConfig
from mgsd.pipeline.datasets import build_data, import_external, overlap
from mgsd.pipeline.evaluate import eval_stages
from mgsd.pipeline.layout import RunLayout
from mgsd.pipeline.settings import reconcile, run_settings
from mgsd.pipeline.stages import Stage, TrainSpec, check_settings, train_stage, training_stages
from mgsd.pipeline.summary import summarize


class Run:
    """One experiment directory and its timings."""

    def __init__(self, cfg: PipelineConfig, out: str | Path) -> None:
        self.cfg, self.layout = cfg, RunLayout(Path(out))
        self.out = self.layout.root
        self.out.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, Any] = (
            json.loads(self.layout.timings.read_text()) if self.layout.timings.exists() else {}
        )

    def run(self, stage: Stage) -> None:
        """Run ``stage`` unless done; record wall time and the peak RSS so far (a high-water mark)."""
        if stage.done():
            return
        print(f"== {stage.name}", flush=True)
        t0 = time.perf_counter()
        stage.call()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.timings[stage.name] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb_so_far": round(peak_mb),
        }
        write_json(self.timings, self.layout.timings)


def _train_step(cfg: PipelineConfig, spec: TrainSpec, data: Path) -> Stage:
    return Stage(
        spec.name,
        inputs=(spec.start, data),
        outputs=(spec.out / "model" / "config.json",),
        call=lambda: train_stage(cfg, spec, data),
    )


def run_pipeline(
    cfg: PipelineConfig, out: str | Path, external: dict[str, str] | None = None, *, redo: bool = False
) -> dict[str, Any]:
    """The whole experiment in ``out``. A rerun resumes; one with other settings than those ``out``
    was made with refuses, naming them, unless ``redo`` (then the stages they affect, and everything
    downstream, are removed and run again)."""
    check_settings(cfg, training_stages(cfg, RunLayout(Path(out)), Path("base")))
    settings = run_settings(cfg, external or {})
    reconcile(Path(out), settings, redo=redo)
    run = Run(cfg, out)
    layout = run.layout
    write_json(settings, layout.settings)
    write_json(to_dict(cfg), layout.config)
    # External sets are imported and checked (ids unique, readable) before any training, not at the
    # first evaluation after it.
    ext_dirs = import_external(external or {}, layout.external)
    check_imported(ext_dirs)
    base, pretraining = base_stage(cfg, layout)
    if pretraining is not None:
        run.run(pretraining)
    seen = read_state_hashes(base)
    data = layout.data
    run.run(Stage("data", (base,), (layout.data_complete,), lambda: build_data(cfg, data, ext_dirs, seen)))
    for spec in training_stages(cfg, layout, base):
        run.run(_train_step(cfg, spec, data))

    names = ["coldstart", "mgsd", *cfg.baselines]
    models = {"base": base, **{name: layout.model(name) for name in names}}
    for stage in eval_stages(cfg, layout, models, ext_dirs):
        run.run(stage)
    summary = summarize(cfg, layout, list(models), list(ext_dirs), run.timings)
    summary["overlap_with_pretraining"] = {
        name: overlap(d, seen) for name, d in {"test": layout.split("test"), **ext_dirs}.items()
    }
    write_json(summary, layout.summary)
    from mgsd.report.build import build_report

    build_report(layout.root)
    return summary
