"""``mgsd serve`` under abuse: every resource a request can claim is bounded and refused with a 4xx.

A stub model stands in for the backbone (the limits are the server's, not the model's), so the load
test is cheap: it runs on loopback with a bounded number of requests, each with a socket timeout.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import threading
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from mgsd.backends.openai_compat import image_data_url
from mgsd.backends.serve import Limits, MGSDServer

TIMEOUT = 20  # seconds a test client waits for one response


class StubModel:
    """Echoes the last text part; one "token" per word; 4 tokens per image. ``gate`` can hold it."""

    image_token_id = 0

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.busy = threading.Event()

    @staticmethod
    def tokenizer(text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": list(range(len(text.split())))}

    def image_token_count(self, size: tuple[int, int]) -> int:
        return 4

    def encode(self, conversations):
        return SimpleNamespace(attention_mask=torch.ones(len(conversations), 3), conversations=conversations)

    def generate(self, ctx, **kw):
        self.busy.set()
        self.gate.wait(TIMEOUT)
        texts = [
            "echo: " + [p["text"] for m in conv for p in m["content"] if p["type"] == "text"][-1]
            for conv in ctx.conversations
        ]
        return SimpleNamespace(texts=texts, finished=[True] * len(texts), sequences=[[1]] * len(texts))


LIMITS = Limits(
    max_body=64 * 1024,
    max_depth=16,
    max_image_pixels=512 * 512,
    max_prompt_tokens=50,
    max_queue=8,
    request_timeout=1.0,
)


@pytest.fixture
def served():
    model = StubModel()
    srv = MGSDServer(model, port=0, served_name="stub", max_batch=4, max_tokens_limit=16, limits=LIMITS)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, model
    model.gate.set()
    srv.close()
    thread.join(timeout=10)


def raw(srv: MGSDServer, data: bytes, *, half_close: bool = True) -> tuple[int, dict]:
    """Send bytes as they are; (status, JSON body) of the response."""
    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
            head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
            length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body else {}


def post(body: bytes, *, length: str | None = None) -> bytes:
    """A chat-completions request; ``length``: the Content-Length to declare ("" = none)."""
    declared = str(len(body)) if length is None else length
    header = f"Content-Length: {declared}\r\n".encode() if declared else b""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + header
        + b"Connection: close\r\n\r\n"
        + body
    )


def chat(text: str, *parts: dict) -> bytes:
    content = [{"type": "text", "text": text}, *parts]
    return json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 4}).encode()


def bomb_png(width: int, height: int) -> str:
    """A PNG whose header claims ``width x height`` pixels, with a little (valid) compressed data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)  # far fewer rows than claimed: decoding would inflate them
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_good_request_is_answered(served) -> None:
    srv, _ = served
    status, body = raw(srv, post(chat("hello", image_part(image_data_url(Image.new("RGB", (64, 64)))))))
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: hello"


