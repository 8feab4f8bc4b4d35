"""The sequence-chunked log-probs and vocabulary losses (``logit_chunk``) equal the unchunked ones.

Tolerance: fp32, the two paths differ only in float summation order (the head's matmul blocked over
other row counts, per-block sums), so values and gradients agree to rtol 1e-5 / atol 1e-6 on random
tensors and to atol 1e-5 through the tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from mgsd.config import load_config
from mgsd.data.generate import generate_dataset
from mgsd.models import Backbone, init_tiny
from mgsd.models.logprobs import OutputStates, gather_logprobs
from mgsd.tasks import get_task
from mgsd.train import objectives as obj
from mgsd.train.config import TrainConfig
from mgsd.train.trainer import train

B, R, H, V = 2, 7, 16, 50
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _case(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, R)
    mask[0, 5:] = 0  # right padding in the first sequence
    return {
        "s_h": torch.randn(B, R, H, generator=g),
        "s_w": torch.randn(V, H, generator=g) * 0.5,
        "t_h": torch.randn(B, R, H, generator=g),
        "t_w": torch.randn(V, H, generator=g) * 0.5,
        "targets": torch.randint(0, V, (B, R), generator=g),
        "mask": mask,
    }


def _loss(kind: str, c: dict[str, torch.Tensor], s_h, s_w, chunk: int) -> torch.Tensor:
    """One loss of each kind, unchunked (chunk 0: from (B, R, V) logits) or chunked (from hidden)."""
    mask, denom = c["mask"], 9.0
    student, teacher = OutputStates(s_h, s_w), OutputStates(c["t_h"], c["t_w"])
    if kind == "sampled":
        t_lp = gather_logprobs(F.linear(c["t_h"], c["t_w"]), c["targets"]) * mask
        if chunk:
            lp = obj.chunked_token_logprobs(student, c["targets"], mask, chunk)
        else:
            lp = gather_logprobs(F.linear(s_h, s_w), c["targets"]) * mask
        adv = obj.reverse_kl_advantages(t_lp, lp, mask)
        # a non-zero surrogate gradient: the advantage weights grad log p
        return obj.policy_gradient_loss(lp, lp.detach() - 0.1, adv, mask, denom=denom) + lp.sum()
    if not chunk:
        s_logits, t_logits = F.linear(s_h, s_w), F.linear(c["t_h"], c["t_w"])
        if kind == "jsd":
            return obj.generalized_jsd(s_logits, t_logits, mask, beta=0.3, denom=denom)
        top_k = 5 if kind == "topk" else None
        return obj.full_reverse_kl(s_logits, t_logits, mask, top_k=top_k, denom=denom)
    if kind == "jsd":
        return obj.chunked_jsd(student, teacher, mask, beta=0.3, denom=denom, chunk=chunk)
    top_k = 5 if kind == "topk" else None
    return obj.chunked_reverse_kl(student, teacher, mask, top_k=top_k, denom=denom, chunk=chunk)


def _value_and_grads(kind: str, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = _case()
    s_h, s_w = c["s_h"].requires_grad_(), c["s_w"].requires_grad_()
    loss = _loss(kind, c, s_h, s_w, chunk)
    loss.backward()
    return loss.detach(), s_h.grad, s_w.grad


@pytest.mark.parametrize("kind", ["sampled", "full", "topk", "jsd"])
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_loss_equals_unchunked_in_value_and_gradient(kind: str, chunk: int) -> None:
    value, g_h, g_w = _value_and_grads(kind, 0)
    c_value, c_g_h, c_g_w = _value_and_grads(kind, chunk)
    assert g_h.abs().max() > 1e-3  # the comparison is not between two zero gradients
    torch.testing.assert_close(c_value, value, **TOL)
    torch.testing.assert_close(c_g_h, g_h, **TOL)  # w.r.t. the student's hidden states
    torch.testing.assert_close(c_g_w, g_w, **TOL)  # w.r.t. the head (full fine-tuning)


def test_chunked_mean_without_denominator_and_logprobs_on_padding() -> None:
    c = _case()
    s, t = OutputStates(c["s_h"], c["s_w"]), OutputStates(c["t_h"], c["t_w"])
    s_logits, t_logits = F.linear(c["s_h"], c["s_w"]), F.linear(c["t_h"], c["t_w"])
    torch.testing.assert_close(
        obj.chunked_reverse_kl(s, t, c["mask"], chunk=4),
        obj.full_reverse_kl(s_logits, t_logits, c["mask"]),
        **TOL,
    )
    lp = obj.chunked_token_logprobs(s, c["targets"], c["mask"], chunk=4)
    assert lp.shape == (B, R) and torch.all(lp[0, 5:] == 0)
    with pytest.raises(ValueError, match="beta"):
        obj.chunked_jsd(s, t, c["mask"], beta=1.0)


def _saved_sizes(chunk: int) -> list[int]:
    """The sizes of the tensors a forward saves for backward (then runs the backward)."""
    c = _case()
    s_h = c["s_h"].requires_grad_()
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss("jsd", c, s_h, c["s_w"], chunk)
    loss.backward()
    assert s_h.grad is not None
    return sizes


def test_chunked_forward_keeps_no_vocabulary_sized_tensor_for_backward() -> None:
    """What the chunked forward saves for backward is the blocks' inputs, never (tokens, V) logits."""
    assert max(_saved_sizes(0)) >= B * R * V  # the reference keeps whole (B, R, V) tensors
    assert max(_saved_sizes(3)) < 3 * V  # less than one block's logits


