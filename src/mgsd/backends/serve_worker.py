"""``mgsd serve``'s model worker: the one thread that calls the model.

HTTP handler threads ``submit`` validated requests and wait; the worker batches the queued requests
that share generation settings (up to ``max_batch``), refuses prompts over the token limit, and runs
each batch through the local backend (``LocalBackend.run_batch``, failures isolated per request by
``isolate_failures``, as ``mgsd eval`` does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mgsd.backends.base import GenerationConfig
from mgsd.backends.local import LocalBackend, isolate_failures
from mgsd.backends.serve_requests import Params, RequestError, apply_stop, too_long


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
        self.local = LocalBackend(backbone, batch_size=max_batch)  # runs each batch the worker forms
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
                job.error = too_long(n, self.max_prompt_tokens)
                job.done.set()
            else:
                ok.append(job)
        return ok

    def _run(self, batch: list[_Job]) -> None:
        batch = self._admit(batch)
        if batch:
            isolate_failures(batch, self._generate, self._fail)

    def _fail(self, job: _Job, exc: Exception) -> _Job:
        status = 400 if isinstance(exc, ValueError) else 500
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        job.error = RequestError(f"the model could not process the request: {msg}", status=status)
        job.done.set()
        self.batches.append(1)
        return job

    def _generate(self, batch: Sequence[_Job]) -> list[_Job]:
        p = batch[0].params
        cfg = GenerationConfig(max_new_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p)
        ctx, gen = self.local.run_batch([j.conversation for j in batch], cfg, seed=p.seed)
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
        self.batches.append(len(batch))
        return list(batch)
