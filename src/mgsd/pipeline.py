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
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgsd.config import ConfigError, apply_overrides, changed_keys, from_dict, to_dict
from mgsd.data.generate import generate_dataset, read_state_hashes, state_hash
from mgsd.data.importers import check_imported
from mgsd.data.io import read_rows, tree_fingerprint
from mgsd.files import read_jsonl, write_json
from mgsd.tasks import get_task, parse_levels
from mgsd.train.pretrain import PretrainConfig


@dataclass
class DataSettings:
    tasks: list[str] = field(default_factory=lambda: ["frozenlake", "maze", "minibehaviour"])
    frozenlake_levels: str = "3-8"
    maze_levels: str = "3-6"
    minibehaviour_levels: str = "5-6"
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
            steps=200,
            lr=1e-3,
            lora_r=16,
            warmup_ratio=0.1,
            overrides=["optim.vision_lr_scale=0.2", "replay_symbolic=0.3"],
        )
    )
    stage2: StageSettings = field(
        default_factory=lambda: StageSettings(
            steps=60, lr=2e-4, lora_r=16, max_new_tokens=128, schedule="constant"
        )
    )
    baselines: list[str] = field(default_factory=lambda: ["plan_sft", "opsd_no_coldstart", "mgsd_no_plan"])
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 96
    analysis_models: list[str] = field(default_factory=lambda: ["base", "coldstart", "mgsd"])
    progress: bool = True


class Run:
    """One experiment directory and its timings."""

    def __init__(self, cfg: PipelineConfig, out: str | Path) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.timings_path = self.out / "timings.json"
        self.timings: dict[str, Any] = (
            json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        )

    def stage(self, name: str, done: bool, fn: Any) -> None:
        """Run ``fn`` unless ``done``; record wall time and the peak RSS so far (a high-water mark)."""
        if done:
            return
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        fn()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.timings[name] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb_so_far": round(peak_mb),
        }
        write_json(self.timings, self.timings_path)


# -- data ---------------------------------------------------------------------------------------------


def _levels(cfg: PipelineConfig, name: str) -> list[int]:
    return parse_levels(get_task(name), getattr(cfg.data, f"{name}_levels"))


