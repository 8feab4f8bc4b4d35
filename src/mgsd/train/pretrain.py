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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgsd.config import to_dict
from mgsd.data.generate import HASHES_FILE, generate_rows, read_state_hashes, state_hash
from mgsd.data.io import read_rows, write_rows
from mgsd.data.scenes import SCENE_TASK, scene_prompt, scene_rows, scene_target
from mgsd.files import read_jsonl
from mgsd.tasks import get_task, parse_levels


@dataclass
class PretrainData:
    frozenlake_levels: str = "3-8"
    maze_levels: str = "3-6"
    minibehaviour_levels: str = "5-6"
    # Per level; small levels have only a few thousand distinct states (MiniBehaviour 5, Maze 3,
    # FrozenLake 3: about 4-6k), and every run must still find its test, val and train states.
    frozenlake_per_level: int = 1000
    maze_per_level: int = 1500
    minibehaviour_per_level: int = 1500
    scenes: int = 16000
    val_per_level: int = 4
    seed: int = 1_000  # far from the run seeds (0, 1, ...), though exclusion does not rely on it


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
    eval_every: int = 1000
    save_every: int = 200
    gate_per_task: int = 120
    gate_max_new_tokens: int = 160
    progress: bool = True
    overrides: list[str] = field(default_factory=list)  # extra TrainConfig key=value settings


def task_levels(data: Any, name: str) -> list[int]:
    return parse_levels(get_task(name), getattr(data, f"{name}_levels"))


def build_pretrain_data(cfg: PretrainConfig, out: Path) -> None:
    """Scenes and symbolic task states (no renders) in ``out/pretrain``, a validation split of
    unseen states in ``out/val``, and the hashes of every pretraining state."""
    d = cfg.data
    hashes: list[str] = []
    for name in ("frozenlake", "maze", "minibehaviour"):
        task, seen = get_task(name), set()
        rows = generate_rows(
            task,
            task_levels(d, name),
            getattr(d, f"{name}_per_level"),
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
            task_levels(d, name),
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
        "task_weights": {SCENE_TASK: cfg.scene_weight} if cfg.scene_weight != 1 else {},
        "lora": {"r": 0, "train_vision": True},  # the whole model: ViT, merger and LM
        "opsd": {"max_new_tokens": cfg.gate_max_new_tokens},
    }


def pretrain(cfg: PretrainConfig, out: str | Path, *, gates: bool = True) -> Path:
    """Run (or resume) the whole pretraining; returns the finished base directory ``out/base``."""
    from mgsd.config import apply_overrides, from_dict
    from mgsd.models.tiny import PRESETS, init_tiny
    from mgsd.train.checkpoint import latest_checkpoint
    from mgsd.train.config import TrainConfig
    from mgsd.train.trainer import train

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "pretrain_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
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
    if gates:
        from mgsd.eval.gates import evaluate_gates

        result = evaluate_gates(
            base,
            root / "gates",
            per_task=cfg.gate_per_task,
            max_new_tokens=cfg.gate_max_new_tokens,
            seed=cfg.data.seed + 1,
            progress=cfg.progress,
        )
        write_model_card(base, cfg, result, root)
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


