"""An OpenAI-compatible chat-completions API as a backend (vLLM, SGLang, ``mgsd serve``, hosted APIs)."""

from __future__ import annotations

import base64
import io
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from mgsd.backends.base import BackendOptions, GenerationConfig, Query, Reply, one_line

_RETRYABLE = (408, 409, 429)  # timeout, conflict, rate limit: worth another attempt
_KEY_ECHO = re.compile(r"(api[ _-]?key(?: provided)?\s*:\s*)\S+", re.IGNORECASE)


def image_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def openai_messages(q: Query) -> list[dict[str, Any]]:
    """The query as OpenAI chat-completions messages, images as PNG data URLs."""
    content: list[dict[str, Any]] = []
    for part in q.user:
        if isinstance(part, Image.Image):
            content.append({"type": "image_url", "image_url": {"url": image_data_url(part)}})
        else:
            content.append({"type": "text", "text": part})
    messages: list[dict[str, Any]] = [{"role": "system", "content": q.system}] if q.system else []
    return [*messages, {"role": "user", "content": content}]


class OpenAIBackend:
    """Any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, ``mgsd serve``, hosted APIs).

    The key is read from the environment variable ``api_key_env`` and never logged or written.
    Requests run with bounded concurrency, a timeout, and retries with exponential backoff.
    """

    def __init__(
        self,
        api_base: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        import openai

        self.model = model
        self.concurrency = max(1, concurrency)
        self.retries = max(0, retries)
        self.backoff = backoff
        key = os.environ.get(api_key_env) or "EMPTY"  # local servers accept any key
        self._key = key
        self.api_base, self.api_key_env, self.timeout = api_base, api_key_env, timeout
        self.client = openai.OpenAI(base_url=api_base, api_key=key, timeout=timeout, max_retries=0)

    @classmethod
    def open(cls, model: str | None, options: BackendOptions) -> OpenAIBackend:
        """The API at ``options.api_base`` serving ``options.api_model`` (default: ``model``)."""
        name = options.api_model or model
        if not name:
            raise ValueError("an API backend needs --api-model (or --model) to name the served model")
        if not options.api_base:
            raise ValueError("an API backend needs --api-base")
        return cls(
            options.api_base,
            name,
            api_key_env=options.api_key_env,
            concurrency=options.concurrency,
            timeout=options.timeout,
            retries=options.retries,
        )

    def _one(self, q: Query, cfg: GenerationConfig) -> Reply:
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = self.client.chat.completions.create(
                    model=self.model,
                    messages=openai_messages(q),
                    max_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    seed=cfg.seed,
                )
                text = r.choices[0].message.content if r.choices else None
                if text is None:
                    last = "empty response"
                    continue
                tokens = r.usage.completion_tokens if r.usage else 0
                return Reply(text, None, tokens, truncated=r.choices[0].finish_reason == "length")
            except Exception as exc:  # the client raises many types; all are request failures
                # Cut after redacting: a key straddling the cut must not leave a fragment behind.
                last = self._redact(one_line(exc, limit=None))[:300]
                status = getattr(exc, "status_code", None)
                if isinstance(status, int) and 400 <= status < 500 and status not in _RETRYABLE:
                    # The request itself is wrong (bad input, unknown model, bad key): retrying cannot help.
                    return Reply(None, f"request rejected (HTTP {status}): {last}")
        return Reply(None, f"request failed after {self.retries + 1} attempt(s): {last}")

    def _redact(self, text: str) -> str:
        """Error text without the key (hosted APIs echo a masked key in authentication errors)."""
        if self._key and self._key != "EMPTY":
            text = text.replace(self._key, "<redacted>")
        return _KEY_ECHO.sub(r"\1<redacted>", text)

    def generate(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda q: self._one(q, cfg), queries))

    def describe(self) -> dict[str, Any]:
        # The key's variable name is recorded, never its value.
        return {
            "type": "api",
            "api_base": self.api_base,
            "api_model": self.model,
            "api_key_env": self.api_key_env,
            "concurrency": self.concurrency,
            "timeout": self.timeout,
            "retries": self.retries,
        }