# ---------------------------------------------------------------- through a model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", preset="tiny", seed=0)


def _inputs(bb: Backbone):
    images = [Image.new("RGB", (256, 256), (10, 120, 200)), Image.new("RGB", (256, 256), (250, 250, 250))]
    ctx = bb.encode_student(["Plan a path from (0,0) to (2,2).", "Where is the printer?"], images)
    return ctx, bb.encode_responses(["<answer>UUR</answer>", "(1,2)"])


def test_backbone_hidden_path_gives_the_logits_path_logprobs_and_gradients(tiny: Path) -> None:
    bb = Backbone.load(tiny, device="cpu")
    ctx, responses = _inputs(bb)
    ref = bb.token_logprobs(ctx, responses, grad=True, full_vocab=True)
    (ref.logprobs.sum()).backward()
    ref_grads = {n: p.grad.clone() for n, p in bb.model.named_parameters() if p.grad is not None}
    bb.model.zero_grad(set_to_none=True)
    out = bb.token_logprobs(ctx, responses, grad=True, full_vocab=True, logit_chunk=3)
    assert out.full is None and out.hidden is not None
    assert out.hidden.states.shape[:2] == ref.logprobs.shape
    torch.testing.assert_close(out.logprobs, ref.logprobs, atol=1e-5, rtol=0)
    assert torch.equal(out.mask, ref.mask)
    # The hidden states and head reproduce the full-vocabulary log-probs the logits path returns.
    full = torch.log_softmax(out.hidden.logits(out.hidden.states), -1)
    keep = ref.mask.bool()
    torch.testing.assert_close(full[keep], ref.full[keep], atol=1e-5, rtol=0)
    out.logprobs.sum().backward()
    grads = {n: p.grad for n, p in bb.model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys()  # the tied head / embeddings included
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="logit_chunk"):
        bb.token_logprobs(ctx, responses, logit_chunk=-1)


def test_backbone_hidden_path_keeps_the_adapter_off_teacher(tiny: Path) -> None:
    bb = Backbone.load(tiny, device="cpu").add_lora(r=4, alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ctx, responses = _inputs(bb)
    with bb.teacher():
        base = bb.token_logprobs(ctx, responses)
        base_chunked = bb.token_logprobs(ctx, responses, full_vocab=True, logit_chunk=4)
    adapted = bb.token_logprobs(ctx, responses, grad=True, logit_chunk=4)
    torch.testing.assert_close(base_chunked.logprobs, base.logprobs, atol=1e-5, rtol=0)
    assert not torch.allclose(adapted.logprobs, base.logprobs, atol=1e-3)
    assert not base_chunked.logprobs.requires_grad and not base_chunked.hidden.parameters()[0].requires_grad
    torch.testing.assert_close(
        adapted.logprobs, bb.token_logprobs(ctx, responses).logprobs, atol=1e-5, rtol=0
    )


def test_backbone_refuses_a_head_it_cannot_chunk(tiny: Path) -> None:
    bb = Backbone.load(tiny, device="cpu")
    ctx, responses = _inputs(bb)
    bb.model.config.text_config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        bb.token_logprobs(ctx, responses, logit_chunk=4)
    bb.model.config.text_config.final_logit_softcapping = None
    bb.model.lm_head = torch.nn.Sequential(bb.model.lm_head)
    with pytest.raises(ValueError, match=r"not a plain nn\.Linear"):
        bb.token_logprobs(ctx, responses, logit_chunk=4)


def test_logit_chunk_is_validated() -> None:
    with pytest.raises(ValueError, match="logit_chunk"):
        TrainConfig(logit_chunk=-1)


@pytest.mark.parametrize("objective", ["opsd", "perception"])  # stage 2 with loss full; SFT
def test_trainer_with_logit_chunk_gives_the_same_weights(tmp_path: Path, objective: str) -> None:
    model = init_tiny(tmp_path / "tiny", preset="tiny", seed=0)
    generate_dataset(
        get_task("maze"), [3], 4, split="train", seed=0, out=tmp_path / "train", progress=False, workers=1
    )
    weights = []
    for chunk in (0, 5):
        out = tmp_path / f"run{chunk}"
        cfg = {
            "objective": objective,
            "model": str(model),
            "out": str(out),
            "train_data": [str(tmp_path / "train")],
            "max_steps": 1,
            "batch_size": 4,
            "micro_batch_size": 2,
            "progress": False,
            "save_every": 0,
            "logit_chunk": chunk,
            "optim": {"lr": 2e-3, "schedule": "constant"},
            "opsd": {"loss": "full", "teacher": "init", "max_new_tokens": 12},
        }
        train(load_config(TrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in cfg.items()]))
        weights.append(load_file(str(out / "model" / "model.safetensors")))
    a, b = weights
    start = load_file(str(model / "model.safetensors"))
    assert a.keys() == b.keys() == start.keys()
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3  # the step moved the weights
    # Adam's first step is lr * g / (|g| + eps): about lr for any gradient well above eps, so equal
    # gradients give equal weights; but for a gradient of size ~eps (1e-8) a rounding-level
    # difference moves the step by a share of lr (measured: 1 weight in 311k off by 2.2e-5).
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=5e-5, rtol=0)
