"""``mgsd serve``'s requests: each chat-completions body is parsed and validated here, by the HTTP
handler threads, before anything reaches the model.

``parse_request`` turns a body into a Backbone conversation (PIL images decoded from ``data:`` URLs,
nothing is fetched from the network) and the generation ``Params``; every resource a request can claim
is bounded by ``Limits`` (see ``mgsd.backends.serve``) and an excess is a ``RequestError``, an HTTP 4xx
with an OpenAI-style ``{"error": {...}}`` body.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

MAX_BODY = 64 * 1024 * 1024  # bytes; a few hundred 512px PNGs
MAX_STOP = 4  # stop sequences per request, as OpenAI allows


@dataclass(frozen=True)
class Limits:
    """What one request may claim (see the module doc); each excess is refused with a 4xx."""

    max_body: int = MAX_BODY  # bytes
    max_depth: int = 32  # JSON nesting (a chat request needs 5)
    max_image_pixels: int = 4096 * 4096  # per image, from its header
    max_prompt_tokens: int = 32768  # text tokens plus image tokens, all messages together
    max_queue: int = 64  # requests waiting for the model; more get 503
    request_timeout: float = 30.0  # seconds to send the request (socket timeout)

    def __post_init__(self) -> None:
        for name in ("max_body", "max_depth", "max_image_pixels", "max_prompt_tokens", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be positive")


class RequestError(Exception):
    """A client error: HTTP ``status`` with an OpenAI-style error body."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Params:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...] = ()
    stream: bool = False  # how the reply is sent, not how it is generated: not part of ``key``
    include_usage: bool = False

    @property
    def key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one ``generate`` call (``stop`` is applied afterwards,
        per request, so it does not split a batch)."""
        greedy = self.temperature <= 0
        return (self.max_tokens, greedy, None if greedy else (self.temperature, self.top_p, self.seed))


def _decode_data_url(url: Any, where: str, max_pixels: int = 4096 * 4096) -> Image.Image:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise RequestError(f"{where}: only data: URLs are supported (no network access)", param=where)
    head, _, payload = url.partition(",")
    if ";base64" not in head:
        raise RequestError(f"{where}: the data URL must be base64-encoded", param=where)
    try:
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        w, h = image.size  # from the header: a small PNG can claim gigapixels (a decompression bomb)
        if w * h > max_pixels:
            raise RequestError(
                f"{where}: the image has {w}x{h} pixels, more than the {max_pixels} allowed",
                param=where,
                code="image_too_large",
            )
        image.load()
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
        raise RequestError(f"{where}: cannot decode the image ({exc})", param=where) from None
    return image.convert("RGB")


def _content(content: Any, where: str, max_pixels: int = 4096 * 4096) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise RequestError(f"{where}.content must be a string or a non-empty list of parts", param=where)
    parts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            parts.append({"type": "image", "image": _decode_data_url(url, at, max_pixels)})
        else:
            raise RequestError(f"{at}: expected a text or image_url part", param=at)
    return parts


def _number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise RequestError(f"{name} must be a number in [{lo}, {hi}]", param=name)
    return float(value)


def _stop(value: Any) -> tuple[str, ...]:
    """``stop``: null, one string, or a list of up to ``MAX_STOP`` non-empty strings (an empty list, which
    some clients send for "none", stops nowhere)."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP
        or not all(isinstance(x, str) and x for x in stops)
    ):
        raise RequestError(
            f"stop must be a non-empty string or a list of at most {MAX_STOP} non-empty strings", param="stop"
        )
    return tuple(stops)


def apply_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string (excluded, as OpenAI does), and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _delivery(body: Mapping[str, Any]) -> tuple[Any, Any]:
    """``stream`` and ``stream_options.include_usage``, validated; ``n`` must be 1 (one choice)."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("stream must be a boolean", param="stream")
    options = body.get("stream_options")
    usage = options.get("include_usage") if isinstance(options, dict) else None
    if options is not None and (not isinstance(options, dict) or not isinstance(usage, (bool, type(None)))):
        raise RequestError(
            "stream_options must be an object with a boolean include_usage", param="stream_options"
        )
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise RequestError("n must be a positive integer", param="n")
    if n is not None and n > 1:
        raise RequestError(
            "n > 1 is not supported by this server (one choice per request); send n=1 or repeat the request",
            param="n",
            code="unsupported",
        )
    return stream, usage


def _conversation(messages: Any, max_pixels: int) -> list[dict[str, Any]]:
    """The ``messages`` as a Backbone conversation (images decoded, within ``max_pixels`` each)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    conversation = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant"):
            raise RequestError(f"{where}.role must be system, user or assistant", param=where)
        conversation.append({"role": role, "content": _content(m.get("content"), where, max_pixels)})
    return conversation


def parse_request(
    body: Any, served_name: str, max_tokens_limit: int, limits: Limits | None = None
) -> tuple[list[dict[str, Any]], Params]:
    """Validate a chat-completions body: (Backbone conversation with PIL images, generation params)."""
    limits = limits or Limits()
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_name:
        raise RequestError(
            f"the model {model!r} does not exist; this server serves {served_name!r}",
            status=404,
            param="model",
            code="model_not_found",
        )
    stream, usage = _delivery(body)
    conversation = _conversation(body.get("messages"), limits.max_image_pixels)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = max_tokens_limit
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= max_tokens_limit
    ):
        raise RequestError(f"max_tokens must be an integer in [1, {max_tokens_limit}]", param="max_tokens")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("seed must be an integer", param="seed")
    params = Params(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
        seed=seed,
        stop=_stop(body.get("stop")),
        stream=bool(stream),
        include_usage=bool(usage),
    )
    return conversation, params


def json_depth(value: Any, limit: int) -> int:
    """The nesting depth of a parsed JSON value, walked without recursion; stops past ``limit``."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            depth = max(depth, d)
            if depth > limit:
                return depth
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return depth


def parse_body(data: bytes, limits: Limits) -> Any:
    """The JSON of a request body; RequestError (400) for invalid or too deeply nested JSON."""
    try:
        body = json.loads(data or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError("the request body is not valid JSON") from None
    except RecursionError:  # the C decoder's own guard, far past any sane depth
        raise RequestError(f"the JSON is nested more than {limits.max_depth} levels deep") from None
    if json_depth(body, limits.max_depth) > limits.max_depth:
        raise RequestError(f"the JSON is nested more than {limits.max_depth} levels deep")
    return body


def content_length(value: str | None, limits: Limits) -> int:
    """The declared body size: 411 when missing, 400 when not a non-negative integer, 413 when over."""
    if value is None:
        raise RequestError("a Content-Length header is required", status=411)
    text = value.strip()
    if not text.isdigit() or not text.isascii():  # "abc", "-5", "1e3", "５"
        raise RequestError(f"Content-Length must be a non-negative integer, got {value[:40]!r}")
    length = int(text)
    if length > limits.max_body:
        raise RequestError(f"request body over {limits.max_body} bytes", status=413, code="body_too_large")
    return length


def too_long(n: int, limit: int) -> RequestError:
    return RequestError(
        f"the prompt has {n} tokens, more than the {limit} allowed",
        param="messages",
        code="context_length_exceeded",
    )


def precheck_prompt(conversation: list[dict[str, Any]], limit: int) -> None:
    """Refuse, without tokenizing, a text no tokenizer fits in ``limit`` tokens (over 16 characters a
    token); the exact count is the model worker's (it alone uses the tokenizer)."""
    chars = sum(len(p["text"]) for m in conversation for p in m["content"] if p["type"] == "text")
    if chars // 16 > limit:
        raise too_long(chars // 16, limit)
