"""Moved to ``mgsd.backends.local``. Kept only for ``mgsd/pipeline.py``, which another change is
rewriting; delete this file once the pipeline imports ``mgsd.backends.local``."""

from mgsd.backends.local import LocalBackend

__all__ = ["LocalBackend"]
