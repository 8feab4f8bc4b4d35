"""Stage-2 (OPSD) training throughput: our trainer vs TRL's ``DistillationTrainer``; teacher memory.

Both trainers run on the same tiny Qwen3-VL (``init_tiny``), the same Maze level-3 samples, on the
same CPU threads, with the same global batch (one optimizer step per rollout batch, no gradient
accumulation), the same LoRA (r, alpha, dropout 0, on exactly the same language-model linear
layers; vision tower frozen), the same sampling (temperature 1, top-p 1, no top-k) and the SAME
GENERATION LENGTH: every rollout is forced to exactly ``--new-tokens`` tokens (TRL:
``min_new_tokens = max_new_tokens``; ours: the stop token is set to the image placeholder, which
our sampler never emits). Tokens generated per step are printed for both as a check.

What differs between the two libraries, and what we chose:

* Teacher input. TRL's teacher always reads the student's exact prompt (text + image); ours reads a
  privileged text-only context (system prompt + symbolic state + plan, no image). For the headline
  ratio ("equal") our teacher is given the student's own prompt instead, through a small subclass
  of our ``Trainer`` that only exists in this benchmark (``encode_teacher`` returns the student
  context), so both teachers run the same forward on the same tokens, image included.
* Teacher weights. TRL needs a teacher model object: we give it a second, frozen copy of the same
  base weights. Ours uses ``opsd.teacher=base``: the student's weights with the LoRA adapter
  disabled (one copy). The arithmetic is the same; only memory differs.
* Loss. TRL optimises a full-vocabulary divergence (``beta=1``: reverse KL, chunked over the
  vocabulary). For the "equal" row ours uses ``opsd.loss=full`` (the same full-vocabulary reverse
  KL). The "paper" row is our default stage-2 step as MGSD trains it: sampled-token reverse-KL
  advantage (``opsd.loss=sampled``) with the privileged text teacher; its ratio to TRL is reported
  too but is not an equal-inputs comparison (the teacher context is text: no vision tower, and a
  different length than the student prompt; both lengths are printed).

Each run is a fresh subprocess. Runs are interleaved over ``--rounds`` (ours, TRL, ours, ...), so
load from other processes on a shared machine hits every variant alike; a step's time is the wall
time between the ends of consecutive optimizer steps (sampling, scoring, backward, clip, AdamW,
logging), after ``--warmup`` steps. The median over rounds is reported (best round in brackets).

Memory: peak resident set (VmHWM) of our stage-2 run in a fresh process, with the adapter-disabled
base as teacher vs ``opsd.teacher=live`` (the policy scores its own tokens: no teacher at all) and,
for scale, ``opsd.teacher=init`` (a second frozen copy of the weights). The peak counter is reset
after the imports, so "above baseline" is what the trainer itself allocated.

    python benchmarks/bench_opsd.py [--preset tiny|small] [--batch 8] [--new-tokens 32] [--steps 4]
                                    [--warmup 1] [--rounds 3] [--threads 0] [--lora-r 8]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _memory import reset_peak, status_mb  # benchmarks/_memory.py, beside this script
from transformers.utils import logging as hf_logging

from mgsd.config import load_config
from mgsd.data.generate import generate_dataset
from mgsd.data.io import read_rows
from mgsd.models import Backbone, init_tiny
from mgsd.models.context import Context
from mgsd.tasks import get_task
from mgsd.train.batches import encode_student
from mgsd.train.config import TrainConfig
from mgsd.train.examples import Example, build_examples
from mgsd.train.trainer import Trainer

# name -> (label, teacher input, loss); "trl" is TRL's DistillationTrainer, the others are ours.
SPEED_VARIANTS: dict[str, tuple[str, str, str]] = {
    "trl": ("TRL DistillationTrainer", "student prompt+image", "full-vocab reverse KL (beta=1)"),
    "ours-equal": ("ours, equal inputs and loss", "student prompt+image", "full-vocab reverse KL"),
    "ours-paper": ("ours, MGSD stage 2 (paper)", "privileged text", "sampled-token reverse KL"),
}
MEMORY_VARIANTS = ("base", "live", "init")  # opsd.teacher of our stage-2 run


# ---------------------------------------------------------------------------------------------- helpers
def load_avg() -> float:
    """The 1-minute load average: above the thread count, other processes compete for the cores."""
    return os.getloadavg()[0]


def examples(data: str) -> list[Example]:
    return build_examples(read_rows([data]), "opsd")


def step_times(ticks: list[float], warmup: int) -> list[float]:
    """Durations of the steps after the first ``warmup`` (>= 1), from the end times of all steps:
    a step lasts from the end of the previous one to its own end."""
    return [b - a for a, b in zip(ticks[warmup - 1 :], ticks[warmup:], strict=False)]


# ---------------------------------------------------------------------------------------------- ours
class BenchTrainer(Trainer):
    """Our trainer, unchanged except for what the comparison needs: step end times are recorded;
    rollouts never stop before ``max_new_tokens``; optionally the teacher reads the student prompt."""

    def __init__(self, cfg: TrainConfig, *, teacher_reads_student_prompt: bool) -> None:
        super().__init__(cfg)
        self.ticks: list[float] = []
        self.records: list[dict[str, Any]] = []
        self.same_prompt = teacher_reads_student_prompt
        # The image placeholder is suppressed by our sampler, so as the only stop token it forces
        # every rollout to exactly max_new_tokens (TRL gets min_new_tokens = max_new_tokens).
        assert self.bb.image_token_id is not None
        self.bb.generate = functools.partial(  # type: ignore[method-assign]
            self.bb.generate, stop_token_ids=[int(self.bb.image_token_id)]
        )

    def _opsd_step(self, exs: list[Example]) -> dict[str, float]:
        if self.same_prompt:
            # The rollout builds the teacher context once per step with encode_teacher: hand it the
            # student's own context (text + image) instead, as TRL's teacher sees.
            rows = [e for e in exs for _ in range(self.cfg.opsd.rollouts_per_prompt)]

            def student_context(systems: Any, texts: Any) -> Context:
                return encode_student(self.bb, rows)

            self.bb.encode_teacher = student_context  # type: ignore[method-assign]
        return super()._opsd_step(exs)

    def _log(self, record: dict[str, Any]) -> None:
        self.ticks.append(time.perf_counter())
        self.records.append(record)
        super()._log(record)


def ours_config(a: argparse.Namespace, out: Path, *, loss: str, teacher: str, steps: int) -> TrainConfig:
    settings = {
        "objective": "opsd",
        "model": a.model,
        "out": str(out),
        "train_data": [a.data],
        "max_steps": steps,
        "batch_size": a.batch,
        "micro_batch_size": a.batch,
        "progress": False,
        "save_every": 0,
        "log_every": 1,
        "lora": {"r": a.lora_r, "alpha": 2 * a.lora_r, "dropout": 0.0},
        "optim": {"lr": 1e-5, "schedule": "constant", "weight_decay": 0.0, "max_grad_norm": 1.0},
        "opsd": {
            "teacher": teacher,
            "loss": loss,
            "max_new_tokens": a.new_tokens,
            "temperature": 1.0,
            "top_p": 1.0,
        },
    }
    return load_config(TrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in settings.items()])


def run_ours(a: argparse.Namespace, variant: str, out: Path) -> dict[str, Any]:
    equal = variant == "ours-equal"
    cfg = ours_config(a, out, loss="full" if equal else "sampled", teacher="base", steps=a.warmup + a.steps)
    trainer = BenchTrainer(cfg, teacher_reads_student_prompt=equal)
    trainer.run()
    tokens = [r["response_tokens"] * a.batch for r in trainer.records if "response_tokens" in r]
    return {"step_times": step_times(trainer.ticks, a.warmup), "gen_tokens_per_step": tokens[-1]}


# ---------------------------------------------------------------------------------------------- TRL
def run_trl(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    from mgsd.models.lora import lora_target_modules

    exs = examples(a.data)
    # Conversational prompts with an image slot after the text, as our student prompt (image last).
    rows = [
        {
            "prompt": [{"role": "user", "content": [{"type": "text", "text": e.prompt}, {"type": "image"}]}],
            "images": [e.pil_image()],
        }
        for e in exs
    ]
    student = Backbone.load(a.model, device="cpu")
    check_same_prompt(student, exs[0])
    teacher = Backbone.load(a.model, device="cpu").freeze()  # the same base weights, second copy

    class Ticks(TrainerCallback):
        def __init__(self) -> None:
            self.ticks: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ticks.append(time.perf_counter())

    ticks = Ticks()
    args = DistillationConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        max_steps=a.warmup + a.steps,
        max_completion_length=a.new_tokens,
        generation_kwargs={"min_new_tokens": a.new_tokens},  # forced length, as ours
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=1.0,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    lora = LoraConfig(
        r=a.lora_r,
        lora_alpha=2 * a.lora_r,
        lora_dropout=0.0,
        target_modules=lora_target_modules(student.model),  # the layers our add_lora adapts
        bias="none",
    )
    trainer = DistillationTrainer(
        model=student.model,
        teacher_model=teacher.model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=student.processor,
        peft_config=lora,
        callbacks=[ticks],
    )
    trainer.train()
    lengths = [
        r["completions/mean_length"] for r in trainer.state.log_history if "completions/mean_length" in r
    ]
    return {"step_times": step_times(ticks.ticks, a.warmup), "gen_tokens_per_step": lengths[-1] * a.batch}


def check_same_prompt(bb: Backbone, ex: Example) -> None:
    """TRL tokenises the conversation with the processor's chat template; it must give our ids."""
    conv = [
        {
            "role": "user",
            "content": [{"type": "text", "text": ex.prompt}, {"type": "image", "image": ex.pil_image()}],
        }
    ]
    trl_ids = bb.processor.apply_chat_template(
        conv, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    ours = bb.encode_student([ex.prompt], [ex.pil_image()]).input_ids[0].tolist()
    if list(trl_ids["input_ids"][0]) != ours:
        raise RuntimeError("TRL's student prompt ids differ from ours: the comparison would not be equal")


# ---------------------------------------------------------------------------------------------- memory
def run_memory(a: argparse.Namespace, teacher: str, out: Path) -> dict[str, Any]:
    baseline = reset_peak()  # after the imports: what follows is the trainer's own memory
    cfg = ours_config(a, out, loss="sampled", teacher=teacher, steps=a.warmup + 2)
    trainer = BenchTrainer(cfg, teacher_reads_student_prompt=False)
    trainer.run()
    return {"baseline_mb": baseline, "peak_mb": status_mb("VmHWM")}


# ---------------------------------------------------------------------------------------------- driver
def worker(a: argparse.Namespace) -> None:
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        if a.worker == "trl":
            result = run_trl(a, out)
        elif a.worker.startswith("ours-"):
            result = run_ours(a, a.worker, out)
        else:
            result = run_memory(a, a.worker.removeprefix("memory-"), out)
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))