def build_data(
    cfg: PipelineConfig, out: Path, external: dict[str, Path], seen: frozenset[str] = frozenset()
) -> None:
    """``seen``: state hashes of the base's pretraining, never drawn for any split."""
    d = cfg.data
    ext = list(external.values())
    for name in d.tasks:
        task, levels = get_task(name), _levels(cfg, name)
        keys: set[str] = set()  # test first; val and train then exclude every state before them
        for split, per_level, exclude_dirs in (
            ("test", -(-d.test_per_task // len(levels)), ext),
            ("val", d.val_per_level, ()),
            ("train", d.train_per_level, ()),
        ):
            generate_dataset(
                task,
                levels,
                per_level,
                split=split,
                seed=d.seed,
                out=out / split,
                exclude=keys,
                exclude_dirs=exclude_dirs,
                exclude_hashes=seen,
                progress=cfg.progress,
            )
    (out / "COMPLETE").write_text("ok\n")


def import_external(spec: dict[str, str], out: Path) -> dict[str, Path]:
    """``vsp=DIR`` and ``visualplanning-<task>=FILE`` test sets, imported once."""
    from mgsd.data.importers import import_visualplanning, import_vsp

    dirs = {}
    for name, src in spec.items():
        target = out / name
        if not (target / "COMPLETE").exists():
            if name == "vsp":
                import_vsp(src, target, progress=False)
            elif name.startswith("visualplanning-"):
                import_visualplanning(src, name.split("-", 1)[1], target, progress=False)
            else:
                raise ValueError(
                    f"unknown external test set {name!r} (use vsp=DIR or visualplanning-TASK=FILE)"
                )
            (target / "COMPLETE").write_text("ok\n")
        dirs[name] = target
    return dirs


# -- models -------------------------------------------------------------------------------------------


def shipped_base() -> Path:
    """The pretrained tiny base inside the package (``mgsd pretrain``'s result, with its model card)."""
    import mgsd.models

    path = Path(mgsd.models.__file__).parent / "pretrained" / "tiny-base"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the shipped tiny base is missing ({path}): reinstall mgsd, or set model: tiny to pretrain one"
        )
    return path


def overlap(data: Path, seen: frozenset[str]) -> dict[str, Any]:
    """How many of a dataset's states the base saw in pretraining (by state hash)."""
    rows = read_rows(data, columns=["task", "state"])
    hits = 0
    for r in rows:
        task = get_task(r["task"])
        hits += state_hash(task.dump_state(task.load_state(r["state"]))) in seen
    return {"n": len(rows), "seen_in_pretraining": hits}


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


def train_stage(
    cfg: PipelineConfig,
    st: StageSettings,
    objective: str,
    model: Path,
    out: Path,
    data: Path,
    extra: Sequence[str] = (),
) -> None:
    from mgsd.train.checkpoint import latest_checkpoint
    from mgsd.train.trainer import train

    tc = stage_config(cfg, st, objective, model, out, data, extra)
    train(tc, resume=latest_checkpoint(out / "checkpoints") is not None)


def _done(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file()


# -- the whole run ------------------------------------------------------------------------------------


def run_pipeline(
    cfg: PipelineConfig, out: str | Path, external: dict[str, str] | None = None, *, redo: bool = False
) -> dict[str, Any]:
    """The whole experiment in ``out``. A rerun resumes; one with other settings than those ``out``
    was made with refuses, naming them, unless ``redo`` (then the stages they affect, and everything
    downstream, are removed and run again)."""
    from mgsd.models.tiny import PRESETS

    stages_for_check = _stages(cfg, Path(out) / "models", Path("base"))
    check_settings(cfg, stages_for_check)
    settings = run_settings(cfg, external or {})
    reconcile(Path(out), settings, redo=redo)
    run = Run(cfg, out)
    root = run.out
    write_json(settings, root / SETTINGS_FILE)
    write_json(to_dict(cfg), root / "config.json")
    m = root / "models"
    data = root / "data"
    # External sets are imported and checked (ids unique, readable) before any training, not at the
    # first evaluation after it.
    ext_dirs = import_external(external or {}, data / "external")
    check_imported(ext_dirs)
    if cfg.model == "tiny-base":
        base = shipped_base()
    elif cfg.model in PRESETS:  # pretrain the preset inside the run (its own data, fixed tokenizer)
        from mgsd.train.pretrain import pretrain

        pcfg = from_dict(
            PretrainConfig, {**to_dict(cfg.pretrain), "preset": cfg.model, "progress": cfg.progress}
        )
        base = m / "pretrain" / "base"
        run.stage("base: pretraining", _done(base), lambda: pretrain(pcfg, m / "pretrain"))
    else:
        base = Path(cfg.model)
    seen = read_state_hashes(base)
    run.stage("data", (data / "COMPLETE").exists(), lambda: build_data(cfg, data, ext_dirs, seen))

    stages = _stages(cfg, m, base)
    for name, objective, st, src, dst, extra in stages:
        run.stage(
            name,
            _done(dst / "model"),
            lambda o=objective, s=st, a=src, b=dst, e=extra: train_stage(cfg, s, o, a, b, data, e),
        )

    models = {
        "base": base,
        "coldstart": m / "coldstart" / "model",
        "mgsd": m / "mgsd" / "model",
    }
    models.update({b: m / b / "model" for b in cfg.baselines})
    evaluate_all(cfg, run, models, data, ext_dirs)
    summary = summarize(cfg, run, models, ext_dirs)
    summary["overlap_with_pretraining"] = {
        name: overlap(d, seen) for name, d in {"test": data / "test", **ext_dirs}.items()
    }
    write_json(summary, run.out / "summary.json")
    from mgsd.report.build import build_report

    build_report(root)
    return summary


Stage = tuple[str, str, StageSettings, Path, Path, list[str]]


def _stages(cfg: PipelineConfig, m: Path, base: Path) -> list[Stage]:
    """(name, objective, settings, start from, output dir, extra TrainConfig settings) of each stage."""
    budget = cfg.stage1.steps + cfg.stage2.steps
    stages = [
        ("stage 1: cold-start perception SFT", "perception", cfg.stage1, base, m / "coldstart", []),
        (
            "stage 2: MGSD on-policy self-distillation",
            "opsd",
            cfg.stage2,
            m / "coldstart" / "model",
            m / "mgsd",
            ["opsd.teacher=base", "opsd.privileged=state+plan"],
        ),
    ]
    if "plan_sft" in cfg.baselines:  # as many samples as stages 1 + 2 together
        st = StageSettings(**{**to_dict(cfg.stage1), "steps": budget})
        stages.append(("baseline: plan SFT (same samples)", "plan", st, base, m / "plan_sft", []))
    if "opsd_no_coldstart" in cfg.baselines:
        # The paper's "without cold start" ablation: stage 2 as configured, started from the base.
        stages.append(
            (
                "baseline: OPSD without cold start",
                "opsd",
                cfg.stage2,
                base,
                m / "opsd_no_coldstart",
                ["opsd.teacher=base", "opsd.privileged=state+plan"],
            )
        )
    if "mgsd_no_plan" in cfg.baselines:
        stages.append(
            (
                "ablation: MGSD, teacher without the plan",
                "opsd",
                cfg.stage2,
                m / "coldstart" / "model",
                m / "mgsd_no_plan",
                ["opsd.teacher=base", "opsd.privileged=state"],
            )
        )
    return stages


def check_settings(cfg: PipelineConfig, stages: Sequence[Stage]) -> None:
    """Everything that can be refused before any work: levels, counts, every stage's TrainConfig."""
    for name in cfg.data.tasks:
        _levels(cfg, name)  # unknown task, "6-3", out-of-range level
    for name, objective, st, src, dst, extra in stages:
        try:
            stage_config(cfg, st, objective, src, dst, Path("data"), extra)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    if cfg.eval_max_new_tokens < 1 or cfg.eval_batch_size < 1:
        raise ConfigError("eval_max_new_tokens and eval_batch_size must be at least 1")


# -- stale results ------------------------------------------------------------------------------------

SETTINGS_FILE = "settings.json"
# Settings that never change a finished result: how a run reports, and the list of baselines (a new
# one is simply run; a dropped one is no longer reported).
RUN_EXEMPT = ("progress", "baselines")
_FROM_COLDSTART = ("mgsd", "mgsd_no_plan")  # stages that start from stage 1's model
_ALL_MODELS = ("coldstart", "mgsd", "plan_sft", "opsd_no_coldstart", "mgsd_no_plan")


def run_settings(cfg: PipelineConfig, external: dict[str, str]) -> dict[str, Any]:
    """What a run's results depend on: its config and the content of its inputs (the base model
    directory unless pretrained inside the run, and every external test set)."""
    from mgsd.models.tiny import PRESETS

    settings: dict[str, Any] = {"config": to_dict(cfg)}
    if cfg.model not in PRESETS:
        base = shipped_base() if cfg.model == "tiny-base" else Path(cfg.model)
        settings["base_weights"] = (
            tree_fingerprint(base, (".safetensors", ".json", ".txt")) if base.is_dir() else str(cfg.model)
        )
    # By content: the same files at another path are the same test set.
    settings["external"] = {name: tree_fingerprint(src) for name, src in sorted(external.items())}
    return settings


def _affected(key: str) -> set[str]:
    """Directories (relative to the run) holding results that depend on the dotted settings ``key``:
    a model's training directory goes with its evaluation (``eval/NAME``)."""
    everything = {f"models/{n}" for n in _ALL_MODELS} | {"eval"}
    top = key.split(".")[0]
    if top in ("model", "base_weights", "pretrain"):
        return {"data", "models/pretrain", *everything}
    if top in ("data", "external"):  # the test split excludes the external sets' states: data is redone
        return {"data", *everything}
    if top == "seed":
        return everything
    if key.startswith("stage1."):
        names = {"coldstart", "plan_sft", *_FROM_COLDSTART}
    elif key.startswith("stage2."):
        names = {"mgsd", "opsd_no_coldstart", "mgsd_no_plan"}
        if key == "stage2.steps":
            names.add("plan_sft")  # its sample budget is stage 1 + stage 2 steps
    else:
        return {"eval"}  # eval_* settings, analysis_models
    return {f"models/{n}" for n in names} | {f"eval/{n}" for n in names}


def reconcile(out: Path, settings: dict[str, Any], *, redo: bool) -> None:
    """Refuse (or with ``redo`` clear) results in ``out`` that other settings produced."""
    f = out / SETTINGS_FILE
    legacy = not f.is_file()
    if not legacy:
        old = json.loads(f.read_text())
    elif (out / "config.json").is_file():  # a run of an older mgsd: its config (the inputs unknown)
        old = {**settings, "config": json.loads((out / "config.json").read_text())}
    else:
        return  # a new run
    from mgsd.models.tiny import PRESETS

    exempt = [f"config.{k}" for k in RUN_EXEMPT]
    if settings["config"]["model"] not in PRESETS and old.get("config", {}).get("model") not in PRESETS:
        exempt.append("config.pretrain.")  # only read when the base is pretrained inside the run
    changes = changed_keys(old, settings, exempt)
    if legacy:  # keys added since that version were not settings then
        changes = [c for c in changes if "(unset -> " not in c]
    if not changes:
        return
    keys = [c.split(" ", 1)[0].removeprefix("config.") for c in changes]
    if not redo:
        shown = ", ".join(c.removeprefix("config.") for c in changes[:4])
        more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
        raise ValueError(
            f"{out} was made with other settings ({shown}{more}): pass --redo to re-run the stages "
            "they affect, or choose another --out"
        )
    stale: set[str] = set()
    for k in keys:
        stale |= _affected(k)
    for rel in sorted(stale):
        target = out / rel
        if target.exists():
            shutil.rmtree(target)
    for rel in ("summary.json", "report.html"):
        (out / rel).unlink(missing_ok=True)
    print(f"== redo: {', '.join(keys)} changed; removed {', '.join(sorted(stale))}", flush=True)


def evaluate_all(
    cfg: PipelineConfig, run: Run, models: dict[str, Path], data: Path, ext: dict[str, Path]
) -> None:
    from mgsd.backends.base import GenerationConfig
    from mgsd.backends.local import LocalBackend
    from mgsd.eval.gap import evaluate_gap
    from mgsd.eval.gates import teacher_competence
    from mgsd.eval.model import evaluate_model

    gen = GenerationConfig(max_new_tokens=cfg.eval_max_new_tokens)
    test = [data / "test"]
    for name, path in models.items():
        out = run.out / "eval" / name
        # (evaluation, data, output dir, file that marks it complete)
        if name in cfg.analysis_models:
            jobs = [(evaluate_gap, test, out, out / "gap.json")]
        else:
            jobs = [(evaluate_model, test, out / "image", out / "image" / "metrics.json")]
        if name == "base":  # does the privileged teacher know the answer? (the row every run reports)
            jobs.append((teacher_competence, test, out / "teacher", out / "teacher" / "teacher.json"))
        jobs += [
            (evaluate_model, [d], out / f"external-{e}", out / f"external-{e}" / "metrics.json")
            for e, d in ext.items()
        ]
        if all(done.exists() for *_, done in jobs):
            continue

        def work(name=name, path=path, jobs=jobs) -> None:
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

        run.stage(f"eval {name}", False, work)


def _row(model: str, modality: str, m: dict[str, Any], dataset: str = "test") -> dict[str, Any]:
    macro = m["macro"]
    return {
        "model": model,
        "modality": modality,
        "dataset": dataset,
        "n": m["n"],
        "macro": {k: macro[k] for k in ("success", "optimal", "progress")} | {"ci": macro["ci"]},
        "by_task": {
            t: {k: v[k] for k in ("n", "success", "optimal", "progress", "ci")}
            for t, v in m["by_task"].items()
        },
    }


def summarize(cfg: PipelineConfig, run: Run, models: dict[str, Path], ext: dict[str, Path]) -> dict[str, Any]:
    from mgsd.scoring.aggregate import paired_bootstrap_diff

    rows, samples = [], {}
    for name in models:
        base = run.out / "eval" / name
        image = base / "image" / "metrics.json"
        m = json.loads(image.read_text())
        image_row = _row(name, "image", m)
        rows.append(image_row)
        if name in ("coldstart", "mgsd"):  # the paired comparison
            samples[name] = read_jsonl(base / "image" / "samples.jsonl")
        for modality in ("text", "teacher+plan", "teacher"):
            f = (base / "teacher" if modality.startswith("teacher") else base) / modality / "metrics.json"
            if f.exists():
                rows.append(_row(name, modality, json.loads(f.read_text())))
        for e in ext:
            f = base / f"external-{e}" / "metrics.json"
            if f.exists():
                rows.append(_row(name, "image", json.loads(f.read_text()), dataset=e))
        p = base / "perception" / "perception_metrics.json"
        if p.exists():
            pm = json.loads(p.read_text())
            image_row["perception"] = {k: v for k, v in pm.items() if k != "by_task_level"}
    find = {(r["model"], r["modality"], r["dataset"]): r for r in rows}
    base_img = find[("base", "image", "test")]["macro"]["success"]
    base_txt = find.get(("base", "text", "test"), {}).get("macro", {}).get("success")
    mgsd_img = find[("mgsd", "image", "test")]["macro"]["success"]
    diff = paired_bootstrap_diff(samples["coldstart"], samples["mgsd"])
    closed = None
    if base_txt is not None and base_txt > base_img:
        closed = (mgsd_img - base_img) / (base_txt - base_img)
    headline = {
        "mgsd_minus_coldstart_success": diff,
        "mgsd_beats_coldstart": diff["ci"][0] > 0,
        "base_visual_success": base_img,
        "base_symbolic_success": base_txt,
        "mgsd_visual_success": mgsd_img,
        "gap_closed_fraction": closed,
    }
    teacher_file = run.out / "eval" / "base" / "teacher" / "teacher.json"
    summary = {
        "rows": rows,
        "headline": headline,
        "teacher_competence": json.loads(teacher_file.read_text()) if teacher_file.exists() else None,
        "timings": run.timings,
        "config": to_dict(cfg),
        "notes": [
            "The base is the shipped tiny Qwen3-VL pretrained offline by `mgsd pretrain` (generic scenes and "
            "planning from symbolic text; never a task render with its state): its model card has its gates.",
            "Rows 'teacher+plan' and 'teacher' are the base answering from the stage-2 teacher's own "
            "context (symbolic state with / without the reference plan): the teacher's competence.",
            "Macro = mean over tasks of level-balanced task scores; CIs are 95% bootstrap; the MGSD vs "
            "cold-start difference is a paired bootstrap over the same test samples.",
            "The gap closed is (MGSD image - base image) / (base text - base image), null when the base "
            "plans no better from text than from the image.",
            "plan_sft gets as many samples as stages 1 + 2 together (sample-matched, not compute-matched); "
            "opsd_no_coldstart and mgsd_no_plan use MGSD's stage-2 settings.",
        ],
    }
    write_json(summary, run.out / "summary.json")
    return summary
