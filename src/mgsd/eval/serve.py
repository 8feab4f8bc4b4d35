"""``mgsd serve``: a local model behind an OpenAI-compatible chat-completions endpoint.

Only the standard library HTTP server (``ThreadingHTTPServer``) and the ``Backbone``:

* ``POST /v1/chat/completions``: ``messages`` (system/user/assistant; content a string or a list of
  ``text`` and ``image_url`` parts, images as ``data:`` URLs), ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stop`` (a string
  or up to 4: the completion is cut before the first one, ``finish_reason`` "stop"); returns
  ``choices[0].message.content``, ``finish_reason`` and ``usage``. ``stream: true`` is answered as
  server-sent events once the completion is done (the whole text in one chunk, then the finish
  reason, the usage when ``stream_options.include_usage``, and ``[DONE]``); ``n`` > 1 is refused with a
  400 (one choice per request);
* ``GET /v1/models``: the one served model; ``GET /health``.

Handler threads only parse and validate; one worker thread owns the model, so model calls never run
concurrently. It batches requests that arrive together and share generation settings (up to
``max_batch``), which is what makes concurrent clients faster than one request at a time. A bad request
is an HTTP 4xx with an OpenAI-style ``{"error": {...}}`` body; nothing is fetched from the network.
Every error leaves a keep-alive connection usable: the request's body is read and discarded, or, when it
cannot be (too large, no or bad ``Content-Length``, too slow), the reply says ``Connection: close`` and
the connection is closed.

Model outputs and requests are untrusted, so every resource a request can claim is bounded (``Limits``)
and refused before it is spent: the body size (413, checked against ``Content-Length`` before reading;
a missing, malformed or negative one is 411 / 400), the time to send it (408 after ``request_timeout``
seconds, so a body shorter than its ``Content-Length`` cannot hold a thread), the JSON nesting depth,
the pixels of each image (checked from the header, before decoding: no decompression bombs), the
prompt's tokens, and the number of requests waiting for the model (503 when the queue is full).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

MAX_BODY = 64 * 1024 * 1024  # bytes; a few hundred 512px PNGs
MAX_STOP = 4  # stop sequences per request, as OpenAI allows
LINGER_SECONDS = 2.0  # after a refusal that closes: how long the unread body is still read and discarded


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
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    conversation = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant"):
            raise RequestError(f"{where}.role must be system, user or assistant", param=where)
        conversation.append(
            {"role": role, "content": _content(m.get("content"), where, limits.max_image_pixels)}
        )
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


def _too_long(n: int, limit: int) -> RequestError:
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
        raise _too_long(chars // 16, limit)


@dataclass(eq=False)  # jobs are told apart by identity: two identical requests are two jobs
class _Job:
    conversation: list[dict[str, Any]]
    params: Params
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: RequestError | None = None


class ModelWorker:
    """The one thread that calls the model, batching queued jobs with equal generation settings."""

    def __init__(
        self,
        backbone: Any,
        *,
        max_batch: int = 8,
        window: float = 0.01,
        max_wait: float = 0.05,
        max_queue: int = 64,
        max_prompt_tokens: int = 32768,
    ) -> None:
        if max_batch < 1:
            raise ValueError("--max-batch must be at least 1")
        self.bb, self.max_batch, self.window, self.max_wait = backbone, max_batch, window, max_wait
        self.max_queue, self.max_prompt_tokens = max_queue, max_prompt_tokens
        self._image_tokens: dict[tuple[int, int], int] = {}  # by image size
        self._jobs: list[_Job] = []
        self._cond = threading.Condition()
        self._stop = False
        self.batches: list[int] = []  # sizes of the batches run (for tests and logging)
        self._thread = threading.Thread(target=self._loop, name="mgsd-model", daemon=True)
        self._thread.start()

    def submit(self, conversation: list[dict[str, Any]], params: Params) -> dict[str, Any]:
        job = _Job(conversation, params)
        with self._cond:
            if len(self._jobs) >= self.max_queue:  # refuse now rather than make every client wait
                raise RequestError(
                    f"the server is busy ({self.max_queue} requests waiting); retry later",
                    status=503,
                    code="server_busy",
                )
            self._jobs.append(job)
            self._cond.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stop:
                    self._cond.wait()
                if self._stop:
                    for job in self._jobs:  # nobody will run these: answer instead of hanging
                        job.error = RequestError("the server is shutting down", status=503)
                        job.done.set()
                    return
                # Let requests sent together arrive: keep waiting while they still come in (a few ms,
                # at most ``max_wait``), small against the cost of a generation.
                deadline = time.monotonic() + self.max_wait
                while len(self._jobs) < self.max_batch and time.monotonic() < deadline:
                    before = len(self._jobs)
                    self._cond.wait(self.window)
                    if len(self._jobs) == before:
                        break
                key = self._jobs[0].params.key
                batch = [j for j in self._jobs if j.params.key == key][: self.max_batch]
                self._jobs = [j for j in self._jobs if j not in batch]
            self._run(batch)

    def prompt_tokens(self, conversation: list[dict[str, Any]]) -> int:
        """Text tokens plus image tokens (without the chat template's few). Byte-level BPE gives at
        most one token a UTF-8 byte, so a prompt within the limit in bytes is not tokenized."""
        n = 0
        texts = []
        for m in conversation:
            for p in m["content"]:
                if p["type"] == "text":
                    texts.append(p["text"])
                else:
                    size = p["image"].size
                    if size not in self._image_tokens:
                        self._image_tokens[size] = self.bb.image_token_count(size)
                    n += self._image_tokens[size]
        if n + sum(len(t.encode()) for t in texts) <= self.max_prompt_tokens:
            return n
        return n + sum(len(self.bb.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    def _admit(self, batch: list[_Job]) -> list[_Job]:
        """The jobs whose prompt fits; the others are answered with a 400 now."""
        ok = []
        for job in batch:
            try:
                n = self.prompt_tokens(job.conversation)
            except Exception as exc:  # a prompt the tokenizer or processor refuses
                job.error = RequestError(f"the model could not process the request: {exc}")
                job.done.set()
                continue
            if n > self.max_prompt_tokens:
                job.error = _too_long(n, self.max_prompt_tokens)
                job.done.set()
            else:
                ok.append(job)
        return ok

    def _run(self, batch: list[_Job]) -> None:
        batch = self._admit(batch)
        if not batch:
            return
        try:
            self._generate(batch)
        except Exception as exc:
            if len(batch) > 1:  # one bad request must not fail its neighbours
                for job in batch:
                    self._run([job])
                return
            status = 400 if isinstance(exc, ValueError) else 500
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            batch[0].error = RequestError(f"the model could not process the request: {msg}", status=status)
            batch[0].done.set()
        self.batches.append(len(batch))

    def _generate(self, batch: list[_Job]) -> None:
        import torch

        p = batch[0].params
        ctx = self.bb.encode([j.conversation for j in batch])
        greedy = p.temperature <= 0
        if not greedy and p.seed is not None:
            torch.manual_seed(p.seed)
        gen = self.bb.generate(
            ctx,
            max_new_tokens=p.max_tokens,
            temperature=max(p.temperature, 1e-5),
            top_p=p.top_p,
            greedy=greedy,
        )
        prompt_tokens = ctx.attention_mask.sum(-1).tolist()
        for i, job in enumerate(batch):
            text, stopped = apply_stop(gen.texts[i], job.params.stop)
            n_completion = len(gen.sequences[i])
            if stopped:  # usage counts what is returned, as an early stop would have
                n_completion = min(
                    n_completion, len(self.bb.tokenizer(text, add_special_tokens=False)["input_ids"])
                )
            job.result = {
                "text": text,
                "finish_reason": "stop" if stopped or gen.finished[i] else "length",
                "prompt_tokens": int(prompt_tokens[i]),
                "completion_tokens": n_completion,
            }
            job.done.set()


class _Handler(BaseHTTPRequestHandler):
    server: MGSDServer
    protocol_version = "HTTP/1.1"
    _linger = False  # this request's body was left unread (see ``_refuse``)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:  # tell the client, so it does not send its next request here
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, exc: RequestError) -> None:
        """Send ``exc``. When the body was left unread, read and drop what the client still sends for a
        moment before closing: closing on unread data resets the connection, and the client may then
        lose this reply."""
        self._send(exc.status, exc.body())
        if not self._linger:
            return
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.2)
            buf, left = bytearray(65536), self.server.limits.max_body
            deadline = time.monotonic() + LINGER_SECONDS
            while left > 0 and time.monotonic() < deadline:
                got = self.connection.recv_into(buf)
                if not got:
                    break
                left -= got
        except OSError:  # the client has gone: nothing left to protect
            pass

    def _read_body(self, *, required: bool) -> bytes:
        """The request body, read in full so a keep-alive connection stays in step; on any failure the
        connection is marked for closing (and ``_linger`` set when unread bytes may follow)."""
        limits = self.server.limits
        header = self.headers.get("Content-Length")
        try:
            if self.headers.get("Transfer-Encoding") is not None:  # its length is not known up front
                raise RequestError(
                    "chunked request bodies are not supported; send a Content-Length", status=411
                )
            if header is None and not required:
                return b""  # HTTP/1.1: no Content-Length and no Transfer-Encoding is an empty body
            length = content_length(header, limits)
        except RequestError:
            self.close_connection = True  # the unread body must not be taken for the next request
            self._linger = True
            raise
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise RequestError("timed out reading the request body", status=408) from None
        if len(data) < length:
            self.close_connection = True
            raise RequestError(f"the body has {len(data)} of its {length} bytes (Content-Length)")
        return data

    def _route_error(self) -> None:
        """Answer a request for an unknown route or method: its body is drained first."""
        path = self.path.split("?")[0].rstrip("/")
        status = 404 if self.command in ("GET", "POST") else 405
        what = "no route" if status == 404 else "method not allowed:"
        self._reply_error(RequestError(f"{what} {self.command} {path}", status=status))

    def _reply_error(self, exc: RequestError) -> None:
        try:
            self._read_body(required=False)
        except RequestError as body_exc:  # the body itself is refused: that is the answer
            exc = body_exc
        self._refuse(exc)

    def handle_one_request(self) -> None:
        self._linger = False
        super().handle_one_request()

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path not in ("/v1/models", "/health"):
            self._route_error()
            return
        try:
            self._read_body(required=False)  # a GET may carry one; it must not be read as a request
        except RequestError as exc:
            self._refuse(exc)
            return
        if path == "/v1/models":
            model = {"id": self.server.served_name, "object": "model", "created": self.server.created}
            self._send(200, {"object": "list", "data": [{**model, "owned_by": "mgsd"}]})
        else:
            self._send(200, {"status": "ok"})

    # Other methods get an OpenAI-style 405 instead of http.server's HTML 501.
    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _route_error

    def setup(self) -> None:
        self.timeout = self.server.limits.request_timeout  # a slow or short body cannot hold a thread
        super().setup()

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        limits = self.server.limits
        if path != "/v1/chat/completions":
            self._route_error()
            return
        try:
            data = self._read_body(required=True)
            body = parse_body(data, limits)
            conversation, params = parse_request(
                body, self.server.served_name, self.server.max_tokens_limit, limits
            )
            precheck_prompt(conversation, limits.max_prompt_tokens)
            out = self.server.worker.submit(conversation, params)
        except RequestError as exc:
            self._refuse(exc)
            return
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": self.server.served_name,
        }
        usage = {
            "prompt_tokens": out["prompt_tokens"],
            "completion_tokens": out["completion_tokens"],
            "total_tokens": out["prompt_tokens"] + out["completion_tokens"],
        }
        if params.stream:
            self._send_events(completion_chunks(head, out["text"], out["finish_reason"], usage, params))
            return
        message = {"role": "assistant", "content": out["text"]}
        choice = {"index": 0, "message": message, "finish_reason": out["finish_reason"]}
        self._send(200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage})

    def _send_events(self, events: list[dict[str, Any]]) -> None:
        """Server-sent events, ending with ``[DONE]``; the body is complete, so it has a length and the
        connection stays usable."""
        data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def completion_chunks(
    head: Mapping[str, Any], text: str, finish_reason: str, usage: Mapping[str, int], params: Params
) -> list[dict[str, Any]]:
    """A finished completion as ``chat.completion.chunk`` events: the text, then the finish reason,
    then (when asked) the usage in a chunk with no choices, as OpenAI sends them."""

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}

    events = [chunk({"role": "assistant", "content": text}, None), chunk({}, finish_reason)]
    if params.include_usage:
        events.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": dict(usage)})
    return events


class MGSDServer(ThreadingHTTPServer):
    """The HTTP server; ``close()`` stops both it and the model worker."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connections waits instead of being reset

    def __init__(
        self,
        backbone: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        served_name: str = "mgsd",
        max_batch: int = 8,
        max_tokens_limit: int = 4096,
        verbose: bool = False,
        limits: Limits | None = None,
    ) -> None:
        check_server_settings(port=port, max_batch=max_batch, max_tokens_limit=max_tokens_limit)
        self.limits = limits or Limits()
        self.worker = ModelWorker(
            backbone,
            max_batch=max_batch,
            max_queue=self.limits.max_queue,
            max_prompt_tokens=self.limits.max_prompt_tokens,
        )
        self.served_name = served_name
        self.max_tokens_limit = max_tokens_limit
        self.verbose = verbose
        self.created = int(time.time())
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.worker.stop()


def check_server_settings(*, port: int, max_batch: int, max_tokens_limit: int) -> None:
    """Refuse settings the server cannot run with before the model loads (``bind`` raises an
    OverflowError, a traceback, for a port above 65535)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {port}")
    if max_batch < 1 or max_tokens_limit < 1:
        raise ValueError("--max-batch and --max-tokens-limit must be at least 1")


def default_served_name(model: str) -> str:
    """What clients call the model: a directory's name, or the hub id as given."""
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else model


def serve_model(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_name: str | None = None,
    max_batch: int = 8,
    max_tokens_limit: int = 4096,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    verbose: bool = False,
    limits: Limits | None = None,
) -> None:
    """Load ``model`` and serve it until interrupted (Ctrl-C)."""
    from mgsd.eval.local import LocalBackend

    check_server_settings(port=port, max_batch=max_batch, max_tokens_limit=max_tokens_limit)

    backend = LocalBackend.load(model, dtype=dtype, trust_remote_code=trust_remote_code)
    server = MGSDServer(
        backend.bb,
        host=host,
        port=port,
        served_name=served_name or default_served_name(model),
        max_batch=max_batch,
        max_tokens_limit=max_tokens_limit,
        verbose=verbose,
        limits=limits,
    )
    print(f"serving {server.served_name!r} at {server.url} (max batch {max_batch}); Ctrl-C stops", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("note: the server has no authentication; anyone who can reach this address can use it")
    try:
        server.serve_forever()
    finally:
        server.close()
