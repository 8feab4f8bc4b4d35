"""Moved to ``mgsd.backends.base``. Kept only for ``mgsd/pipeline.py``, which another change is rewriting;
delete this file once the pipeline imports ``mgsd.backends.base``."""

from mgsd.backends.base import GenerationConfig

__all__ = ["GenerationConfig"]
