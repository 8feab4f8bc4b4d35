"""Where responses come from: a local model (through ``mgsd.models``) or an OpenAI-compatible API.

Both take the same queries (chat messages whose content parts are text or a PIL image) and return one
``Reply`` per query, in order. A query that fails is a ``Reply`` with ``error`` set, which the
evaluator counts as a failure: it is never dropped from a denominator.
"""

from __future__ import annotations

import base64
import io
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

_RETRYABLE = (408, 409, 429)  # timeout, conflict, rate limit: worth another attempt
_KEY_ECHO = re.compile(r"(api[ _-]?key(?: provided)?\s*:\s*)\S+", re.IGNORECASE)


def one_line(exc: BaseException, limit: int | None = 300) -> str:
    """``"Type: first line of the message"``, cut to ``limit`` characters: an exception as a failure
    reason."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:limit]


@dataclass
class Query:
    """One chat request: optional system text, then a user turn of text and images in order."""

    id: str
    user: list[str | Image.Image]
    system: str | None = None


@dataclass
class Reply:
    """One response: ``text`` (None when the request failed, then ``error`` says why), the number of
    generated tokens, and whether generation stopped at ``max_new_tokens`` (``truncated``)."""

    text: str | None
    error: str | None = None
    tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "greedy": self.greedy,
        }


class Backend(Protocol):
    """Anything that answers queries: one ``Reply`` per query, in order, failures as ``Reply.error``."""

    def generate(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]: ...

    def describe(self) -> dict[str, Any]:
        """JSON-able settings of the backend for metrics.json (never secrets)."""
        ...


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
