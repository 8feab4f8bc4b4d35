"""Backbone adapter tests, run identically on tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mgsd.models import (
    FAMILIES,
    Backbone,
    Dims,
    build_qwen_vl,
    build_tokenizer,
    logprob_gap,
    student_messages,
)
from mgsd.models.generation import cut_at_stop

TEST_DIMS = Dims(
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=128,
    vision_hidden=32,
    vision_depth=2,
    vision_heads=2,
    vision_intermediate=64,
    vocab=512,
    deepstack=(0, 1),
    min_pixels=28 * 28,
    max_pixels=256 * 256,
)

PROMPTS = [
    "Find a path from (0,0) to the goal. Answer with <answer>...</answer>.",
    "Where is the agent?",
    "Describe the grid: its size, the start, the goal and every hole, one per line.",
]
SYSTEM = "You solve grid planning tasks from a symbolic map."
TEACHER_TEXTS = [
    "Map size: 3x3\nStart: (0,0)\nGoal: (2,2)\nHoles: (1,1)",
    "Grid size: 5x5\nAgent: (4,4)",
    "Map size: 4x4\nStart: (0,0)\nGoal: (3,3)\nHoles: none",
]


def _images() -> list[Image.Image]:
    # Different sizes: different numbers of image tokens and non-square M-RoPE grids.
    return [
        Image.new("RGB", (64, 64), (200, 30, 30)),
        Image.new("RGB", (128, 64), (30, 200, 30)),
        Image.new("RGB", (96, 96), (30, 30, 200)),
    ]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tokenizer = build_tokenizer(vocab_size=TEST_DIMS.vocab)
    dirs = {}
    for family in FAMILIES:
        model, processor = build_qwen_vl(family, TEST_DIMS, seed=1, tokenizer=tokenizer)
        dirs[family] = Backbone(model, processor).save(tmp_path_factory.mktemp(family) / "model")
    return dirs


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def bb(model_dirs: dict[str, Path], family: str) -> Backbone:
    return Backbone.load(model_dirs[family], device="cpu")


def _responses(bb: Backbone, lengths: tuple[int, ...] = (5, 9, 3), seed: int = 0) -> list[list[int]]:
    """Random ordinary tokens followed by end of turn."""
    g = torch.Generator().manual_seed(seed)
    low, high = 10, len(bb.tokenizer) - 300  # plain BPE tokens, no special tokens
    return [[*torch.randint(low, high, (n,), generator=g).tolist(), bb.eos_token_ids[0]] for n in lengths]


def test_generated_logprobs_equal_generator_scores(bb: Backbone) -> None:
    torch.manual_seed(0)
    ctx = bb.encode_student(PROMPTS, _images())
    gen = bb.generate(ctx, max_new_tokens=10, return_logprobs=True)
    assert [len(s) for s in gen.sequences] == [len(lp) for lp in gen.logprobs]
    assert all(len(s) == 10 or done for s, done in zip(gen.sequences, gen.finished, strict=True))
    lp, mask = bb.token_logprobs(ctx, gen.sequences)
    for i, seq in enumerate(gen.sequences):
        assert mask[i].sum() == len(seq)
        torch.testing.assert_close(lp[i, : len(seq)], torch.tensor(gen.logprobs[i]), atol=1e-4, rtol=0)


def test_logprobs_invariant_to_padding_and_batch(bb: Backbone) -> None:
    images = _images()
    responses = _responses(bb)
    batch = bb.token_logprobs(bb.encode_student(PROMPTS, images), responses)
    order = [2, 0, 1]
    shuffled = bb.token_logprobs(
        bb.encode_student([PROMPTS[i] for i in order], [images[i] for i in order]),
        [responses[i] for i in order],
    )
    for j, i in enumerate(order):
        n = len(responses[i])
        alone = bb.token_logprobs(bb.encode_student([PROMPTS[i]], [images[i]]), [responses[i]])
        assert alone.logprobs.shape == (1, n)
        torch.testing.assert_close(batch.logprobs[i, :n], alone.logprobs[0], atol=2e-5, rtol=0)
        torch.testing.assert_close(shuffled.logprobs[j, :n], alone.logprobs[0], atol=2e-5, rtol=0)
        assert batch.mask[i].sum() == n and batch.logprobs[i, n:].abs().sum() == 0
    # Micro-batches cut from the batch give the same numbers.
    ctx = bb.encode_student(PROMPTS, images)
    part = bb.token_logprobs(ctx.select([1, 2]), responses[1:])
    torch.testing.assert_close(part.logprobs[0, :10], batch.logprobs[1, :10], atol=2e-5, rtol=0)


def test_teacher_text_context_scores_same_tokens(bb: Backbone) -> None:
    responses = _responses(bb)
    student = bb.token_logprobs(bb.encode_student(PROMPTS, _images()), responses)
    teacher_ctx = bb.encode_teacher([SYSTEM] * 3, TEACHER_TEXTS)
    assert "pixel_values" not in teacher_ctx.extras
    teacher = bb.token_logprobs(teacher_ctx, responses)
    assert torch.equal(student.mask, teacher.mask)
    gap = logprob_gap(student, teacher)
    assert gap.shape == student.logprobs.shape and torch.isfinite(gap).all() and gap.abs().sum() > 0
    # The teacher alone (text-only, left-padded) matches its unpadded single-sample score.
    alone = bb.token_logprobs(bb.encode_teacher([SYSTEM], TEACHER_TEXTS[1:2]), responses[1:2])
    torch.testing.assert_close(teacher.logprobs[1, :10], alone.logprobs[0], atol=2e-5, rtol=0)


def test_identical_contexts_give_exactly_zero_gap(
    bb: Backbone, model_dirs: dict[str, Path], family: str
) -> None:
    responses = _responses(bb)
    ctx = bb.encode_student(PROMPTS, _images())
    # A separate frozen teacher loaded from the same weights.
    teacher = Backbone.load(model_dirs[family], device="cpu").freeze()
    gap = logprob_gap(bb.token_logprobs(ctx, responses), teacher.token_logprobs(ctx, responses))
    assert torch.equal(gap, torch.zeros_like(gap))
    # A fresh adapter (B = 0) against the same model with the adapter disabled.
    bb.add_lora(r=4, alpha=8)
    student = bb.token_logprobs(ctx, responses, grad=True)
    with bb.teacher():
        frozen = bb.token_logprobs(ctx, responses)
    gap = logprob_gap(student, frozen)
    assert torch.equal(gap.detach(), torch.zeros_like(gap))
    assert student.logprobs.requires_grad and not frozen.logprobs.requires_grad


def test_disabled_adapter_reproduces_base(bb: Backbone) -> None:
    responses = _responses(bb)
    ctx = bb.encode_student(PROMPTS, _images())
    base = bb.token_logprobs(ctx, responses, full_vocab=True)
    bb.add_lora(r=4, alpha=8)
    names = [n for n, _ in bb.model.named_parameters() if "lora_" in n]
    assert names and not any(".visual." in n for n in names)  # vision tower has no adapter
    assert all(p.requires_grad == ("lora_" in n) for n, p in bb.model.named_parameters())
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    adapted = bb.token_logprobs(ctx, responses)
    assert not torch.allclose(adapted.logprobs, base.logprobs, atol=1e-3)
    with bb.teacher():
        again = bb.token_logprobs(ctx, responses, full_vocab=True)
        with pytest.raises(ValueError, match="frozen"):
            bb.token_logprobs(ctx, responses, grad=True)
    assert torch.equal(again.logprobs, base.logprobs)
    assert torch.equal(again.full, base.full)
    after = bb.token_logprobs(ctx, responses)  # the adapter is back on
    assert torch.equal(after.logprobs, adapted.logprobs)


def test_gradients_flow_to_lora_only(bb: Backbone) -> None:
    bb.add_lora(r=4, alpha=8, targets=["q_proj", "v_proj"])
    lp = bb.token_logprobs(bb.encode_student(PROMPTS, _images()), _responses(bb), grad=True)
    (-(lp.logprobs * lp.mask).sum() / lp.mask.sum()).backward()
    grads = {n: p.grad for n, p in bb.model.named_parameters() if p.requires_grad}
    assert grads and all(n.split(".")[-4] in ("q_proj", "v_proj") for n in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_guards_fail_loudly(bb: Backbone) -> None:
    images = _images()
    ctx = bb.encode_student(PROMPTS, images)
    responses = _responses(bb)
    # Image tokens vs image features.
    bad = bb.encode_student(PROMPTS, images)
    row = bad.input_ids[0]
    first = int((row == bb.image_token_id).nonzero()[0])
    row[first] = bb.pad_token_id
    with pytest.raises(ValueError, match="image tokens"):
        bb.token_logprobs(bad, responses)
    with pytest.raises(ValueError, match="image slots"):
        bb.encode([student_messages("one slot")], [images[:2]])
    # Teacher and student response tokens must be identical.
    student = bb.token_logprobs(ctx, responses)
    other = [list(r) for r in responses]
    other[1][0] += 1
    teacher = bb.token_logprobs(bb.encode_teacher([SYSTEM] * 3, TEACHER_TEXTS), other)
    with pytest.raises(ValueError, match="response tokens differ"):
        logprob_gap(student, teacher)
    # The first response token must follow the generation prompt, never padding or a bare turn.
    with pytest.raises(ValueError, match="generation prompt"):
        bb.token_logprobs(
            bb.encode([[{"role": "user", "content": "hi"}]], add_generation_prompt=False), [[5, 6]]
        )
    right = bb.encode_teacher([SYSTEM] * 3, TEACHER_TEXTS)
    right.input_ids = torch.flip(right.input_ids, dims=[1])
    right.attention_mask = torch.flip(right.attention_mask, dims=[1])
    with pytest.raises(ValueError, match="left-padded"):
        bb.token_logprobs(right, responses)
    with pytest.raises(ValueError, match="empty"):
        bb.token_logprobs(ctx, [[], [1], [2]])
    with pytest.raises(ValueError, match="image placeholder"):
        bb.token_logprobs(ctx, [[bb.image_token_id], [1], [2]])
    # A different chat template (here: a default system prompt) on the teacher side.
    other_processor = type(bb.processor)(
        image_processor=bb.processor.image_processor,
        tokenizer=bb.tokenizer,
        chat_template="{{- '<|im_start|>system\\nDefault.<|im_end|>\\n' -}}" + bb.processor.chat_template,
    )
    teacher_bb = Backbone(bb.model, other_processor)
    teacher_ctx = teacher_bb.encode_teacher([SYSTEM] * 3, TEACHER_TEXTS)
    with pytest.raises(ValueError, match="chat template"):
        bb.token_logprobs(teacher_ctx, responses)
    with pytest.raises(ValueError, match="chat template"):
        logprob_gap(student, teacher_bb.token_logprobs(teacher_ctx, responses))


def test_generation_stops_and_decodes(bb: Backbone) -> None:
    torch.manual_seed(0)
    ctx = bb.encode_student(PROMPTS, _images())
    # Every ordinary token is a stop token: each response is exactly one (kept) stop token.
    stops = list(range(len(bb.tokenizer)))
    gen = bb.generate(ctx, max_new_tokens=5, stop_token_ids=stops)
    assert all(len(s) == 1 and done for s, done in zip(gen.sequences, gen.finished, strict=True))
    greedy = bb.generate(ctx, max_new_tokens=6, greedy=True)
    assert greedy.sequences == bb.generate(ctx, max_new_tokens=6, greedy=True).sequences
    assert greedy.texts == [bb.decode(s) for s in greedy.sequences]
    never = set(bb._never_sample().tolist())
    assert not any(t in never for s in greedy.sequences for t in s)
    assert cut_at_stop([4, 7, 9, 7], [7]) == ([4, 7], True)
    assert cut_at_stop([4, 5], [7]) == ([4, 5], False)
