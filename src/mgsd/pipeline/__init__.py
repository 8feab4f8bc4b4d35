"""``mgsd run``: the whole MGSD experiment, from data to report, resumable step by step.

Results are keyed by what produced them: ``settings.json`` records the config and a content hash of
the base weights and external test sets; a rerun with other settings refuses, naming the changed keys,
unless ``--redo`` (the stages they affect, and everything downstream, are removed and run again).

Steps (each skipped when its output is complete, so a rerun after a crash resumes):
1. data: decontaminated test / val / train splits for every task (test first, then val and train
   exclude everything before them) plus optional external test sets;
2. base: the shipped tiny pretrained base (``tiny-base``, made by ``mgsd pretrain``: it perceives
   generic scenes and plans from text, never saw a task render with its state), a base pretrained
   inside the run from scratch (``tiny`` / ``small``, the ``pretrain`` section), or any model
   directory / hub id taken as it is (a pretrained VLM such as Qwen3-VL);
3. stage 1 (cold start): perception SFT with LoRA on the LM and the vision tower and merger trained
   in full, saved unmerged so the LM base survives under the adapter;
4. stage 2 (MGSD): on-policy self-distillation from the cold-start model; the teacher is the frozen
   base (adapter disabled) reading the symbolic state (and the plan, as configured);
5. baselines: plan SFT with as many samples as stages 1 + 2, stage 2 without cold start, MGSD whose
   teacher lacks the plan (each with MGSD's stage settings);
6. evaluation on the held-out test split (image modality; the base also from text: the symbolic upper
   bound, and from the teacher's context with and without the plan: the teacher's competence),
   perception and modality-gap attribution; ``summary.json`` and ``report.html``.

The rooms: ``config`` (PipelineConfig), ``layout`` (the paths inside a run directory), ``stages``
(each step as name, inputs, outputs and call; the training steps' settings), ``base_model``,
``datasets``, ``evaluate``, ``settings`` (what a result depends on; stale results), ``summary`` and
``run`` (the whole run).
"""

from mgsd.pipeline.base_model import shipped_base
from mgsd.pipeline.config import DataSettings, PipelineConfig, StageSettings
from mgsd.pipeline.datasets import build_data, import_external, overlap
from mgsd.pipeline.layout import RunLayout
from mgsd.pipeline.run import Run, run_pipeline
from mgsd.pipeline.settings import reconcile, run_settings
from mgsd.pipeline.stages import Stage, TrainSpec, check_settings, stage_config, train_stage, training_stages
from mgsd.pipeline.summary import summarize

__all__ = [
    "DataSettings",
    "PipelineConfig",
    "Run",
    "RunLayout",
    "Stage",
    "StageSettings",
    "TrainSpec",
    "build_data",
    "check_settings",
    "import_external",
    "overlap",
    "reconcile",
    "run_pipeline",
    "run_settings",
    "shipped_base",
    "stage_config",
    "summarize",
    "train_stage",
    "training_stages",
]
