"""Training: each stage lowers its loss; resume equals uninterrupted; 2 processes equal 1."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mgsd.cli import main
from mgsd.config import ConfigError, load_config
from mgsd.data.generate import generate_dataset
from mgsd.models import init_tiny
from mgsd.tasks import get_task
from mgsd.train.config import TrainConfig
from mgsd.train.trainer import Trainer, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = init_tiny(root / "tiny", preset="tiny", seed=0)
    for name, level in (("maze", 3), ("minibehaviour", 5)):
        task = get_task(name)
        generate_dataset(
            task, [level], 12, split="train", seed=0, out=root / "train", progress=False, workers=1
        )
        generate_dataset(
            task,
            [level],
            2,
            split="val",
            seed=0,
            out=root / "val",
            progress=False,
            workers=1,
            exclude_dirs=[root / "train"],
        )
    return root, model


def config(root, model, out, objective="perception", **kw):
    base = {
        "objective": objective,
        "model": str(model),
        "out": str(out),
        "train_data": [str(root / "train")],
        "max_steps": 4,
        "batch_size": 8,
        "micro_batch_size": 4,
        "progress": False,
        "save_every": 0,
        "optim": {"lr": 2e-3, "schedule": "constant"},
        "opsd": {"max_new_tokens": 24},
    }
    for k, v in kw.items():
        if isinstance(v, dict):
            base[k] = {**base.get(k, {}), **v}
        else:
            base[k] = v
    return load_config(TrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in base.items()])


def losses(out):
    return [
        r["loss"] for r in map(json.loads, (Path(out) / "log.jsonl").read_text().splitlines()) if "loss" in r
    ]


@pytest.mark.parametrize("objective", ["perception", "plan", "symbolic"])
def test_sft_objectives_lower_their_loss(setup, tmp_path, objective):
    root, model = setup
    train(config(root, model, tmp_path / "run", objective, max_steps=5, lora={"r": 8}))
    seen = losses(tmp_path / "run")
    assert len(seen) == 5 and seen[-1] < seen[0] - 0.3
    assert (tmp_path / "run" / "model" / "config.json").is_file()


@pytest.mark.parametrize("lora_r", [4, 0])
def test_gradient_checkpointing_keeps_the_gradients(setup, tmp_path, lora_r):
    """One SFT step (images: vision tower and LM) gives the same loss and gradients with activations
    recomputed in backward, for a LoRA student and a full fine-tune."""
    root, model = setup

    def step(ckpt: bool) -> tuple[float, dict]:
        cfg = config(
            root,
            model,
            tmp_path / f"g{ckpt}",
            lora={"r": lora_r, "dropout": 0.0, "train_vision": True},
            gradient_checkpointing=ckpt,
        )
        trainer = Trainer(cfg)
        assert trainer.bb.gradient_checkpointing == ckpt
        logs = trainer._sft_step(trainer.batches.global_batch(0))
        grads = {n: p.grad.clone() for n, p in trainer.params.items() if p.grad is not None}
        trainer.close()
        return logs["loss"], grads

    loss, grads = step(False)
    ckpt_loss, ckpt_grads = step(True)
    assert ckpt_loss == pytest.approx(loss, rel=1e-6) and grads.keys() == ckpt_grads.keys()
    assert any(".visual." in f".{n}" for n in grads)
    for n, g in grads.items():
        torch.testing.assert_close(ckpt_grads[n], g, atol=1e-6, rtol=1e-5)


def test_opsd_runs_with_adapter_teacher_and_lowers_reverse_kl(setup, tmp_path):
    root, model = setup
    cfg = config(
        root,
        model,
        tmp_path / "o",
        "opsd",
        max_steps=6,
        lora={"r": 8},
        val_data=[str(root / "val")],
        optim={"lr": 5e-3},
    )
    result = train(cfg)
    log = [json.loads(x) for x in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "reverse_kl" in r]
    assert len(steps) == 6
    for key in (
        "reverse_kl",
        "teacher_logp",
        "student_logp",
        "rollout_success",
        "rollout_parse_rate",
        "response_tokens",
        "gen_tokens_per_s",
    ):
        assert key in steps[0]
    # The student's own samples move toward the teacher: the per-token log-ratio shrinks.
    assert sum(r["reverse_kl"] for r in steps[-2:]) < sum(r["reverse_kl"] for r in steps[:2])
    assert "val_success" in result


@pytest.mark.parametrize("loss", ["full", "topk", "jsd"])
def test_opsd_vocabulary_losses_run(setup, tmp_path, loss):
    root, model = setup
    train(
        config(
            root,
            model,
            tmp_path / loss,
            "opsd",
            max_steps=1,
            batch_size=4,
            lora={"r": 4},
            opsd={"loss": loss, "top_k": 8, "max_new_tokens": 12},
        )
    )
    assert losses(tmp_path / loss)


def test_opsd_teacher_options(setup, tmp_path):
    root, model = setup
    # full fine-tuning with a frozen copy of the initial weights, and an EMA teacher, reusing rollouts
    for teacher in ("init", "ema", "live"):
        train(
            config(
                root,
                model,
                tmp_path / teacher,
                "opsd",
                max_steps=1,
                batch_size=4,
                opsd={
                    "teacher": teacher,
                    "max_new_tokens": 12,
                    "updates_per_rollout": 2,
                    "reward_weight": 0.5,
                },
            )
        )
    with pytest.raises(ValueError, match="no"):
        Trainer(config(root, model, tmp_path / "x", "opsd", opsd={"teacher": "base"}))


def _weights(out):
    return load_file(str(Path(out) / "model" / "model.safetensors"))


def _same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


def test_resume_after_a_crash_equals_uninterrupted(setup, tmp_path, monkeypatch):
    root, model = setup
    kw = {"max_steps": 5, "save_every": 2, "optim": {"lr": 1e-3, "schedule": "cosine"}}
    train(config(root, model, tmp_path / "full", **kw))
    original = Trainer._log

    def crash(self, record):
        original(self, record)
        if record.get("step") == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(Trainer, "_log", crash)
    with pytest.raises(RuntimeError):
        train(config(root, model, tmp_path / "crashed", **kw))
    monkeypatch.setattr(Trainer, "_log", original)
    with pytest.raises(ValueError, match="--resume"):
        Trainer(config(root, model, tmp_path / "crashed", **kw))
    train(config(root, model, tmp_path / "crashed", **kw), resume=True)
    _same(_weights(tmp_path / "full"), _weights(tmp_path / "crashed"))
    steps = [json.loads(x)["step"] for x in (tmp_path / "crashed" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # the step redone after the crash is logged once


def _cli(*args):
    return [sys.executable, "-m", "mgsd.cli", *args]


def test_kill_9_then_resume_equals_uninterrupted(setup, tmp_path):
    root, model = setup
    args = [
        "train",
        "opsd",
        "--model",
        str(model),
        "--train-data",
        str(root / "train"),
        "--set",
        "max_steps=5",
        "--set",
        "batch_size=4",
        "--set",
        "micro_batch_size=4",
        "--set",
        "save_every=1",
        "--set",
        "lora.r=4",
        "--set",
        "optim.lr=1e-3",
        "--set",
        "opsd.max_new_tokens=16",
        "--set",
        "progress=false",
    ]
    subprocess.run(_cli(*args, "--out", str(tmp_path / "full")), check=True, capture_output=True)
    proc = subprocess.Popen(
        _cli(*args, "--out", str(tmp_path / "killed")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "checkpoints" / "step-000002").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists()
    subprocess.run(
        _cli(*args, "--out", str(tmp_path / "killed"), "--resume"), check=True, capture_output=True
    )
    _same(_weights(tmp_path / "full"), _weights(tmp_path / "killed"))


def test_two_processes_equal_one(setup, tmp_path):
    root, model = setup
    args = [
        "train",
        "plan",
        "--model",
        str(model),
        "--train-data",
        str(root / "train"),
        "--set",
        "max_steps=3",
        "--set",
        "batch_size=8",
        "--set",
        "micro_batch_size=2",
        "--set",
        "optim.lr=1e-3",
        "--set",
        "progress=false",
    ]
    subprocess.run(_cli(*args, "--out", str(tmp_path / "one")), check=True, capture_output=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mgsd.cli",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Equal up to float summation order: the all-reduced gradient adds the ranks' halves in another
    # order, and Adam's normalisation lifts that rounding on near-zero gradients to ~lr * 1e-2.
    _same(_weights(tmp_path / "one"), _weights(tmp_path / "two"), atol=5e-5)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one == pytest.approx(two, abs=1e-5)


def test_config_errors_are_one_clear_line(setup, tmp_path, capsys):
    root, _ = setup
    with pytest.raises(ConfigError, match=r"unknown config key optim\.learning_rate"):
        load_config(TrainConfig, None, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match=r"opsd\.loss"):
        load_config(TrainConfig, None, ["opsd.loss=kl"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: [1, 2\n")
    assert main(["train", "plan", "--config", str(bad)]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "plan",
                "--model",
                str(tmp_path / "nope"),
                "--train-data",
                str(root / "train"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "not a model directory" in capsys.readouterr().err


# -- refusals: non-finite training, resuming with other settings -------------------------------------


def test_non_finite_gradient_stops_the_run_and_saves_nothing(setup, tmp_path, monkeypatch):
    from mgsd.train.checkpoint import checkpoints
    from mgsd.train.trainer import TrainingError

    root, model = setup
    original = Trainer._sft_step

    def poisoned(self, exs):
        out = original(self, exs)
        if self.step == 1:  # the second step's gradient is NaN
            next(iter(self.params.values())).grad.fill_(float("nan"))
        return out

    monkeypatch.setattr(Trainer, "_sft_step", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"non-finite gradient norm \(nan\) at step 2"):
        train(config(root, model, out, "plan", max_steps=3, save_every=1))
    assert not (out / "model").exists()
    assert [c.name for c in checkpoints(out / "checkpoints")] == ["step-000001"]
    weights = load_file(str(out / "checkpoints" / "step-000001" / "weights.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_infinite_lr_is_refused_and_huge_lr_never_saves_non_finite_weights(setup, tmp_path, capsys):
    from mgsd.train.trainer import TrainingError

    root, model = setup
    with pytest.raises(ConfigError, match=r"optim\.lr must be a finite number > 0, got inf"):
        config(root, model, tmp_path / "inf", "plan", optim={"lr": "inf"})
    out = tmp_path / "huge"
    with pytest.raises(TrainingError, match=r"not finite|non-finite|overflowed"):
        train(config(root, model, out, "plan", max_steps=4, optim={"lr": 1e38}, save_every=1))
    assert not (out / "model").exists()
    for ck in (out / "checkpoints").glob("step-*"):
        weights = load_file(str(ck / "weights.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_resume_refuses_other_settings_or_data_naming_them(setup, tmp_path):
    import shutil

    root, model = setup
    data = tmp_path / "data"
    shutil.copytree(root / "train", data)
    out = tmp_path / "r"
    cfg = config(root, model, out, "plan", max_steps=3, save_every=1, train_data=[str(data)])
    train(cfg)
    # Another lr or objective: refused, naming each changed key with its old and new value.
    other = config(root, model, out, "symbolic", max_steps=3, train_data=[str(data)], optim={"lr": 0.01})
    changed = r"cannot resume .*objective \(\"plan\" -> \"symbolic\"\).*optim\.lr \(0\.002 -> 0\.01\)"
    with pytest.raises(ValueError, match=changed):
        Trainer(other, resume=True)
    # Reporting settings may change.
    same = config(root, model, out, "plan", max_steps=3, train_data=[str(data)], log_every=2, save_every=5)
    Trainer(same, resume=True).close()
    # The same data at another path is the same data.
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    Trainer(config(root, model, out, "plan", max_steps=3, train_data=[str(moved)]), resume=True).close()
    # The same path holding other data: refused.
    generate_dataset(get_task("maze"), [3], 12, split="train", seed=9, out=data, progress=False, workers=1)
    with pytest.raises(ValueError, match=r"train_data \(content changed\)"):
        Trainer(same, resume=True)


# -- stage 2 through the trainer: each loss is its objectives.py definition; the EMA teacher resumes --


@pytest.mark.parametrize(
    ("loss", "chunk"), [("sampled", 0), ("full", 0), ("topk", 0), ("jsd", 0), ("full", 5), ("jsd", 5)]
)
def test_each_stage2_loss_through_the_trainer_is_its_objectives_definition(
    setup, tmp_path, monkeypatch, loss, chunk
):
    """One stage-2 step's loss and gradient equal the objectives.py definition recomputed from
    scratch: the student's samples scored by the student (image) and the adapter-off teacher
    (privileged text), the whole batch at once (the trainer: two micro-batches, global denominator)."""
    from mgsd.train import objectives as obj
    from mgsd.train.batches import encode_student

    root, model = setup
    cfg = config(
        root,
        model,
        tmp_path / "s2",
        "opsd",
        batch_size=2,
        micro_batch_size=1,
        logit_chunk=chunk,
        lora={"r": 4},
        opsd={"loss": loss, "top_k": 8, "jsd_beta": 0.3, "max_new_tokens": 8},
    )
    trainer = Trainer(cfg)
    seen: dict = {"values": []}
    generate, entry = trainer.bb.generate, obj.STAGE2_LOSSES[loss]
    monkeypatch.setattr(trainer.bb, "generate", lambda *a, **k: seen.setdefault("gen", generate(*a, **k)))

    def recorded(batch, c):
        value = entry.fn(batch, c)
        seen["values"].append(float(value.detach()))
        return value

    monkeypatch.setitem(obj.STAGE2_LOSSES, loss, obj.Stage2Loss(recorded, entry.vocabulary))
    torch.manual_seed(0)
    exs = trainer.batches.global_batch(0)
    trainer._opsd_step(exs)
    grads = {n: p.grad.clone() for n, p in trainer.params.items()}
    trainer.opt.zero_grad(set_to_none=True)

    bb, responses = trainer.bb, [list(s) for s in seen["gen"].sequences]
    student = bb.token_logprobs(encode_student(bb, exs), responses, grad=True, full_vocab=True)
    with bb.teacher():
        t_ctx = bb.encode_teacher([e.teacher_system for e in exs], [e.teacher_prompt or "" for e in exs])
        teacher = bb.token_logprobs(t_ctx, responses, full_vocab=True)
    mask = student.mask
    if loss == "sampled":
        adv = obj.reverse_kl_advantages(teacher.logprobs, student.logprobs, mask)
        ref = obj.policy_gradient_loss(student.logprobs, student.logprobs, adv, mask)
    elif loss == "jsd":
        ref = obj.generalized_jsd(student.full, teacher.full, mask, beta=0.3)
    else:
        ref = obj.full_reverse_kl(student.full, teacher.full, mask, top_k=8 if loss == "topk" else None)
    ref.backward()
    trainer.close()
    assert len(seen["values"]) == 2 and sum(seen["values"]) == pytest.approx(float(ref.detach()), abs=1e-5)
    assert any(float(g.abs().max()) > 0 for g in grads.values())
    for n, p in trainer.params.items():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4)


def test_stage2_perception_replay_adds_the_weighted_facts_cross_entropy(setup, tmp_path):
    """With ``opsd.perception_replay=w`` a stage-2 step's gradient is the plain step's plus ``w`` times
    the perception SFT gradient on the same prompts' images; the replay loss is logged."""
    from mgsd.train.examples import perception_twin
    from mgsd.train.sft import sft_step

    root, model = setup
    w = 0.5
    cfg = config(
        root,
        model,
        tmp_path / "r",
        "opsd",
        batch_size=2,
        micro_batch_size=2,
        lora={"r": 4, "dropout": 0.0},
        opsd={"max_new_tokens": 8, "perception_replay": w},
    )
    trainer = Trainer(cfg)
    exs = trainer.batches.global_batch(0)

    def grads(replay: float) -> tuple[dict, dict]:
        trainer.cfg.opsd.perception_replay = replay
        torch.manual_seed(0)
        logs = trainer._opsd_step(exs)
        out = {n: p.grad.clone() for n, p in trainer.params.items() if p.grad is not None}
        trainer.opt.zero_grad(set_to_none=True)
        return out, logs

    with_replay, logs = grads(w)
    plain, plain_logs = grads(0.0)
    sft_step(trainer.bb, trainer.cfg, [perception_twin(e) for e in exs], lambda v: v)
    facts = {n: p.grad.clone() for n, p in trainer.params.items() if p.grad is not None}
    trainer.close()
    assert logs["perception_replay_loss"] > 0 and "perception_replay_loss" not in plain_logs
    assert logs["loss"] == pytest.approx(plain_logs["loss"])  # the bar's loss stays the reverse KL
    assert all(e.target and e.prompt != exs[0].prompt for e in map(perception_twin, exs))
    for n, g in with_replay.items():
        torch.testing.assert_close(g, plain[n] + w * facts[n], atol=1e-5, rtol=1e-4)