@pytest.mark.parametrize(
    ("request_bytes", "status", "needle"),
    [
        (post(b"{}", length=""), 411, "Content-Length header is required"),
        (post(b"{}", length="abc"), 400, "non-negative integer"),
        (post(b"{}", length="-5"), 400, "non-negative integer"),
        (post(b"", length=str(10 * 1024 * 1024)), 413, "request body over"),
        (post(b"{" * 20), 400, "not valid JSON"),
        (post(b"[" * 20_000 + b"]" * 20_000), 400, "nested more than 16"),
        (post(json.dumps({"messages": [[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]}).encode()), 400, "nested"),
        (post(chat("x", image_part(bomb_png(30_000, 30_000)))), 400, "cannot decode the image"),
        (post(chat("x", image_part(bomb_png(1024, 1024)))), 400, "more than the 262144 allowed"),
        (post(chat(" ".join(["w"] * 60))), 400, "60 tokens, more than the 50 allowed"),
        (post(chat("w" * 50 * 16 * 4)), 400, "more than the 50 allowed"),
    ],
)
def test_hostile_requests_get_an_openai_style_4xx(served, request_bytes, status, needle) -> None:
    srv, _ = served
    got, body = raw(srv, request_bytes)
    assert got == status and needle in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    assert raw(srv, post(chat("still up")))[0] == 200


def test_a_body_shorter_than_its_content_length_cannot_hold_a_thread(served) -> None:
    srv, _ = served
    status, body = raw(srv, post(b'{"messages"', length="100"), half_close=False)  # then silence
    assert status == 408 and "timed out" in body["error"]["message"]
    status, body = raw(srv, post(b'{"messages"', length="100"))  # the client stops sending
    assert status == 400 and "11 of its 100 bytes" in body["error"]["message"]


def test_a_full_queue_answers_503_and_the_rest_are_served(served) -> None:
    srv, model = served
    model.gate.clear()  # the model is stuck on its first batch
    srv.worker.max_batch = 1
    with ThreadPoolExecutor(16) as pool:
        first = pool.submit(raw, srv, post(chat("first")))
        assert model.busy.wait(TIMEOUT)
        queued = [pool.submit(raw, srv, post(chat(f"q{i}"))) for i in range(LIMITS.max_queue)]
        for _ in range(200):  # wait (bounded) until they all wait in the queue
            if len(srv.worker._jobs) == LIMITS.max_queue:
                break
            threading.Event().wait(0.05)
        assert len(srv.worker._jobs) == LIMITS.max_queue
        status, body = raw(srv, post(chat("one too many")))
        assert status == 503 and body["error"]["code"] == "server_busy"
        model.gate.set()
        assert first.result(TIMEOUT)[1]["choices"][0]["message"]["content"] == "echo: first"
        answers = [f.result(TIMEOUT) for f in queued]
    assert [a[1]["choices"][0]["message"]["content"] for a in answers] == [
        f"echo: q{i}" for i in range(LIMITS.max_queue)
    ]


def test_load_mix_of_good_and_hostile_requests(served) -> None:
    srv, _ = served
    hostile = [
        (post(b"{}", length="abc"), 400),
        (post(b"", length=str(50 * 1024 * 1024)), 413),
        (post(b"[" * 5000 + b"]" * 5000), 400),
        (post(chat("x", image_part(bomb_png(20_000, 20_000)))), 400),
        (post(chat(" ".join(["w"] * 80))), 400),
        (post(b"not json"), 400),
    ]
    jobs = [(post(chat(f"good {i}")), 200, f"echo: good {i}") for i in range(40)]
    jobs += [(req, status, None) for req, status in hostile * 5]
    jobs = jobs[::2] + jobs[1::2]  # interleave good and hostile
    tracemalloc.start()
    try:
        with ThreadPoolExecutor(20) as pool:  # a burst of 20 connections at once
            results = list(pool.map(lambda j: raw(srv, j[0]), jobs))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for (_, status, answer), (got, body) in zip(jobs, results, strict=True):
        assert got == status
        if answer is not None:
            assert body["choices"][0]["message"]["content"] == answer
        else:
            assert body["error"]["type"] == "invalid_request_error"
    # Nothing hostile was read or decoded in full: the whole burst stays within a few body limits.
    assert peak < 64 * LIMITS.max_body


def test_stop_cuts_the_completion_before_the_first_stop_string(served) -> None:
    srv, _ = served

    def ask(stop) -> dict:
        body = {"messages": [{"role": "user", "content": "alpha beta gamma"}], "max_tokens": 4, "stop": stop}
        return raw(srv, post(json.dumps(body).encode()))[1]

    out = ask(["gamma", "beta"])  # the earliest match wins, whatever the list order
    assert out["choices"][0]["message"]["content"] == "echo: alpha "
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] == 1
    assert ask("pha")["choices"][0]["message"]["content"] == "echo: al"
    for nowhere in ("omega", [], None):
        assert ask(nowhere)["choices"][0]["message"]["content"] == "echo: alpha beta gamma"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stop": ""}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ],
)
def test_unsupported_or_bad_options_are_an_openai_style_400(served, extra, param) -> None:
    srv, _ = served
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    status, payload = raw(srv, post(json.dumps(body).encode()))
    assert status == 400 and payload["error"]["param"] == param
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["type"] == "invalid_request_error"


def test_stream_sends_the_completion_as_server_sent_events_on_a_kept_connection(served) -> None:
    srv, _ = served
    conn = keepalive(srv)
    try:
        for _ in range(2):  # the event stream has a length: the connection serves the next one too
            body = {"messages": [{"role": "user", "content": "a b c"}], "max_tokens": 4, "stream": True}
            body |= {"stream_options": {"include_usage": True}, "stop": " c"}
            conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode())
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
            lines = [ln for ln in resp.read().decode().split("\n") if ln]
            assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
            events = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
            assert {(e["object"], e["id"]) for e in events} == {("chat.completion.chunk", events[0]["id"])}
            text = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
            assert text == "echo: a b" and events[1]["choices"][0]["finish_reason"] == "stop"
            assert (
                events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 3 + 1
            )  # the stub's counts
    finally:
        conn.close()


def keepalive(srv: MGSDServer) -> http.client.HTTPConnection:
    host, port = srv.server_address[:2]
    return http.client.HTTPConnection(host, port, timeout=TIMEOUT)


def exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes) -> tuple[int, dict]:
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/nothing", 404),
        ("GET", "/v1/nothing", 404),
        ("PUT", "/v1/chat/completions", 405),
        ("POST", "/v1/chat/completions", 400),  # a bad body on the right route
    ],
)
def test_after_an_error_the_same_connection_serves_the_next_request(served, method, path, status) -> None:
    srv, _ = served
    conn = keepalive(srv)
    try:
        got, payload = exchange(conn, method, path, b'{"stray": "' + b"x" * 5000 + b'"}')
        assert got == status and payload["error"]["type"] == "invalid_request_error"
        sock = conn.sock
        assert sock is not None  # the server kept the connection open
        got, payload = exchange(conn, "POST", "/v1/chat/completions", chat("next"))
        assert got == 200 and payload["choices"][0]["message"]["content"] == "echo: next"
        assert conn.sock is sock  # ... and answered on it
    finally:
        conn.close()


def test_a_body_too_large_to_read_closes_the_connection_and_the_client_gets_the_413(served) -> None:
    srv, _ = served
    conn = keepalive(srv)
    try:
        conn.request("POST", "/v1/chat/completions", body=b"x" * (LIMITS.max_body + 1))
        resp = conn.getresponse()
        assert resp.status == 413 and resp.getheader("Connection") == "close"
        assert json.loads(resp.read())["error"]["code"] == "body_too_large"
        assert conn.sock is None  # http.client closed it, as told; the next request opens a new one
        assert exchange(conn, "POST", "/v1/chat/completions", chat("again"))[0] == 200
    finally:
        conn.close()
