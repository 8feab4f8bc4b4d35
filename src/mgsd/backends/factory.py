"""Open a backend by what the user named: a local model directory or hub id, or an OpenAI-compatible
API. A new backend is one module whose class has ``open(model, options)`` plus one line in ``BACKENDS``;
backends are imported only when opened (the local one needs torch and transformers)."""

from __future__ import annotations

import importlib

from mgsd.backends.base import Backend, BackendOptions

# kind -> "module:Class"; the class's ``open(model, options)`` builds it.
BACKENDS: dict[str, str] = {
    "local": "mgsd.backends.local:LocalBackend",
    "api": "mgsd.backends.openai_compat:OpenAIBackend",
}


def open_backend(
    model: str | None,
    *,
    kind: str | None = None,
    api_base: str | None = None,
    api_model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    concurrency: int = 4,
    timeout: float = 120.0,
    retries: int = 3,
    batch_size: int = 8,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> Backend:
    """A backend of ``kind`` (a key of ``BACKENDS``); by default a local model (``model`` = directory
    or hub id) or, with ``api_base``, an OpenAI-compatible API (``api_model`` defaults to ``model``)."""
    kind = kind or ("api" if api_base else "local")
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r} (choose from {', '.join(sorted(BACKENDS))})")
    options = BackendOptions(
        api_base=api_base,
        api_model=api_model,
        api_key_env=api_key_env,
        concurrency=concurrency,
        timeout=timeout,
        retries=retries,
        batch_size=batch_size,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    module, _, name = BACKENDS[kind].partition(":")
    backend: Backend = getattr(importlib.import_module(module), name).open(model, options)
    return backend
