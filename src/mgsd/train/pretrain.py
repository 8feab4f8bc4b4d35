"""``mgsd pretrain``: build the tiny "pretrained VLM" that ``mgsd run`` starts from.

The paper starts from Qwen3-VL-Instruct, which perceives images and plans from text but fails at
planning from the image. With no downloadable weights, this makes the same starting point once:

1. data: synthetic grid scenes (``mgsd.data.scenes``: generic visual grounding, never a task render)
   and task states in symbolic text (never their renders), plus a held-out validation split;
2. a fixed tokenizer built from that data, and a random tiny Qwen3-VL (or the weights of an earlier
   round, to train in rounds);
3. one full fine-tune (ViT, merger and LM) on the ``pretrain`` mixture: scenes -> descriptions,
   symbolic states -> reasoned plans (plain prompt, teacher prompt with and without the plan hint),
   every source an equal share of the updates;
4. the gates on held-out states (``mgsd.eval.gates``) and a model card, next to the weights and the
   hashes of every state the base saw (``state_hashes.txt``), so that runs exclude them.

Every step resumes: data and the init are kept once complete, training resumes from its checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mgsd.config import to_dict
from mgsd.data.generate import HASHES_FILE, generate_rows, read_state_hashes, state_hash
from mgsd.data.io import read_rows, write_rows
from mgsd.data.scenes import SCENE_TASK, scene_prompt, scene_rows, scene_target
from mgsd.files import write_json
from mgsd.tasks import get_task, parse_levels

_PRETRAIN_TASKS = ("frozenlake", "maze", "minibehaviour")


@dataclass
class PretrainData:
    tasks: list[str] = field(default_factory=lambda: list(_PRETRAIN_TASKS))
    # task -> level spec ("3-8", "3,5", "all"); a task not named here: all its levels.
    levels: dict[str, str] = field(
        default_factory=lambda: {"frozenlake": "3-8", "maze": "3-6", "minibehaviour": "5-6"}
    )
    # States per level (a task not named: ``default_per_level``). Small levels have only a few
    # thousand distinct states (MiniBehaviour 5, Maze 3, FrozenLake 3: about 4-6k), and every run
    # must still find its test, val and train states.
    per_level: dict[str, int] = field(
        default_factory=lambda: {"frozenlake": 1000, "maze": 1500, "minibehaviour": 1500}
    )
    default_per_level: int = 1000
    scenes: int = 16000
    val_per_level: int = 4
    seed: int = 1_000  # far from the run seeds (0, 1, ...), though exclusion does not rely on it

    @staticmethod
    def upgrade_keys(data: Mapping[str, Any]) -> dict[str, Any]:
        """Older configs' per-task keys (``maze_levels: 3-6``, ``maze_per_level: 1500``) as the
        ``levels`` / ``per_level`` mappings."""
        own = {f.name for f in fields(PretrainData)}
        out: dict[str, Any] = {k: v for k, v in data.items() if k in own}
        for key, value in data.items():
            for suffix, target in (("_per_level", "per_level"), ("_levels", "levels")):
                if key not in own and key.endswith(suffix):
                    merged = out.get(target)
                    out[target] = {**(merged if isinstance(merged, Mapping) else {})}
                    out[target][key.removesuffix(suffix)] = value
                    break
            else:
                if key not in own:
                    out[key] = value  # unknown: from_dict names it
        if set(data) - own - set(out):  # an older config: these keys did not exist, their values were fixed
            out.setdefault("tasks", list(_PRETRAIN_TASKS))
            out.setdefault("default_per_level", PretrainData.default_per_level)
        return out

    def task_levels(self, name: str) -> list[int]:
        """The levels of task ``name``; ValueError for an unknown task or a bad spec."""
        return parse_levels(get_task(name), self.levels.get(name))

    def states_per_level(self, name: str) -> int:
        return self.per_level.get(name, self.default_per_level)


@dataclass
class PretrainConfig:
    preset: str = "tiny"
    init: str | None = None  # an earlier base to continue from (training in rounds)
    # With ``init``: start the vision tower and merger afresh (a fresh tiny init of the same seed) and
    # keep the LM, for a round that retrains a collapsed tower while keeping the planning LM.
    reset_vision: bool = False
    seed: int = 0
    data: PretrainData = field(default_factory=PretrainData)
    steps: int = 4000
    batch_size: int = 16
    micro_batch_size: int = 16
    lr: float = 2e-3
    warmup_ratio: float = 0.03
    compute_dtype: str = "float32"  # bfloat16 only where the CPU has it (measure first)
    vision_lr_scale: float = 1.0  # the vision tower's lr relative to ``lr``
    dense_weight: float = 0.0  # the dense per-token grounding loss on scenes (train/dense.py)
    scene_weight: int = 1  # scene images' share of the updates, against 1 for each task
    scene_questions: float = 0.0  # share of scene rows posed as one short question (data/scenes.py)
    question_kinds: list[str] = field(default_factory=list)  # ... of these kinds (empty: all)
    grounding_weight: float = 0.0  # the attention grounding loss on image rows (train/grounding.py)
    eval_every: int = 1000
    save_every: int = 200
    gate_per_task: int = 120
    gate_max_new_tokens: int = 160
    progress: bool = True
    overrides: list[str] = field(default_factory=list)  # extra TrainConfig key=value settings


def build_pretrain_data(cfg: PretrainConfig, out: Path) -> None:
    """Scenes and symbolic task states (no renders) in ``out/pretrain``, a validation split of
    unseen states in ``out/val``, and the hashes of every pretraining state."""
    d = cfg.data
    hashes: list[str] = []
    for name in d.tasks:
        task, seen = get_task(name), set()
        rows = generate_rows(
            task,
            d.task_levels(name),
            d.states_per_level(name),
            split="pretrain",
            seed=d.seed,
            exclude=seen,
            render=False,
            progress=cfg.progress,
        )
        hashes += [state_hash(r["state"]) for r in rows]
        write_rows(rows, out / "pretrain" / f"{name}-pretrain.parquet")
        val = generate_rows(
            task,
            d.task_levels(name),
            d.val_per_level,
            split="val",
            seed=d.seed,
            exclude=seen,
            render=False,
            progress=False,
        )
        write_rows(val, out / "val" / f"{name}-val.parquet")
    write_rows(scene_rows(d.scenes, d.seed, progress=cfg.progress), out / "pretrain" / "scenes.parquet")
    (out / HASHES_FILE).write_text("".join(h + "\n" for h in sorted(set(hashes))))
    (out / "COMPLETE").write_text("ok\n")


def tokenizer_corpus(rows: Sequence[dict[str, Any]], n: int = 600) -> list[str]:
    """Every prompt and target form of a slice of ``rows`` (tasks and scenes), so the fixed tokenizer
    knows the texts of every stage (perception, plans, the teacher's context)."""
    from mgsd.train.examples import build_examples

    tasks = [r for r in rows if r["task"] != SCENE_TASK]
    tasks = tasks[:: max(1, len(tasks) // n)]
    texts = []
    for objective in ("perception", "symbolic", "opsd"):
        for e in build_examples(tasks, objective):
            texts += [e.prompt, e.target or "", e.teacher_system or "", e.teacher_prompt or ""]
    scenes = [r for r in rows if r["task"] == SCENE_TASK]
    for r in scenes[:: max(1, len(scenes) // n)]:
        scene = json.loads(r["state"])
        texts += [scene_prompt(scene), scene_target(scene)]
    return [t for t in texts if t]


def train_settings(cfg: PretrainConfig, model: Path, out: Path, data: Path) -> dict[str, Any]:
    return {
        "objective": "pretrain",
        "model": str(model),
        "out": str(out),
        "train_data": [str(data / "pretrain")],
        "val_data": [str(data / "val")],
        "max_steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "micro_batch_size": cfg.micro_batch_size,
        "seed": cfg.seed,
        "compute_dtype": cfg.compute_dtype,
        "progress": cfg.progress,
        "eval_every": cfg.eval_every,
        "save_every": cfg.save_every,
        "val_samples": 48,
        "optim": {
            "lr": cfg.lr,
            "warmup_ratio": cfg.warmup_ratio,
            "schedule": "cosine",
            "vision_lr_scale": cfg.vision_lr_scale,
        },
        "dense_weight": cfg.dense_weight,
        "scene_questions": cfg.scene_questions,
        "question_kinds": list(cfg.question_kinds),
        "grounding_weight": cfg.grounding_weight,
        "task_weights": {SCENE_TASK: cfg.scene_weight} if cfg.scene_weight != 1 else {},
        "lora": {"r": 0, "train_vision": True},  # the whole model: ViT, merger and LM
        "opsd": {"max_new_tokens": cfg.gate_max_new_tokens},
    }


def pretrain(cfg: PretrainConfig, out: str | Path) -> Path:
    """Run (or resume) the whole pretraining; returns the finished base directory ``out/base``
    (its gates and model card: ``mgsd.pipeline.pretrained_base``)."""
    from mgsd.config import apply_overrides, from_dict
    from mgsd.models.tiny import PRESETS, init_tiny
    from mgsd.train.checkpoint import latest_checkpoint
    from mgsd.train.config import TrainConfig
    from mgsd.train.trainer import train

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    write_json(to_dict(cfg), root / "pretrain_config.json")
    data = root / "data"
    if not (data / "COMPLETE").exists():
        print("== pretraining data", flush=True)
        build_pretrain_data(cfg, data)
    init = root / "init"
    if cfg.init and cfg.reset_vision:
        if not (init / "config.json").exists():
            print("== init (earlier base, fresh vision tower)", flush=True)
            reset_vision_tower(Path(cfg.init), init, cfg.preset, cfg.seed)
    elif cfg.init:
        init = Path(cfg.init)
    elif not (init / "config.json").exists():
        if cfg.preset not in PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r}; expected one of {sorted(PRESETS)}")
        print("== init (fixed tokenizer)", flush=True)
        corpus = tokenizer_corpus(
            read_rows(
                data / "pretrain",
                columns=["id", "task", "level", "state", "image", "optimal_plan", "optimal_length"],
            )
        )
        init_tiny(init, preset=cfg.preset, corpus=corpus, seed=cfg.seed)
    run = root / "train"
    if not (run / "model" / "config.json").exists():
        print("== pretraining", flush=True)
        settings = apply_overrides(train_settings(cfg, init, run, data), cfg.overrides)
        train(from_dict(TrainConfig, settings), resume=latest_checkpoint(run / "checkpoints") is not None)
    base = root / "base"
    if not (base / "config.json").exists():
        tmp = root / ".base.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(run / "model", tmp)
        shutil.copy(data / HASHES_FILE, tmp / HASHES_FILE)
        if cfg.init:  # a later round: the states of every earlier round count as seen too
            earlier = read_state_hashes(cfg.init)
            mine = read_state_hashes(tmp)
            (tmp / HASHES_FILE).write_text("".join(h + "\n" for h in sorted(earlier | mine)))
        tmp.rename(base)
    return base


def reset_vision_tower(src: Path, out: Path, preset: str, seed: int) -> Path:
    """``src`` with its vision tower and merger replaced by a fresh random init of ``preset`` (its LM,
    tokenizer and template kept), written atomically to ``out``."""
    import torch

    from mgsd.models import lora as lora_lib
    from mgsd.models.backbone import Backbone
    from mgsd.models.tiny import PRESETS, build_qwen_vl

    bb = Backbone.load(src, dtype="float32")
    fresh, _ = build_qwen_vl("qwen3_vl", PRESETS[preset], seed=seed, tokenizer=bb.tokenizer)
    new = {n: p for n, p in fresh.named_parameters() if lora_lib.is_vision(n)}
    with torch.no_grad():
        for name, p in bb.model.named_parameters():
            if lora_lib.is_vision(name):
                if name not in new or new[name].shape != p.shape:
                    raise ValueError(f"{src}: vision parameter {name} does not match the {preset} preset")
                p.copy_(new[name])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bb.save(tmp)
    if (src / HASHES_FILE).exists():
        shutil.copy(src / HASHES_FILE, tmp / HASHES_FILE)
    tmp.rename(out)
    return out
