"""``Backbone.generate``: batched sampling or greedy decoding, its results and the logits processors it
installs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from mgsd.models.context import Context
from mgsd.models.guards import config_value
from mgsd.models.parts import ModelParts
from mgsd.models.positions import position_ids
from mgsd.models.prefix import MIN_SHARED, hoist_prefix, shared_prefix_length


@dataclass
class Generation:
    """Sampled responses.

    ``sequences``: response ids per sample, cut after the first end-of-turn token, which is
    included; padding removed. ``finished``: whether that token was produced (False = hit
    ``max_new_tokens``). ``texts``: decoded with special tokens skipped. ``logprobs`` (when asked):
    per-token log-probs of the sampled ids under the model's own distribution at temperature 1
    (raw logits, before temperature/top-p), i.e. the same quantity ``token_logprobs`` returns.
    """

    sequences: list[list[int]]
    texts: list[str]
    finished: list[bool]
    logprobs: list[list[float]] | None = None


class RecordLogprobs(LogitsProcessor):
    """Records log softmax of the raw logits at each sampled token (placed first: sees raw logits)."""

    def __init__(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids)
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _take(self, ids: torch.Tensor) -> None:
        # The token sampled from the previous step's distribution is now the last input id.
        if self.previous is not None and ids.shape[1] > self.prompt_len + len(self.steps):
            self.steps.append(self.previous.gather(-1, ids[:, -1:]).squeeze(-1))

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        self._take(sequences)
        return (
            torch.stack(self.steps, dim=1) if self.steps else sequences.new_zeros((len(sequences), 0)).float()
        )


class Suppress(LogitsProcessor):
    """Never sample placeholder/vision tokens or ids past the tokenizer (rows the model only pads)."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.ids.numel():
            scores[:, self.ids.to(scores.device)] = -float("inf")
        return scores