def test_ema_teacher_resumes_from_a_checkpoint_as_if_uninterrupted(setup, tmp_path, monkeypatch):
    import shutil

    root, model = setup
    kw = {
        "max_steps": 3,
        "batch_size": 2,
        "micro_batch_size": 2,
        "save_every": 1,
        "opsd": {"teacher": "ema", "ema_decay": 0.5, "max_new_tokens": 8},
    }

    def run(out, resume=False):
        trainer = Trainer(config(root, model, out, "opsd", **kw), resume=resume)
        trainer.run()
        return {k: v.detach().clone() for k, v in trainer.teacher.state().items()}

    full = run(tmp_path / "full")
    saved = load_file(str(tmp_path / "full" / "checkpoints" / "step-000002" / "extra.safetensors"))
    assert saved and all(k.startswith("ema::") for k in saved)
    start = load_file(str(model / "model.safetensors"))
    assert any(not torch.equal(saved[f"ema::{k}"], v) for k, v in start.items() if f"ema::{k}" in saved)

    original = Trainer._log

    def crash(self, record):
        original(self, record)
        if record.get("step") == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(Trainer, "_log", crash)
    with pytest.raises(RuntimeError):
        run(tmp_path / "crashed")
    monkeypatch.setattr(Trainer, "_log", original)
    shutil.copytree(tmp_path / "crashed", tmp_path / "forgot")
    resumed = run(tmp_path / "crashed", resume=True)
    _same(full, resumed)
    _same(_weights(tmp_path / "full"), _weights(tmp_path / "crashed"))
    # Without the saved EMA the resumed teacher restarts from the initial weights: not the same run.
    (tmp_path / "forgot" / "checkpoints" / "step-000001" / "extra.safetensors").unlink()
    forgot = run(tmp_path / "forgot", resume=True)
    assert any(not torch.equal(full[k], forgot[k]) for k in full)
