"""LoRA on the language model through peft, and merging it back into plain weights.

By default only the language model's linear layers get adapters: the vision tower and the
merger/projector stay frozen (MGSD stage 1). Disabling the adapter gives back the exact base
model, which then serves as the frozen teacher without a second copy of the weights.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

# Submodule names of vision towers and their projectors across HF VLMs.
_VISION_PARTS = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "mm_projector", "vision")
_LORA_KEY = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\.")


def is_vision(name: str) -> bool:
    return any(part in _VISION_PARTS for part in name.split("."))


def lora_target_modules(
    model: nn.Module, targets: str | Sequence[str] = "all-linear", train_vision: bool = False
) -> list[str]:
    """Full names of the linear layers to adapt.

    ``targets`` is ``"all-linear"`` or short names such as ``["q_proj", "v_proj"]``. The output head
    is never adapted (it is tied to the embeddings in small models); vision layers only if asked.
    """
    short = None if targets == "all-linear" else {targets} if isinstance(targets, str) else set(targets)
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.split(".")[-1] == "lm_head":
            continue
        if is_vision(name) and not train_vision:
            continue
        if short is not None and name.split(".")[-1] not in short:
            continue
        names.append(name)
    if not names:
        raise ValueError(f"no linear layer matches LoRA targets {targets!r}")
    return names


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    targets: str | Sequence[str] = "all-linear",
    train_vision: bool = False,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters (in place); only the adapter weights stay trainable."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_modules(model, targets, train_vision),
        bias="none",
    )
    with quiet_peft():
        return get_peft_model(model, config)


def load_adapter(
    model: nn.Module, adapter_dir: str, trainable: bool = True, weights: bool = True
) -> PeftModel:
    """Attach a saved LoRA adapter to ``model``; ``weights=False``: its modules from its config alone,
    nothing read (a meta-device model, whose weights arrive from FSDP2's rank 0)."""
    with quiet_peft():
        if weights:
            return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
        config = LoraConfig.from_pretrained(adapter_dir)
        config.inference_mode = not trainable
        return get_peft_model(model, config)


def save_adapter(
    peft_model: PeftModel, adapter_dir: str, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Write the adapter weights and config only (from ``state``, the base model's whole state dict
    gathered from shards, when given)."""
    kwargs = {} if state is None else {"state_dict": {f"base_model.model.{k}": v for k, v in state.items()}}
    with quiet_peft():
        peft_model.save_pretrained(adapter_dir, **kwargs)


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft 0.21 calls a transformers 5 method deprecated in favour of ``is_activation_checkpointing``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _delta(module: LoraLayer, name: str, adapter: str, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """``get_delta_weight`` of a plain linear LoRA, from whole (gathered) weights in ``state``."""
    if getattr(module, "use_dora", {}).get(adapter) or module.fan_in_fan_out:
        raise ValueError("merging a sharded DoRA or fan-in-fan-out adapter is not supported")
    b, a = state[f"{name}.lora_B.{adapter}.weight"], state[f"{name}.lora_A.{adapter}.weight"]
    return (b @ a) * module.scaling[adapter]


@torch.no_grad()
def merged_state_dict(
    peft_model: PeftModel, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The base model's state dict with every active adapter folded in; the live model is untouched.
    ``state``: the base model's whole state dict gathered from shards (FSDP2), read instead.

    (peft's ``merge_and_unload`` would destroy the adapter and round the fp32 master weights.)
    """
    base = peft_model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            if adapters and state is None:
                deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in adapters)
            elif adapters:
                deltas[f"{name}.weight"] = sum(_delta(module, name, a, state) for a in adapters)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in (base.state_dict() if state is None else state).items():
        if _LORA_KEY.search(key):
            continue
        clean = key.replace(".base_layer.", ".")
        out[clean] = tensor + deltas[clean].to(tensor.dtype) if clean in deltas else tensor
    return out


@torch.no_grad()
def base_state_dict(
    peft_model: PeftModel, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The base model's own weights (adapters left out), under the original parameter names (from
    ``state``, gathered from shards, when given)."""
    base = peft_model.get_base_model()
    return {
        key.replace(".base_layer.", "."): tensor
        for key, tensor in (base.state_dict() if state is None else state).items()
        if not _LORA_KEY.search(key)
    }
