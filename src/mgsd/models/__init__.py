"""Model backbone layer: any Hugging Face VLM behind one adapter, plus offline tiny Qwen3-VL presets.

Names are imported lazily so that ``import mgsd.models.cli`` (the ``mgsd`` command line) does not pay
for importing torch and transformers until a model command actually runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Backbone": "backbone",
    "Generation": "generation",
    "resolve_model_path": "storage",
    "CHAT_TEMPLATE": "chat",
    "student_messages": "chat",
    "teacher_messages": "chat",
    "Context": "context",
    "TokenLogProbs": "logprobs",
    "check_paired": "logprobs",
    "logprob_gap": "logprobs",
    "FAMILIES": "tiny",
    "PRESETS": "tiny",
    "Dims": "tiny",
    "build_qwen_vl": "tiny",
    "init_model_dir": "tiny",
    "init_tiny": "tiny",
    "build_tokenizer": "tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mgsd.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mgsd.models.{_EXPORTS[name]}"), name)
