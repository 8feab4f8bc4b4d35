"""Training configuration: one dataclass per concern, read from YAML with CLI overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    eval_every: int = 0  # steps; 0 = only at the end
    val_samples: int = 64
    save_every: int = 50  # steps between resumable checkpoints
    keep_last: int = 2
    progress: bool = True
    save_merged: bool = False  # LoRA: fold the adapter into the saved model (else keep base + adapter/)
    # Pretraining only: weight of the dense per-token grounding loss on scene images (train/dense.py).
    dense_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("batch_size and micro_batch_size must be positive")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