def spawn(a: argparse.Namespace, name: str, model: Path, data: Path, memory: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--model", str(model), "--data", str(data)]
    for flag in ("batch", "new_tokens", "steps", "warmup", "threads", "lora_r"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
    env = dict(os.environ)
    if memory:
        # Large blocks come from mmap and go back on free: RSS follows live tensors, not heap history.
        env |= {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"worker {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prompt_lengths(model: Path, data: Path) -> tuple[int, int, int]:
    """Tokens of the student prompt, of its image, and of the privileged teacher context (mean)."""
    bb = Backbone.load(model, device="cpu")
    exs = examples(str(data))
    student = bb.encode_student([e.prompt for e in exs[:8]], [e.pil_image() for e in exs[:8]])
    teacher = bb.encode_teacher(
        [e.teacher_system for e in exs[:8]], [e.teacher_prompt or "" for e in exs[:8]]
    )
    image = int((student.input_ids[0] == bb.image_token_id).sum())
    mean = float(teacher.attention_mask.sum(-1).float().mean())
    return int(student.attention_mask[0].sum()), image, round(mean)


def measure_speed(a: argparse.Namespace, model: Path, data: Path) -> dict[str, Any]:
    """Every speed variant once per round, interleaved, each in a fresh process."""
    times: dict[str, list[float]] = {k: [] for k in SPEED_VARIANTS}
    rates: dict[str, list[float]] = {k: [] for k in SPEED_VARIANTS}
    tokens: dict[str, float] = {}
    loads = []
    for _ in range(a.rounds):
        for name in SPEED_VARIANTS:
            loads.append(load_avg())
            r = spawn(a, name, model, data)
            times[name] += r["step_times"]
            rates[name].append(len(r["step_times"]) / sum(r["step_times"]))
            tokens[name] = r["gen_tokens_per_step"]
    loads.append(load_avg())
    return {"times": times, "rates": rates, "tokens": tokens, "loads": loads}


def report_speed(speed: dict[str, Any], threads: int) -> None:
    rates, times, tokens, loads = speed["rates"], speed["times"], speed["tokens"], speed["loads"]
    head = f"{'variant':<30}{'teacher input':<23}{'loss':<32}"
    print(f"\n  {head}{'steps/s (best)':>16}{'s/step':>9}{'tok/step':>10}")
    median = {k: statistics.median(v) for k, v in rates.items()}
    for name, (label, teacher_input, loss) in SPEED_VARIANTS.items():
        print(
            f"  {label:<30}{teacher_input:<23}{loss:<32}{median[name]:>8.3f} ({max(rates[name]):.3f})"
            f"{statistics.median(times[name]):>9.2f}{tokens[name]:>10.0f}"
        )
    for name, what in (("ours-equal", "equal inputs and loss"), ("ours-paper", "paper step vs TRL    ")):
        note = "" if name == "ours-equal" else "; not equal inputs"
        print(
            f"  ratio ours / TRL, {what}: {median[name] / median['trl']:.2f}x"
            f"   (best rounds: {max(rates[name]) / max(rates['trl']):.2f}x{note})"
        )
    print(f"  1-min load average during the runs: {min(loads):.2f} to {max(loads):.2f} ({threads} threads)")


def report_memory(a: argparse.Namespace, mem: dict[str, dict[str, float]]) -> None:
    print(
        f"\nPeak RSS (VmHWM) of our stage-2 run, fresh process each, {a.warmup + 2} steps,"
        f" paper step (privileged text teacher, sampled loss):"
    )
    labels = {
        "base": "teacher=base (adapter disabled)",
        "live": "teacher=live (no teacher weights)",
        "init": "teacher=init (second frozen copy)",
    }
    for t in MEMORY_VARIANTS:
        m = mem[t]
        above = m["peak_mb"] - m["baseline_mb"]
        print(
            f"  {labels[t]:<36}: peak {m['peak_mb']:7.1f} MB  (+{above:6.1f} MB above"
            f" the post-import RSS {m['baseline_mb']:.0f} MB)"
        )
    b, live = mem["base"], mem["live"]
    above = (b["peak_mb"] - b["baseline_mb"]) / max(live["peak_mb"] - live["baseline_mb"], 1e-9)
    print(
        f"  base / live: {b['peak_mb'] / live['peak_mb']:.3f}x peak RSS, {above:.3f}x above baseline"
        f" (goal <= 1.15x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=8, help="prompts per optimizer step (both trainers)")
    parser.add_argument("--new-tokens", type=int, default=32, help="forced rollout length")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2r, dropout 0)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    a = parser.parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if a.warmup < 1 or a.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (a timed step starts when the previous ends)")
    if a.worker:
        worker(a)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        model = init_tiny(Path(tmp) / "model", preset=a.preset)
        # One epoch covers the warm-up and timed steps: no epoch boundary inside a timed window.
        n = a.batch * (a.warmup + a.steps)
        data = Path(tmp) / "data"
        generate_dataset(get_task("maze"), [3], n, split="train", seed=0, out=data, progress=False, workers=1)
        n_params = Backbone.load(model, device="cpu").num_parameters()
        student_len, image_len, teacher_len = prompt_lengths(model, data)
        threads = a.threads or torch.get_num_threads()
        print(
            f"OPSD stage-2 steps/s: {a.preset} Qwen3-VL ({n_params / 1e6:.1f}M parameters), {threads}"
            f" threads, batch {a.batch}, {a.new_tokens} new tokens per rollout (forced),"
            f" LoRA r={a.lora_r} alpha={2 * a.lora_r} on the LM linears"
        )
        print(
            f"  prompt tokens per sample: student {student_len} (of which image {image_len}),"
            f" privileged teacher context {teacher_len} (text only)"
        )
        print(f"  {a.rounds} interleaved rounds x {a.steps} timed steps after {a.warmup} warm-up step(s)")
        report_speed(measure_speed(a, model, data), threads)
        if not a.skip_memory:
            mem = {t: spawn(a, f"memory-{t}", model, data, memory=True) for t in MEMORY_VARIANTS}
            report_memory(a, mem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
