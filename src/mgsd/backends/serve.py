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

Here: the HTTP handler and server. Requests are parsed and validated in ``serve_requests``; the model
runs in ``serve_worker``, through the local backend's batching and failure isolation.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mgsd.backends.serve_requests import (
    Limits,
    Params,
    RequestError,
    content_length,
    parse_body,
    parse_request,
    precheck_prompt,
)
from mgsd.backends.serve_worker import ModelWorker

LINGER_SECONDS = 2.0  # after a refusal that closes: how long the unread body is still read and discarded


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
    from mgsd.backends.local import LocalBackend

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