def write_model_card(base: Path, cfg: PretrainConfig, gates: dict[str, Any], root: Path) -> None:
    """README.md beside the weights: what the base saw, how long it trained, its gates, how to rebuild."""
    from mgsd.eval.gates import GATES, format_gates

    log = read_jsonl(root / "train" / "log.jsonl")
    steps = [r for r in log if "step_time" in r]
    seconds = sum(r["step_time"] for r in steps)
    final_loss = steps[-1]["loss"] if steps else float("nan")
    n_hashes = len(read_state_hashes(base))
    passed = gates["passed"]
    d = cfg.data
    lines = [
        "# mgsd tiny base (Qwen3-VL architecture, pretrained offline)",
        "",
        "The starting point `mgsd run` uses by default: a tiny Qwen3-VL that, like the paper's",
        "Qwen3-VL-Instruct, perceives generic images and plans from a symbolic text state, but was never",
        "shown a task render together with its state or plan. Stage 1 and stage 2 must add that.",
        "",
        "## Training data",
        f"- {d.scenes:,} synthetic grid scenes (`mgsd.data.scenes`: sizes 3-8, random palettes, shapes,",
        "  colour fills, wall bands) described as `key: value` lines with 0-based (row,col) cells;",
        f"- symbolic planning from text: FrozenLake {d.frozenlake_levels} ({d.frozenlake_per_level}/level), "
        f"Maze {d.maze_levels} ({d.maze_per_level}/level), MiniBehaviour {d.minibehaviour_levels} "
        f"({d.minibehaviour_per_level}/level); prompts: the text student's (1/2), the teacher's with the "
        "plan hint (1/4) and without (1/4); target: the reasoned answer (facts, path, `<answer>`);",
        (
            "- every source (scenes and each task) gets an equal share of the updates."
            if cfg.scene_weight == 1
            else f"- scenes get {cfg.scene_weight} shares of the updates against 1 for each task."
        ),
        *(
            [
                f"- {100 * cfg.scene_questions:.0f}% of scene rows are one short question (where is X, what "
                "is in cell C, which cells are Y, size) instead of the whole description."
            ]
            if cfg.scene_questions
            else []
        ),
        f"- `{HASHES_FILE}`: the {n_hashes:,} state hashes (sha256 of the canonical state JSON, 16 hex",
        "  digits) of every task state seen; `mgsd run` excludes them from its splits and reports the",
        "  overlap of external test sets with them.",
        "",
        "## Training",
        f"- full fine-tune (ViT, merger, LM) from {cfg.init if cfg.init else 'random init'}: "
        f"{len(steps)} steps x batch {cfg.batch_size}, AdamW lr {cfg.lr}, warmup {cfg.warmup_ratio}, "
        "cosine, "
        f"compute dtype {cfg.compute_dtype} (fp32 master weights), seed {cfg.seed};",
        f"- {seconds / 60:.0f} min of steps on 2 CPU cores; final training loss {final_loss:.3f} nats/token.",
        "",
        f"## Gates (held-out states, {gates['teacher']['n']} per condition, greedy)",
        "",
        *format_gates(gates),
        "",
        f"- copy (teacher context with the plan) >= {100 * GATES['copy_per_task']:.0f}% on every task: "
        f"{'pass' if passed['copy_per_task'] else 'FAIL'}",
        f"- text macro >= {100 * GATES['text_macro']:.0f}%: {'pass' if passed['text_macro'] else 'FAIL'}",
        f"- image macro <= {GATES['image_over_text']} x text macro: "
        f"{'pass' if passed['image_over_text'] else 'FAIL'}",
        "",
        "Reference answer log-prob per token, teacher context with / without the plan:",
        "",
        "| task | with plan | without plan | gain |",
        "|---|---|---|---|",
    ]
    for task, v in (gates["teacher"].get("reference_logprob") or {}).items():
        lines.append(f"| {task} | {v['with_plan']:.3f} | {v['without_plan']:.3f} | {v['plan_gain']:+.3f} |")
    scenes = gates.get("scene_perception") or {}
    if scenes:
        lines += [
            "",
            "Scene perception (held-out synthetic scenes, greedy): share of reference lines reproduced",
            "exactly, by kind of line:",
            "",
            "| line | accuracy | lines |",
            "|---|---|---|",
            *(f"| {k} | {100 * v['accuracy']:.1f} | {v['lines']} |" for k, v in scenes.items()),
        ]
    questions = gates.get("scene_questions") or {}
    if questions:
        lines += [
            "",
            "Single questions about held-out synthetic scenes (greedy, exact answer):",
            "",
            "| question | accuracy [95% CI] | n | chance |",
            "|---|---|---|---|",
            *(
                f"| {k} | {100 * v['accuracy']:.1f} [{100 * v['ci'][0]:.1f}, {100 * v['ci'][1]:.1f}] "
                f"| {v['n']} | " + (f"{100 * v['chance']:.1f}" if "chance" in v else "") + " |"
                for k, v in questions.items()
            ),
        ]
    attention = gates.get("object_attention")
    if attention:
        best = attention["best_head"]
        lines += [
            "",
            f"Where the LM looks, asked where one object is ({attention['n']} held-out scenes): the",
            "last prompt token's attention over the image, per layer (mean over heads), and the share",
            "of it on the object's cell against uniform attention:",
            "",
            "| layer | image mass | entropy (1 = uniform) | on object | uniform |",
            "|---|---|---|---|---|",
            *(
                "| {} | {:.2f} | {:.2f} | {:.3f} | {:.3f} |".format(
                    i,
                    *(
                        sum(h[k] for h in heads) / len(heads)
                        for k in ("image_mass", "entropy", "on_object", "uniform")
                    ),
                )
                for i, heads in enumerate(attention["layers"])
            ),
            "",
            f"Most object-focused head: layer {best['layer']} head {best['head']}, "
            f"{best['on_object_over_uniform']:.2f}x uniform.",
        ]
    if cfg.init:
        what = "with its vision tower and merger started afresh" if cfg.reset_vision else "as it was"
        lines += [
            "",
            f"This is a later round: it continued an earlier base {what}"
            + (
                f", with the dense per-token grounding loss (weight {cfg.dense_weight})"
                if cfg.dense_weight
                else ""
            )
            + f", vision lr x{cfg.vision_lr_scale}.",
        ]
    lines += [
        "",
        "## Rebuild",
        "",
        "```bash",
        "mgsd pretrain --config configs/pretrain-tiny.yaml --out runs/pretrain   # resumable",
        *(
            ["mgsd pretrain --config configs/pretrain-tiny-round2.yaml --out runs/pretrain2"]
            if cfg.init
            else []
        ),
        "```",
        "",
        "License: MIT, as the project. Made by mgsd's own code; no external weights or data.",
    ]
    (base / "README.md").write_text("\n".join(lines) + "\n")