def cut_at_stop(row: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token, and whether one was found."""
    stops = set(stop_ids)
    for t, tok in enumerate(row):
        if tok in stops:
            return list(row[: t + 1]), True
    return list(row), False


def generate(
    bb: ModelParts,
    ctx: Context,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool,
    return_logprobs: bool,
    stop_token_ids: Sequence[int] | None,
    shrink: bool = True,
    share_prefix: bool = True,
) -> Generation:
    """``Backbone.generate`` (see there)."""
    bb.check_context(ctx)
    stops = [int(t) for t in stop_token_ids] if stop_token_ids is not None else bb.eos_token_ids
    if not greedy and temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling (use greedy=True)")
    # Sharded (FSDP2) ranks must run the same forwards: HF's synced loop steps until all are done.
    if shrink and not bb.synced:
        choose = greedy_choice if greedy else Sampler(temperature, top_p)
        with bb.eval_mode(), torch.no_grad(), bb.autocast():
            seqs, finished, lps = decode_shrinking(
                bb, ctx, max_new_tokens, stops, choose, share_prefix=share_prefix, logprobs=return_logprobs
            )
        texts = bb.tokenizer.batch_decode(seqs, skip_special_tokens=True)
        return Generation(sequences=seqs, texts=texts, finished=finished, logprobs=lps)
    prompt_len = ctx.input_ids.shape[1]
    recorder = RecordLogprobs(prompt_len) if return_logprobs else None
    processors = LogitsProcessorList([p for p in (recorder, Suppress(bb._never_sample())) if p is not None])
    config = _generation_config(bb, max_new_tokens, greedy, temperature, top_p, stops)
    with own_generation_config(bb.model), bb.eval_mode(), torch.no_grad(), bb.autocast(), root_unsharded(bb):
        out = bb.model.generate(
            input_ids=ctx.input_ids,
            attention_mask=ctx.attention_mask,
            **ctx.extras,
            generation_config=config,
            logits_processor=processors,
            synced_gpus=bb.synced,
        )
    sequences = out.sequences
    if not torch.equal(sequences[:, :prompt_len], ctx.input_ids):
        raise RuntimeError("generate() changed the prompt ids: the response boundary is unknown")
    new = sequences[:, prompt_len:].tolist()
    step_lp = recorder.finish(sequences).tolist() if recorder is not None else None
    seqs, finished, lps = [], [], []
    for i, row in enumerate(new):
        kept, done = cut_at_stop(row, stops)
        seqs.append(kept)
        finished.append(done)
        if step_lp is not None:
            lps.append(step_lp[i][: len(kept)])
    texts = bb.tokenizer.batch_decode(seqs, skip_special_tokens=True)
    return Generation(
        sequences=seqs, texts=texts, finished=finished, logprobs=lps if step_lp is not None else None
    )


def _generation_config(
    bb: ModelParts, max_new_tokens: int, greedy: bool, temperature: float, top_p: float, stops: list[int]
) -> GenerationConfig:
    """Only our explicit settings (see ``own_generation_config``)."""
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        eos_token_id=stops,
        pad_token_id=bb.pad_token_id,
        return_dict_in_generate=True,
        use_cache=True,
        **sampling,
    )


def greedy_choice(scores: torch.Tensor, rows: list[int], batch: int) -> torch.Tensor:
    """Greedy decoding: argmax of the (suppressed) raw logits."""
    return scores.argmax(-1)


class Sampler:
    """The draws ``model.generate`` makes with ``do_sample``: HF's own temperature and top-p warpers
    (after the suppressed ids, as there), softmax, then ``torch.multinomial`` over a batch of ALL the
    rows the call started with. Its one-sample path takes one exponential draw per (row, vocabulary)
    entry whatever the probabilities, so padding the finished rows back in keeps every running row's
    draw, and the random state after the call, what ``generate`` gives when it keeps them all."""

    def __init__(self, temperature: float, top_p: float) -> None:
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        warpers: list[LogitsProcessor] = []
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, scores: torch.Tensor, rows: list[int], batch: int) -> torch.Tensor:
        probs = torch.softmax(self.warpers(None, scores), dim=-1)  # type: ignore[arg-type]
        if len(rows) == batch:
            return torch.multinomial(probs, num_samples=1).squeeze(1)
        whole = probs.new_zeros((batch, probs.shape[1]))
        whole[:, 0] = 1.0  # a finished row's draw is discarded
        index = torch.as_tensor(rows, device=probs.device)
        whole[index] = probs
        return torch.multinomial(whole, num_samples=1).squeeze(1)[index]


def decode_shrinking(
    bb: ModelParts,
    ctx: Context,
    max_new_tokens: int,
    stops: Sequence[int],
    choose: Callable[[torch.Tensor, list[int], int], torch.Tensor],
    *,
    share_prefix: bool = True,
    logprobs: bool = False,
) -> tuple[list[list[int]], list[bool], list[list[float]] | None]:
    """Decoding in which a row leaves the batch, and its KV cache, once it has ended.

    ``model.generate`` keeps a finished row in every later step until the longest row ends; on a
    CPU, where a step costs in proportion to the rows, a batch of answers of 5 to 128 tokens then
    spends about half its work on rows that are done. Same forward as ``generate`` (prefill with the
    prompt's own M-RoPE positions from ``position_ids``, then one token per step, each new position
    the row's last plus one, which is what ``generate`` derives from its cached rope deltas) and the
    same suppressed ids; ``choose(scores, rows, batch)`` picks the next token of the running ``rows``
    (``greedy_choice`` or a ``Sampler``). The prompt part every row shares is prefilled once
    (``share_prefix``, models/prefix.py). Returns each row's ids (cut after its stop token, which is
    kept), whether it stopped and, with ``logprobs``, each token's log-prob under the raw logits."""
    model, stop_set = bb.model, {int(t) for t in stops}
    never = bb._never_sample().to(ctx.device)
    ctx, out, pos, cache_arg = _prefill(bb, ctx, never.tolist() if share_prefix else None)
    with decode_threads(model):
        return _decode(bb, ctx, out, pos, cache_arg, never, max_new_tokens, stop_set, choose, logprobs)


def _decode(
    bb: ModelParts,
    ctx: Context,
    out: Any,
    pos: torch.Tensor,
    cache_arg: str,
    never: torch.Tensor,
    max_new_tokens: int,
    stop_set: set[int],
    choose: Callable[[torch.Tensor, list[int], int], torch.Tensor],
    logprobs: bool,
) -> tuple[list[list[int]], list[bool], list[list[float]] | None]:
    """``decode_shrinking``'s token loop, from the prefill's output."""
    model = bb.model
    cache, mask = _cache_of(out), ctx.attention_mask
    logits, last = out.logits[:, -1], pos[..., -1:]
    batch = len(ctx)
    rows = list(range(batch))
    seqs: list[list[int]] = [[] for _ in rows]
    lps: list[list[float]] = [[] for _ in rows]
    finished = [False] * batch
    for step in range(max_new_tokens):
        scores = logits.float()
        raw = torch.log_softmax(scores, dim=-1) if logprobs else None
        if never.numel():
            scores[:, never] = -float("inf")
        nxt = choose(scores, rows, batch)
        if raw is not None:
            for row, lp in zip(rows, raw.gather(-1, nxt[:, None]).squeeze(-1).tolist(), strict=True):
                lps[row].append(lp)
        keep = []
        for j, (row, tok) in enumerate(zip(rows, nxt.tolist(), strict=True)):
            seqs[row].append(tok)
            if tok in stop_set:
                finished[row] = True
            else:
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            idx = torch.as_tensor(keep, device=ctx.device)
            cache.batch_select_indices(idx)
            mask, last, nxt = mask[idx], last[..., idx, :], nxt[idx]
            rows = [rows[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        last = last + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=last,
            use_cache=True,
            **{cache_arg: cache},
        )
        logits = out.logits[:, -1]
    return seqs, finished, lps if logprobs else None


# Below this many parameters a CPU decode step (one token per row) is ~100 tiny ops, each cheaper than
# waking a second OpenMP thread: under OMP_WAIT_POLICY=PASSIVE (what ``mgsd`` sets) the tiny base's
# 31-token decode took 0.57 s on 2 threads and 0.25 s on 1; with spinning threads 0.24 s either way.
ONE_THREAD_DECODE_BELOW = 100_000_000


@contextmanager
def decode_threads(model: Any) -> Iterator[None]:
    """One intra-op thread for the block when ``model`` is a small model on the CPU (the prefill,
    training and larger models keep every thread); the thread count is restored after."""
    threads = torch.get_num_threads()
    first = next(model.parameters())
    small = (
        first.device.type == "cpu" and sum(p.numel() for p in model.parameters()) < ONE_THREAD_DECODE_BELOW
    )
    if threads == 1 or not small:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _prefill(bb: ModelParts, ctx: Context, vision_ids: list[int] | None) -> tuple[Context, Any, Any, str]:
    """The prompt's forward, the prefix every row shares run once when ``vision_ids`` is given
    (models/prefix.py): ``(ctx as laid out, output, position ids, the cache argument's name)``."""
    model = bb.model
    shared = shared_prefix_length(ctx, vision_ids) if vision_ids is not None else 0
    if shared < MIN_SHARED:
        shared = 0
    else:
        ctx = hoist_prefix(ctx, shared, bb.pad_token_id)
    mask = ctx.attention_mask
    pos = position_ids(model, ctx.input_ids, mask, ctx.extras)
    # transformers renames the cache argument from ``past_key_values`` to ``cache`` (5.2x and later).
    cache_arg = "cache" if "cache" in bb._forward_params else "past_key_values"
    head = {"logits_to_keep": 1} if "logits_to_keep" in bb._forward_params else {}
    kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": True, **head, **ctx.extras}
    if shared:  # batch 1, its cache repeated over the rows
        ids, pos1 = ctx.input_ids[:1, :shared], pos[..., :1, :shared]
        first = model(
            input_ids=ids, attention_mask=mask[:1, :shared], position_ids=pos1, use_cache=True, **head
        )
        cache = _cache_of(first)
        cache.batch_repeat_interleave(len(ctx))
        kwargs[cache_arg] = cache
        for key in ctx.per_token_keys():
            kwargs[key] = ctx.extras[key][:, shared:]
    out = model(input_ids=ctx.input_ids[:, shared:], position_ids=pos[..., shared:], **kwargs)
    return ctx, out, pos, cache_arg


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


@contextmanager
def root_unsharded(bb: ModelParts) -> Iterator[None]:
    """A sharded (FSDP2) model's root parameters gathered for the block: ``generate`` calls parts of
    the model (the image features) outside its forward, where FSDP would not gather them."""
    if not bb.synced:
        yield
        return
    bb.model.unshard()
    try:
        yield
    finally:
        bb.model.reshard()


@contextmanager
def own_generation_config(model: Any) -> Iterator[None]:
    # A hub checkpoint's generation_config (top_k=20, temperature=0.7, ...) would fill every field
    # we leave unset; swap in an empty one so only our explicit settings apply.
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def never_sample(model: Any, tokenizer: Any) -> torch.Tensor:
    """Ids generation must never produce: image/video placeholders and vision markers, and the
    embedding rows past the tokenizer (padding the model only)."""
    ids = set()
    for name in (
        "image_token_id",
        "video_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
        "image_token_index",
    ):
        value = config_value(model.config, name)
        if value is not None:
            ids.add(int(value))
    vocab = model.get_input_embeddings().num_embeddings
    ids.update(range(len(tokenizer), vocab))
    return torch.tensor(sorted(ids), dtype=torch.long)
