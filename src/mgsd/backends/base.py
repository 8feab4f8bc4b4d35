"""What every backend shares: the query and reply types, the generation settings, the ``Backend``
protocol and the options a backend is opened with.

A backend takes queries (chat messages whose content parts are text or a PIL image) and returns one
``Reply`` per query, in order. A query that fails is a ``Reply`` with ``error`` set, which the
evaluator counts as a failure: it is never dropped from a denominator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image


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
    """Anything that answers queries: one ``Reply`` per query, in order, failures as ``Reply.error``.

    A backend class the factory can open also has ``open(model, options: BackendOptions)``, a
    classmethod that builds it from what the user named (see ``mgsd.backends.factory``).
    """

    def generate(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]: ...

    def describe(self) -> dict[str, Any]:
        """JSON-able settings of the backend for metrics.json (never secrets)."""
        ...


@dataclass(frozen=True)
class BackendOptions:
    """Everything a user can set when naming a backend (``mgsd eval ...`` flags); each backend's ``open``
    reads the fields it understands and ignores the others."""

    api_base: str | None = None
    api_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout: float = 120.0
    retries: int = 3
    batch_size: int = 8
    dtype: str = "float32"
    trust_remote_code: bool = False
