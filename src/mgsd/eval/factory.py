"""Open a backend by what the user named: a local model directory or hub id, or an OpenAI-compatible
API. Its own module so that the protocol (``backends``) and the local backend (``local``) import in
one direction only."""

from __future__ import annotations

from mgsd.eval.backends import Backend, OpenAIBackend


def open_backend(
    model: str | None,
    *,
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
    """A local model (``model`` = directory or hub id) or, with ``api_base``, an OpenAI-compatible API
    (``api_model`` defaults to ``model``)."""
    if api_base:
        name = api_model or model
        if not name:
            raise ValueError("an API backend needs --api-model (or --model) to name the served model")
        return OpenAIBackend(
            api_base, name, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout, retries=retries
        )
    if not model:
        raise ValueError("give --model (a model directory or hub id) or --api-base")
    from mgsd.eval.local import LocalBackend  # torch and transformers: only when asked for

    return LocalBackend.load(model, batch_size=batch_size, dtype=dtype, trust_remote_code=trust_remote_code)
