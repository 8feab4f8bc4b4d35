"""``mgsd serve`` (OpenAI-compatible endpoint) and the API backend of ``mgsd eval model``.

The server runs on 127.0.0.1 with a free port in a daemon thread and is shut down by the fixture.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from PIL import Image

from mgsd.backends.base import GenerationConfig, Query
from mgsd.backends.local import LocalBackend
from mgsd.backends.openai_compat import OpenAIBackend, image_data_url
from mgsd.backends.serve import MGSDServer
from mgsd.cli import main
from mgsd.data.generate import generate_dataset
from mgsd.eval.model import evaluate_model
from mgsd.models import Backbone, init_tiny
from mgsd.tasks import get_task

SECRET = "sk-test-0123456789-never-written"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", preset="tiny", seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    for name, level in (("frozenlake", 3), ("maze", 3)):
        generate_dataset(get_task(name), [level], 2, split="test", seed=5, out=out, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def server(tiny: Path):
    bb = Backbone.load(tiny, device="cpu")
    srv = MGSDServer(bb, host="127.0.0.1", port=0, served_name="tiny", max_batch=4, max_tokens_limit=64)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.close()
    thread.join(timeout=10)


def client(srv: MGSDServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="EMPTY", timeout=60, max_retries=0)


def image() -> Image.Image:
    return Image.new("RGB", (256, 256), (40, 120, 220))


def test_openai_client_round_trip_matches_local_generation(server: MGSDServer, tiny: Path) -> None:
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    r = c.chat.completions.create(
        model="tiny",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Plan a path."},
                    {"type": "image_url", "image_url": {"url": image_data_url(image())}},
                ],
            }
        ],
        max_tokens=8,
        temperature=0,
        seed=1,
    )
    text = r.choices[0].message.content
    assert isinstance(text, str) and r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 64  # 64 image tokens + text
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    local = LocalBackend(server.worker.bb, batch_size=1)
    assert local.generate([Query("x", ["Plan a path.", image()])], GenerationConfig(8))[0].text == text


def test_concurrent_requests_are_batched_and_all_answered(server: MGSDServer) -> None:
    backend = OpenAIBackend(server.url, "tiny", concurrency=6, retries=0)
    before = sum(server.worker.batches)
    queries = [Query(str(i), [f"Question {i}.", image()]) for i in range(6)]
    replies = backend.generate(queries, GenerationConfig(max_new_tokens=4))
    assert all(r.error is None and isinstance(r.text, str) for r in replies)
    assert sum(server.worker.batches) - before == 6
    assert max(server.worker.batches) <= 4


def post(srv: MGSDServer, body: bytes, path: str = "/v1/chat/completions") -> tuple[int, dict]:
    url = srv.url.removesuffix("/v1") + path
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"{}", 400, "messages"),
        (b'{"messages": [{"role": "robot", "content": "hi"}]}', 400, "role"),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "image_url", '
            b'"image_url": {"url": "http://example.com/a.png"}}]}]}',
            400,
            "data: URLs",
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "image_url", '
            b'"image_url": {"url": "data:image/png;base64,AAAA"}}]}]}',
            400,
            "cannot decode",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "temperature"),
        (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}', 404, "does not exist"),
    ],
)
def test_bad_requests_get_openai_style_errors(
    server: MGSDServer, body: bytes, status: int, words: str
) -> None:
    code, payload = post(server, body)
    assert code == status
    assert words in payload["error"]["message"] and payload["error"]["type"] == "invalid_request_error"


def test_openai_client_sees_a_400_as_bad_request(server: MGSDServer) -> None:
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client(server).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=0
        )
    code, _ = post(server, b"{}", path="/v1/nothing")
    assert code == 404


def test_eval_through_the_api_never_writes_the_key(
    server: MGSDServer, data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("MGSD_TEST_KEY", SECRET)
    out = tmp_path / "api"
    argv = [
        "eval",
        "model",
        "--api-base",
        server.url,
        "--api-model",
        "tiny",
        "--api-key-env",
        "MGSD_TEST_KEY",
    ]
    argv += ["--data", str(data), "--out", str(out), "--max-new-tokens", "6", "--quiet", "--retries", "0"]
    argv += ["--concurrency", "1"]  # server batches of one: the same arithmetic as the local run below
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 4 and m["request_failures"] == 0 and m["model"] == "tiny"
    assert m["backend"]["type"] == "api" and m["backend"]["api_key_env"] == "MGSD_TEST_KEY"
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert SECRET not in capsys.readouterr().out
    # The API path and the local path give the same greedy answers on the same model.
    local = evaluate_model(
        LocalBackend(server.worker.bb, batch_size=1),
        [data],
        tmp_path / "local",
        gen=GenerationConfig(max_new_tokens=6),
        progress=False,
    )
    api_rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    local_rows = [json.loads(x) for x in (tmp_path / "local" / "samples.jsonl").read_text().splitlines()]
    assert [r["response"] for r in api_rows] == [r["response"] for r in local_rows]
    assert local["n"] == 4


def test_refusing_endpoint_gives_counted_failures_not_a_crash(data: Path, tmp_path: Path, capsys) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "refused"
    argv = [
        "eval",
        "model",
        "--api-base",
        f"http://127.0.0.1:{port}/v1",
        "--api-model",
        "m",
        "--retries",
        "0",
    ]
    argv += ["--data", str(data), "--out", str(out), "--quiet", "--timeout", "5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "warning: 4 request(s) failed" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 4 and m["request_failures"] == 4 and m["success"] == 0.0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all(r["reason"].startswith("request_failed: ") and "Connection" in r["error"] for r in rows)


def test_rejected_requests_are_not_retried_and_keys_are_redacted(server: MGSDServer, monkeypatch) -> None:
    monkeypatch.setenv("MGSD_TEST_KEY", SECRET)
    backend = OpenAIBackend(server.url, "no-such-model", api_key_env="MGSD_TEST_KEY", retries=3, backoff=30)
    (reply,) = backend.generate([Query("q", ["hi"])], GenerationConfig(max_new_tokens=2))
    assert reply.text is None and reply.error.startswith("request rejected (HTTP 404)")  # no 30 s backoff
    echoed = backend._redact(f"Error 401 - Incorrect API key provided: sk-te***tten. Also {SECRET}")
    assert SECRET not in echoed and "sk-te***" not in echoed


def test_serve_and_report_are_registered() -> None:
    from mgsd.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "m", "--port", "0", "--max-batch", "2"])
    assert args.command == "serve" and args.max_batch == 2 and args.host == "127.0.0.1"
    assert build_parser().parse_args(["report", "runs/x"]).run_dir == "runs/x"


def test_identical_concurrent_requests_are_each_answered(server: MGSDServer) -> None:
    backend = OpenAIBackend(server.url, "tiny", concurrency=4, retries=0, timeout=60)
    replies = backend.generate([Query(str(i), ["Same question."]) for i in range(4)], GenerationConfig(3))
    assert all(r.error is None for r in replies) and len({r.text for r in replies}) == 1


def test_openai_client_stop_cuts_the_completion(server: MGSDServer) -> None:
    c = client(server)
    # Seeded sampling, alone in its batch, repeats itself, and gives more varied text than greedy.
    ask = dict(model="tiny", messages=[{"role": "user", "content": "Plan a path."}], max_tokens=12)
    ask |= dict(temperature=1.0, seed=3)
    full = c.chat.completions.create(**ask)
    text = full.choices[0].message.content
    assert len(text) >= 4
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a string the completion is known to contain
    cut = c.chat.completions.create(**ask, stop=[stop, "never produced \u2603"])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens <= full.usage.completion_tokens


def test_openai_client_sees_n_refused_as_bad_request(server: MGSDServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2, n=2
        )
    assert info.value.body["param"] == "n" and info.value.status_code == 400


def test_openai_client_streams_the_same_completion(server: MGSDServer) -> None:
    c = client(server)
    ask = dict(
        model="tiny", messages=[{"role": "user", "content": "Plan a path."}], max_tokens=6, temperature=0
    )
    whole = c.chat.completions.create(**ask)
    chunks = list(c.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_openai_client_keeps_its_connection_after_a_404(server: MGSDServer, monkeypatch) -> None:
    accepted = []
    get_request = server.get_request
    monkeypatch.setattr(server, "get_request", lambda: accepted.append(1) or get_request())
    c = client(server)  # sequential requests reuse its pooled keep-alive connection
    with pytest.raises(openai.NotFoundError):
        c.post("/nothing", cast_to=object, body={"messages": [{"role": "user", "content": "x" * 4000}]})
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert isinstance(r.choices[0].message.content, str)
    assert len(accepted) == 1  # both requests went over one kept-alive connection
