"""Training configuration: one dataclass per concern, read from YAML with CLI overrides."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from mgsd.data.scenes import QUESTION_KINDS

Objective = Literal["perception", "plan", "symbolic", "opsd", "pretrain"]


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    # The vision tower and merger's lr is ``lr * vision_lr_scale``. A from-scratch ViT trained at the
    # LM's lr collapses: its tokens become one huge constant vector (norm ~600, cosine 1.0 between
    # cells) and the LM learns to ignore the image.
    vision_lr_scale: float = 1.0


@dataclass
class LoraConfig:
    r: int = 0  # 0 = full fine-tuning
    alpha: int = 16
    dropout: float = 0.0
    targets: str = "all-linear"  # or a comma-separated list of module names
    train_vision: bool = False  # the vision tower stays frozen unless asked (with LoRA: LoRA on it)
    # With LoRA: the vision tower and merger train in full beside the LM adapter (stored with the base
    # weights; the adapter-off teacher reads text only, so it is unaffected). For an untrained or
    # synthetic-only vision tower, which a rank-r LoRA cannot re-purpose.
    full_vision: bool = False


@dataclass
class OPSDConfig:
    """Stage 2: on-policy self-distillation from a privileged (symbolic-text) teacher."""

    # Who scores the student's tokens: "base" = the frozen weights under the student's LoRA adapter
    # (one copy in memory; after a LoRA stage 1 saved unmerged this is the pre-SFT base, as in the
    # paper), "init" = a frozen copy of the student's initial weights, "path" = a separate frozen model
    # at ``teacher_path``, "live" = the current policy itself, "ema" = an EMA of the policy.
    teacher: Literal["base", "init", "path", "live", "ema"] = "base"
    teacher_path: str | None = None
    ema_decay: float = 0.99
    privileged: Literal["state", "state+plan"] = "state+plan"  # the reference gives the plan too
    loss: Literal["sampled", "full", "topk", "jsd"] = "sampled"
    top_k: int = 16
    jsd_beta: float = 0.5
    adv_clip: float | None = None  # per-token clip of teacher - student log-prob
    ratio_clip: float = 0.2  # PPO clip, used when a rollout batch is reused
    updates_per_rollout: int = 1
    rollouts_per_prompt: int = 1
    reward_weight: float = 0.0  # mix in simulator success (added to every token's advantage)
    # Not in the paper: > 0 adds, per step, this weight times stage 1's cross-entropy on the same
    # prompts' images -> facts block (the perception target), so that updates on plan answers alone
    # do not unlearn what stage 1 taught (the tiny run's perception fell from 53% to 18% in 60 steps).
    perception_replay: float = 0.0
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256


@dataclass
class TrainConfig:
    objective: Objective = "perception"
    model: str = ""  # model directory or hub id to start from
    out: str = ""  # run directory (checkpoints, logs, final model)
    train_data: list[str] = field(default_factory=list)
    val_data: list[str] = field(default_factory=list)
    epochs: float = 1.0
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 8  # global: samples (prompts) per optimizer step, over all processes
    micro_batch_size: int = 8  # per process and forward pass
    seed: int = 0
    balance_tasks: bool = True  # every task gets an equal share of the updates, whatever its row count
    task_weights: dict[str, int] = field(default_factory=dict)  # with balance_tasks: shares (default 1)
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # master weights stay fp32
    trust_remote_code: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    opsd: OPSDConfig = field(default_factory=OPSDConfig)
    log_every: int = 1
    # accelerate trackers beside log.jsonl: "tensorboard", "wandb" (empty: none). One asked for and
    # not installed stops the run before it starts.
    trackers: list[str] = field(default_factory=list)
    eval_every: int = 0  # steps; 0 = only at the end
    val_samples: int = 64
    save_every: int = 50  # steps between resumable checkpoints
    keep_last: int = 2
    progress: bool = True
    save_merged: bool = False  # LoRA: fold the adapter into the saved model (else keep base + adapter/)
    # Pretraining only: weight of the dense per-token grounding loss on scene images (train/dense.py).
    dense_weight: float = 0.0
    # Perception / plan SFT: this share of the rows (chosen by a hash of the row id) is posed as the
    # text student's symbolic planning instead (text state -> reasoned plan, the base's own skill), so
    # that SFT on images does not erase planning. Without it the tiny base's text success fell from
    # 65% to 3% in 200 stage-1 steps. It never pairs an image with a plan.
    replay_symbolic: float = 0.0
    # Perception SFT: this share of the rows is asked the stage-2 student's plan prompt instead of the
    # perception questions, and trained on the facts block a reasoned answer opens with, open-ended
    # (no end-of-turn; nothing after the facts is trained, never the plan). The perception prompt
    # alone did not carry over: the cold start's facts were 52% right when asked, 27% inside its
    # plan answers.
    facts_under_plan_prompt: float = 0.0
    # Pretraining only: this share of the scene rows (by a hash of the row id) is posed as one short
    # question (where is X, what is in cell C, which cells are Y, size) instead of the whole description.
    scene_questions: float = 0.0
    # ... of these kinds only (data/scenes.py QUESTION_KINDS; empty: all of them).
    question_kinds: list[str] = field(default_factory=list)
    # SFT on images: weight of the attention grounding loss (train/grounding.py). Each target token
    # that names a cell asks head 0 of each ``grounding_layers`` layer, at the position predicting it,
    # to attend to that cell's image tokens. The model then runs eager attention (to see the weights).
    grounding_weight: float = 0.0
    grounding_layers: list[int] = field(default_factory=lambda: [1, 2, 3])
    # > 0: log-probs and the vocabulary losses (full, topk, jsd) are computed from the final hidden
    # states this many response tokens at a time, each block's logits recomputed in backward, instead
    # of from (batch, tokens, vocab) logits: at 2048 tokens x 152k vocab each fp32 such tensor is
    # 1.2 GB per sequence. Equal to the 0 path up to float summation order; costs one more head matmul
    # per block. 0 = the logits path (bit-identical to earlier versions).
    logit_chunk: int = 0
    # Recompute activations in backward (Backbone.enable_gradient_checkpointing): less memory for
    # about one more forward per step; the same gradients. For the paper's shapes on a real GPU.
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        validate(self)


def _check(ok: bool, key: str, value: object, want: str) -> None:
    if not ok:
        raise ValueError(f"{key} must be {want}, got {value!r}")


def _number(key: str, value: object, lo: float, hi: float = math.inf, *, lo_open: bool = False) -> None:
    """A finite number in [lo, hi] (or (lo, hi] with ``lo_open``); a NaN or inf is refused too."""
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value <= hi
    ok = ok and (value > lo if lo_open else value >= lo)  # type: ignore[operator]
    bounds = "" if lo == -math.inf else f" {'>' if lo_open else '>='} {lo:g}"
    bounds += f" and <= {hi:g}" if hi != math.inf else ""
    _check(ok, key, value, f"a finite number{bounds}")


def _integer(key: str, value: int, lo: int) -> None:
    _check(value >= lo, key, value, f"an integer >= {lo}")


def validate(cfg: TrainConfig) -> None:
    """Refuse settings that cannot train, before any work starts (one line naming the key).

    Without this ``optim.lr=inf`` trained to NaN weights and saved them, ``max_steps=-5`` saved the
    untouched model, and ``log_every=0`` or ``optim.betas=[0.9]`` failed with a traceback mid-run.
    """
    _validate_loop(cfg)
    _validate_data_mixture(cfg)
    _validate_optim(cfg.optim)
    _validate_lora_opsd(cfg)


def _validate_loop(cfg: TrainConfig) -> None:
    """Batching, step counts, logging and checkpointing."""
    _integer("batch_size", cfg.batch_size, 1)
    _integer("micro_batch_size", cfg.micro_batch_size, 1)
    _integer("max_steps", cfg.max_steps, 0)
    _number("epochs", cfg.epochs, 0)
    if cfg.epochs <= 0 and cfg.max_steps <= 0:
        raise ValueError("set epochs > 0 or max_steps > 0")
    _integer("log_every", cfg.log_every, 1)
    _integer("eval_every", cfg.eval_every, 0)
    _integer("val_samples", cfg.val_samples, 0)
    _integer("save_every", cfg.save_every, 0)
    _integer("keep_last", cfg.keep_last, 0)
    _integer("logit_chunk", cfg.logit_chunk, 0)


def _validate_data_mixture(cfg: TrainConfig) -> None:
    """What the examples mix in, and which objective each mixing setting belongs to."""
    _number("dense_weight", cfg.dense_weight, 0)
    _number("replay_symbolic", cfg.replay_symbolic, 0, 1)
    _number("facts_under_plan_prompt", cfg.facts_under_plan_prompt, 0, 1)
    if cfg.facts_under_plan_prompt > 0 and cfg.objective != "perception":
        raise ValueError(f"facts_under_plan_prompt is for the perception objective, not {cfg.objective!r}")
    _number("scene_questions", cfg.scene_questions, 0, 1)
    unknown = sorted(set(cfg.question_kinds) - set(QUESTION_KINDS))
    if unknown:
        raise ValueError(f"question_kinds: unknown {unknown}; choose from {list(QUESTION_KINDS)}")
    if cfg.scene_questions > 0 and cfg.objective != "pretrain":
        raise ValueError(f"scene_questions is for the pretrain objective, not {cfg.objective!r}")
    _number("grounding_weight", cfg.grounding_weight, 0)
    if cfg.grounding_weight > 0 and cfg.objective not in ("pretrain", "perception", "plan"):
        raise ValueError(f"grounding_weight is for the SFT objectives, not {cfg.objective!r}")
    _check(
        isinstance(cfg.grounding_layers, list)
        and bool(cfg.grounding_layers)
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in cfg.grounding_layers),
        "grounding_layers",
        cfg.grounding_layers,
        "a non-empty list of layer indices",
    )
    if cfg.replay_symbolic > 0 and cfg.objective not in ("perception", "plan"):
        raise ValueError(f"replay_symbolic is for the perception and plan objectives, not {cfg.objective!r}")
    _check(
        isinstance(cfg.task_weights, dict), "task_weights", cfg.task_weights, "a mapping of task -> integer"
    )
    for task, w in cfg.task_weights.items():
        _check(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1,
            f"task_weights.{task}",
            w,
            "an integer >= 1",
        )


def _validate_optim(o: OptimConfig) -> None:
    _number("optim.lr", o.lr, 0, lo_open=True)
    _number("optim.weight_decay", o.weight_decay, 0)
    _check(len(o.betas) == 2, "optim.betas", o.betas, "two numbers, e.g. [0.9, 0.999]")
    for b in o.betas:
        _number("optim.betas", b, 0, 1)
        _check(b < 1, "optim.betas", o.betas, "two numbers in [0, 1)")
    _number("optim.eps", o.eps, 0, lo_open=True)
    _number("optim.warmup_ratio", o.warmup_ratio, 0, 1)
    _check(o.warmup_ratio < 1, "optim.warmup_ratio", o.warmup_ratio, "in [0, 1)")
    _number("optim.max_grad_norm", o.max_grad_norm, 0)
    _number("optim.vision_lr_scale", o.vision_lr_scale, 0)


def _validate_lora_opsd(cfg: TrainConfig) -> None:
    lo = cfg.lora
    _integer("lora.r", lo.r, 0)
    _number("lora.alpha", lo.alpha, 0, lo_open=True)
    _number("lora.dropout", lo.dropout, 0, 1)
    _check(lo.dropout < 1, "lora.dropout", lo.dropout, "in [0, 1)")
    p = cfg.opsd
    _number("opsd.ema_decay", p.ema_decay, 0, 1)
    _integer("opsd.top_k", p.top_k, 1)
    _number("opsd.jsd_beta", p.jsd_beta, 0, 1)
    if p.adv_clip is not None:
        _number("opsd.adv_clip", p.adv_clip, 0, lo_open=True)
    _number("opsd.ratio_clip", p.ratio_clip, 0)
    _integer("opsd.updates_per_rollout", p.updates_per_rollout, 1)
    _integer("opsd.rollouts_per_prompt", p.rollouts_per_prompt, 1)
    _number("opsd.reward_weight", p.reward_weight, -math.inf)
    _number("opsd.perception_replay", p.perception_replay, 0)
    _number("opsd.temperature", p.temperature, 0)
    _number("opsd.top_p", p.top_p, 0, 1, lo_open=True)
    _integer("opsd.max_new_tokens", p.max_new_tokens, 1)
