"""Data-parallel engines for the trainer: ``single`` (one process), ``ddp`` and ``fsdp2``.

The engine is chosen by an ordinary accelerate config (``accelerate launch --config_file ...`` sets
``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``FSDP_RESHARD_AFTER_FORWARD`` in the environment): FSDP
version 2 gives ``fsdp2``, any other multi-process launch ``ddp``.

* ``ddp``: ``accelerator.prepare`` wraps the model in torch DDP; the training forward goes through
  the wrapper and every micro-batch but the step's last runs under ``no_sync``, so there is one
  all-reduce per step. Its comm hook SUMS the buckets (DDP averages by default): each rank's loss is
  already its share of the global token mean (train/trainer.py), so the sum is the gradient.
* ``fsdp2``: ``fully_shard`` on every block the model's ``_no_split_modules`` names (LM decoder
  layers, vision blocks), then on the model: parameters, gradients and AdamW state are sharded.
  Accelerate only switches to FSDP on GPU-like devices, so the sharding is applied here with torch's
  own ``fully_shard`` on every device (what runs on CPU is what the tests test). Gradients are
  reduce-scattered as sums (divide factor 1) after every micro-batch, which keeps the unsharded
  gradients out of memory. Every rank must run the same forwards: generation keeps stepping until all
  ranks are done (``Backbone.synced``), and objectives that may give ranks different micro-batch
  kinds are refused. The EMA teacher is sharded like the student and averaged shard by shard.
  With accelerate's ``fsdp_cpu_ram_efficient_loading`` (``rank0_loading``) only rank 0 reads the
  weights; the other ranks build the model on the meta device and receive their shards from rank 0
  after sharding, so N ranks do not hold N whole copies while they start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mgsd.models.backbone import Backbone
from mgsd.train.config import TrainConfig

ENGINES = ("single", "ddp", "fsdp2")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def engine_name(acc: Any) -> str:
    """The engine the launch configured: ``single`` for one process, else ``fsdp2`` or ``ddp``."""
    from accelerate.utils import DistributedType

    if acc.num_processes == 1:
        return "single"
    if acc.distributed_type == DistributedType.DEEPSPEED or _flag("ACCELERATE_USE_DEEPSPEED"):
        raise ValueError("DeepSpeed is not supported by mgsd train: use configs/accelerate/fsdp2.yaml")
    if acc.distributed_type == DistributedType.FSDP or _flag("ACCELERATE_USE_FSDP"):
        version = os.environ.get("FSDP_VERSION", "1")
        if version != "2":
            raise ValueError(f"FSDP version {version} is not supported: set fsdp_version: 2 (fsdp2.yaml)")
        return "fsdp2"
    return "ddp"


def check_config(name: str, cfg: TrainConfig) -> None:
    """Refuse, in one line, settings the engine cannot run identically on every rank."""
    if name != "fsdp2":
        return
    why = {
        "replay_symbolic": cfg.replay_symbolic > 0,  # ranks could get different micro-batch kinds
        "objective=pretrain": cfg.objective == "pretrain",
        "dense_weight": cfg.dense_weight > 0,
        "grounding_weight": cfg.grounding_weight > 0,
    }
    bad = [k for k, v in why.items() if v]
    if bad:
        raise ValueError(f"fsdp2 does not support {', '.join(bad)} yet: use the ddp config or unset it")


def _sum_hook(_state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations
    """DDP comm hook: the SUM of the ranks' gradients (the default divides by the world size)."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class Engine:
    """Wraps the student (and a separate frozen teacher) for the launch's engine; the trainer asks it
    for the backward context, the global gradient norm and gathered (full) tensors."""

    def __init__(self, cfg: TrainConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        # find_unused_parameters: a text-only micro-batch leaves a trained vision tower without grads.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.acc = Accelerator(
            cpu=not torch.cuda.is_available(),
            log_with=cfg.trackers or None,
            project_dir=cfg.out,
            kwargs_handlers=[ddp],
        )
        self.name = engine_name(self.acc)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        check_config(self.name, cfg)
        # The chunked head (logit_chunk) reads lm_head after the forward and in backward: the root's
        # parameters (embeddings, head) then stay gathered from forward to backward, FSDP2's own
        # default for a root.
        self.reshard_root = cfg.logit_chunk == 0
        self.rank0_loading = self.name == "fsdp2" and _flag("FSDP_CPU_RAM_EFFICIENT_LOADING")
        self.ddp: nn.Module | None = None

    @property
    def sharded(self) -> bool:
        return self.name == "fsdp2"

    @property
    def reads_weights(self) -> bool:
        """Whether this rank loads the weights (False: meta device, filled by ``shard``)."""
        return not (self.rank0_loading and self.rank != 0)

    def wrap(self, bb: Backbone) -> None:
        """Wrap the student in place; call before collecting its parameters (FSDP2 replaces them)."""
        if self.name == "ddp":
            self.ddp = self.acc.prepare(bb.model)
            self.ddp.register_comm_hook(None, _sum_hook)
            bb.train_forward = self.ddp
        elif self.name == "fsdp2":
            self.shard(bb)

    def shard(self, bb: Backbone) -> None:
        """``fully_shard`` each block, then the root; frozen and trainable parameters alike. Under
        rank-0 loading the ranks' shards are then filled from rank 0's whole weights."""
        from torch.distributed.fsdp import fully_shard

        reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "0")
        blocks = set(getattr(bb.model, "_no_split_modules", None) or [])
        if not blocks:
            raise ValueError(f"fsdp2: {type(bb.model).__name__} names no blocks (_no_split_modules)")
        # Rank 0's whole weights, held (by reference) until they are scattered below.
        whole = bb.model.state_dict() if self.rank0_loading and self.rank == 0 else {}
        for module in list(bb.model.modules()):
            if type(module).__name__ in blocks:
                fully_shard(module, reshard_after_forward=reshard)
        fully_shard(bb.model, reshard_after_forward=reshard and self.reshard_root)
        if self.rank0_loading:
            self._scatter_from_rank0(bb.model, whole)
            del whole
        # Make bb.model the root now: generation calls parts of it (HF's image features) before
        # any forward of the whole model, and the first FSDP module to run would otherwise be root.
        bb.model._get_fsdp_state()._lazy_init()
        for module in bb.model.modules():
            if hasattr(module, "set_gradient_divide_factor"):
                # A plain SUM (each rank's loss is a share of the mean); forced, since gloo has no
                # PREMUL_SUM, the op a divide factor of 1 would otherwise use.
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)
        bb.synced = True

    def _scatter_from_rank0(self, model: nn.Module, whole: dict[str, torch.Tensor]) -> None:
        """Every rank's shards from rank 0's state dict; the buffers no state dict carries (rotary
        frequencies) and rank 0's random state (it alone drew, e.g., a new adapter's init) follow, so
        every rank continues as an ordinary load would have left it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        if self.rank != 0:
            # Storage for the shards (FSDP2's own meta-device path); copying into it, not assigning
            # new tensors, keeps tied weights (embeddings and head) one parameter.
            model.to_empty(device=self.acc.device)
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, whole, options=opts)
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
        # Through the device (NCCL moves no CPU tensors); CUDA's generator too, which a new adapter's
        # init on the GPU draws from.
        cpu_state = torch.get_rng_state().to(self.acc.device)
        dist.broadcast(cpu_state, src=0)
        torch.set_rng_state(cpu_state.cpu())
        if torch.cuda.is_available():
            cuda_state = torch.cuda.get_rng_state().to(self.acc.device)
            dist.broadcast(cuda_state, src=0)
            torch.cuda.set_rng_state(cuda_state.cpu())
        left = [n for n, p in model.named_parameters() if p.is_meta or local(p).is_meta]
        if left:
            raise RuntimeError(f"fsdp2 rank-0 loading left {left[0]} without weights")

    def sum_all(self, value: float) -> float:
        """``value`` summed over the processes."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.acc.device)
        dist.all_reduce(t)
        return float(t.item())

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records of the engine (train/checkpoint.py)."""
        return {"name": self.name, "world": self.world, "rank": self.rank, "sharded": self.sharded}

    def wrap_teacher(self, teacher: Any, student: Backbone) -> None:
        """A separate frozen teacher (``init`` / ``path``) is sharded like the student under FSDP2;
        the adapter-off teacher is the student itself (one copy)."""
        model = getattr(teacher, "model", None)
        if self.sharded and isinstance(model, Backbone) and model is not student:
            self.shard(model)

    def backward_sync(self, last: bool) -> Any:
        """The context of one backward: DDP skips its all-reduce except on the step's last one."""
        if self.ddp is not None and not last:
            return self.ddp.no_sync()
        return nullcontext()

    def grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Clip to ``max_norm`` by the global norm (DTensor grads: the norm of the whole gradient)."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def all_finite(self, params: Mapping[str, nn.Parameter]) -> str | None:
        """The first non-finite parameter's name, the same on every rank (shards are checked locally)."""
        names = list(params)
        bad = [not bool(torch.isfinite(local(p.detach())).all()) for p in params.values()]
        if self.sharded and self.world > 1:
            t = torch.tensor(bad, dtype=torch.int32)
            dist.all_reduce(t)
            bad = [bool(x) for x in t.tolist()]
        return next((n for n, b in zip(names, bad, strict=True) if b), None)

    def full_state(self, bb: Backbone) -> dict[str, torch.Tensor] | None:
        """FSDP2: the model's whole state dict on rank 0 (None elsewhere); collective. Else None."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(bb.model, options=opts)
        if self.rank != 0:
            return None
        # Tied weights (lm_head = embed_tokens) come back as two copies: make them one tensor again,
        # as in one process, so that save_pretrained writes the same (deduplicated) file.
        first: dict[int, str] = {}
        for key, value in bb.model.state_dict(keep_vars=True).items():
            alias = first.setdefault(id(value), key)
            if alias != key and alias in state:
                state[key] = state[alias]
        return state

    def save_model(self, bb: Backbone, out: Any, merge_lora: bool) -> None:
        """The model directory, written by rank 0 (the same files as one process writes)."""
        state = self.full_state(bb)
        if self.acc.is_main_process:
            bb.save(out, merge_lora=merge_lora, full_state=state)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (collective: every rank calls it in the same order)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_of(ref: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``whole`` laid out as ``ref`` (a DTensor: its shard, no communication)."""
    if not hasattr(ref, "device_mesh"):
        return whole.to(ref.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(ref.device), ref.device_mesh, ref.placements, src_data_rank=None)


def from_shard(ref: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """A DTensor laid out as ``ref`` from this rank's saved shard ``part`` (plain ``ref``: ``part``)."""
    if not hasattr(ref, "device_mesh"):
        return part.to(ref.device)
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        part.to(ref.device),
        ref.device_mesh,
        ref.placements,
        run_check=False,
        shape=ref.shape,
        stride=ref.stride(),
    )
