"""Data-parallel engines (train/engines.py): DDP and FSDP2 on 2 gloo processes give the weights of 1
process, for SFT and for stage 2; kill -9 and --resume under FSDP2 equal an uninterrupted run; a
resume under another engine is refused."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from mgsd.data.generate import generate_dataset
from mgsd.models import init_tiny
from mgsd.tasks import get_task

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is unavailable")

# What `accelerate launch --config_file configs/accelerate/{ddp,fsdp2}.yaml` puts in the environment.
ENGINE_ENV = {
    "ddp": {},
    "fsdp2": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"},
}
# fsdp_cpu_ram_efficient_loading: true (configs/accelerate/fsdp2.yaml): rank 0 alone reads the weights.
ENGINE_ENV["fsdp2-rank0"] = {**ENGINE_ENV["fsdp2"], "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
# Equal up to float summation order: the ranks' gradient halves are added in another order than one
# process adds its micro-batches (and a half batch pads its prompts differently), and Adam's
# normalisation lifts that rounding on near-zero gradients to ~lr * 1e-2 (as in test_train.py).
ATOL = 5e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    model = init_tiny(root / "tiny", preset="tiny", seed=0)
    task = get_task("maze")
    generate_dataset(task, [3], 8, split="train", seed=0, out=root / "train", progress=False, workers=1)
    return root, model


def _args(root, model, objective, steps, extra=()):
    sets = [
        f"max_steps={steps}",
        "batch_size=4",
        "micro_batch_size=1",
        "optim.lr=1e-3",
        "progress=false",
        "opsd.max_new_tokens=8",
        # top_p near 0 keeps only the most likely token: rollouts do not depend on which rank's
        # random stream samples them, so 2 processes can be compared with 1.
        "opsd.top_p=0.001",
        *extra,
    ]
    args = ["train", objective, "--model", str(model), "--train-data", str(root / "train")]
    return args + [x for s in sets for x in ("--set", s)]


def _env(engine=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for k in (
        "ACCELERATE_USE_FSDP",
        "FSDP_VERSION",
        "FSDP_RESHARD_AFTER_FORWARD",
        "FSDP_CPU_RAM_EFFICIENT_LOADING",
    ):
        env.pop(k, None)
    return env | ENGINE_ENV.get(engine or "", {})


def _one(args, out):
    cmd = [sys.executable, "-m", "mgsd.cli", *args, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _two(args, out, engine, *, popen=False, check=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "mgsd.cli", *args, "--out", str(out)]
    if popen:
        # Its own session, so that kill -9 can hit the launcher and both workers at once.
        return subprocess.Popen(
            cmd,
            env=_env(engine),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(engine), timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(out):
    return load_file(str(Path(out) / "model" / "model.safetensors"))


def _same(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@pytest.mark.parametrize(
    ("objective", "extra", "engines"),
    [
        # fsdp2-rank0: the other rank builds the model on the meta device and receives its shards
        # (the tied head, a new adapter's init, the rotary buffers, a separate teacher) from rank 0.
        ("plan", ["lora.r=0"], ("ddp", "fsdp2", "fsdp2-rank0")),
        ("opsd", ["lora.r=4", "opsd.teacher=base"], ("ddp", "fsdp2-rank0")),
        # A full fine-tune's separate frozen teacher, sharded like the student (an FSDP2 matter).
        ("opsd", ["lora.r=0", "opsd.teacher=init"], ("fsdp2-rank0",)),
        # The chunked head (logit_chunk): read after the forward and in backward, outside FSDP2's
        # sharded forward; the full reverse KL reads the teacher's head after other micro-batches'
        # backwards, and a full fine-tune trains the (tied) head through it.
        ("plan", ["lora.r=0", "logit_chunk=4"], ("fsdp2",)),
        ("opsd", ["lora.r=4", "opsd.teacher=base", "opsd.loss=full", "logit_chunk=4"], ("ddp", "fsdp2")),
        ("opsd", ["lora.r=0", "opsd.teacher=init", "opsd.loss=full", "logit_chunk=4"], ("fsdp2",)),
        # The EMA teacher: sharded like the student, averaged shard by shard, gathered whole into
        # every checkpoint (save_every=1: each step's checkpoint is a collective).
        ("opsd", ["lora.r=0", "opsd.teacher=ema", "opsd.ema_decay=0.5", "save_every=1"], ("fsdp2-rank0",)),
        # Activations recomputed in backward inside FSDP2's sharded blocks.
        ("opsd", ["lora.r=4", "opsd.teacher=base", "gradient_checkpointing=true"], ("fsdp2",)),
    ],
    ids=[
        "sft-full",
        "opsd-lora-adapter-off-teacher",
        "opsd-full-init-teacher",
        "sft-full-chunked-head",
        "opsd-lora-full-kl-chunked",
        "opsd-full-init-teacher-full-kl-chunked",
        "opsd-full-ema-teacher",
        "opsd-lora-gradient-checkpointing",
    ],
)
def test_ddp_and_fsdp2_equal_one_process(setup, tmp_path, objective, extra, engines):
    root, model = setup
    args = _args(root, model, objective, 2, extra)
    _one(args, tmp_path / "one")
    for engine in engines:
        _two(args, tmp_path / engine, engine)
        _same(_weights(tmp_path / "one"), _weights(tmp_path / engine), ATOL)


@pytest.mark.parametrize(
    "extra",
    [["lora.r=4"], ["lora.r=0", "opsd.teacher=ema", "opsd.ema_decay=0.5"]],
    ids=["lora-adapter-off-teacher", "full-ema-teacher"],  # the EMA comes back from its checkpoint
)
def test_fsdp2_kill_9_then_resume_equals_uninterrupted(setup, tmp_path, extra):
    root, model = setup
    args = _args(root, model, "opsd", 4, [*extra, "save_every=1"])
    _two(args, tmp_path / "full", "fsdp2")
    proc = _two(args, tmp_path / "killed", "fsdp2", popen=True)
    deadline = time.time() + 240
    while not (tmp_path / "killed" / "checkpoints" / "step-000002").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists()
    shards = sorted(p.name for p in (tmp_path / "killed" / "checkpoints" / "step-000002").iterdir())
    assert "optimizer-rank0.safetensors" in shards and "optimizer-rank1.safetensors" in shards
    _two([*args, "--resume"], tmp_path / "killed", "fsdp2")
    _same(_weights(tmp_path / "full"), _weights(tmp_path / "killed"), 0.0)
    # Another engine (or world size) cannot take over the shards: one clear line.
    refused = _two([*args, "--resume"], tmp_path / "killed", "ddp", check=False)
    assert refused.returncode != 0
    assert "made by fsdp2 on 2 process(es), this run is ddp on 2" in refused.stderr
