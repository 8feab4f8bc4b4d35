"""The offline tiny preset, the domain tokenizer, saving/loading, precision and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from mgsd.models import Backbone, build_tokenizer, init_tiny
from mgsd.models.cli import add_parser
from mgsd.models.context import Context
from mgsd.models.prefix import MIN_SHARED, hoist_prefix, shared_prefix_length

PROMPTS = ["Plan a path from (0,0) to (2,2).", "Where is the printer?"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", preset="tiny", seed=0)


def _logits(bb: Backbone) -> torch.Tensor:
    images = [Image.new("RGB", (256, 256), (10, 120, 200)), Image.new("RGB", (256, 256), (250, 250, 250))]
    ctx = bb.encode_student(PROMPTS, images)
    response = bb.encode_responses(["<answer>UUR</answer>", "(1,2)"])
    return bb.token_logprobs(ctx, response, full_vocab=True).full


def test_tokenizer_keeps_domain_tokens_whole() -> None:
    tok = build_tokenizer(corpus=["Reference action plan: R,PICK,DROP", "Map size: 4x4"])
    for text in ["(3,1)", " (3,1)", "<answer>", "</answer>", "PICK", " PICK", "DROP", "up", " left", "8x8"]:
        assert len(tok(text, add_special_tokens=False)["input_ids"]) == 1, text
    text = "Start: (0,0)\nGoal: (7,7)\n<answer>R,PICK,DROP</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left"


def test_plan_letters_stay_single_tokens() -> None:
    plans = [f"<answer>{p}</answer>" for p in ("UURD", "DDDR", "LLUU", "RRDD")] * 200
    tok = build_tokenizer(corpus=[*plans, *["Route: 2 up. Reach the goal."] * 200])
    ids = tok("<answer>UURDDL</answer>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<answer>", "U", "U", "R", "D", "D", "L", "</answer>"]
    for word in ("Route", " Reach", "DROP"):  # words that merely start with a plan letter are untouched
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_tiny_preset_roundtrip_gives_identical_logits(tiny_dir: Path, tmp_path: Path) -> None:
    files = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert json.loads((tiny_dir / "config.json").read_text())["model_type"] == "qwen3_vl"
    bb = Backbone.load(tiny_dir, device="cpu")
    assert 4_000_000 < bb.num_parameters() < 8_000_000
    assert bb.image_token_count((256, 256)) == 64
    first = _logits(bb)
    # SFT targets: a leading newline would merge with the prompt's final newline.
    with pytest.raises(ValueError, match="prompt boundary"):
        bb.encode_responses(["\n\nThe map is 3x3."])
    assert bb.encode_responses(["The map is 3x3."])[0][-1] == bb.eos_token_ids[0]
    # Images may also travel inside the messages.
    image = Image.new("RGB", (256, 256), (10, 120, 200))
    inline = [
        {"role": "user", "content": [{"type": "text", "text": PROMPTS[0]}, {"type": "image", "image": image}]}
    ]
    assert torch.equal(bb.encode([inline]).input_ids, bb.encode_student(PROMPTS[:1], [image]).input_ids)
    again = Backbone.load(bb.save(tmp_path / "copy"), device="cpu")
    assert torch.equal(_logits(again), first)
    # The directory is a plain HF checkpoint.
    hf = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert type(hf).__name__ == "Qwen3VLForConditionalGeneration"


def test_lora_save_merged_and_unmerged(tiny_dir: Path, tmp_path: Path) -> None:
    bb = Backbone.load(tiny_dir, device="cpu")
    base = _logits(bb)
    bb.add_lora(r=4, alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    adapted = _logits(bb)
    merged_dir = bb.save(tmp_path / "merged", merge_lora=True)
    assert not (merged_dir / "adapter").exists()
    merged = Backbone.load(merged_dir, device="cpu")
    assert not merged.has_lora
    torch.testing.assert_close(_logits(merged), adapted, atol=1e-4, rtol=0)
    hf = AutoModelForImageTextToText.from_pretrained(merged_dir)
    assert not any("lora" in k for k in hf.state_dict())
    # Unmerged: base weights + adapter/, so the teacher (the base) survives in the checkpoint.
    kept = Backbone.load(bb.save(tmp_path / "kept", merge_lora=False), device="cpu")
    assert kept.has_lora and kept.num_parameters(trainable_only=True) > 0
    torch.testing.assert_close(_logits(kept), adapted, atol=1e-5, rtol=0)
    with kept.teacher():
        # the base's weights exactly; the logits to float rounding (peft's disabled-adapter path may
        # take another matmul kernel than the plain model on CPUs with AMX)
        torch.testing.assert_close(_logits(kept), base, atol=1e-5, rtol=0)
    # The live adapter was not merged away by saving.
    assert torch.equal(_logits(bb), adapted)
    # Overwriting an existing directory is atomic and leaves no temporary siblings behind.
    bb.save(merged_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "merged"]


def test_load_without_weights_builds_the_same_model_on_the_meta_device(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """``weights=False`` (FSDP2 rank-0 loading): the same parameter names, shapes and dtypes, its
    saved adapter attached, nothing read into memory; the tied head stays tied."""
    bb = Backbone.load(tiny_dir, device="cpu")
    bb.add_lora(r=4, alpha=8)
    saved = bb.save(tmp_path / "kept", merge_lora=False)
    real, meta = Backbone.load(saved, device="cpu"), Backbone.load(saved, device="cpu", weights=False)
    frozen = Backbone.load(saved, device="cpu", weights=False, trainable_adapter=False)
    assert frozen.num_parameters(trainable_only=True) == 0
    shapes = {n: (p.shape, p.dtype, p.requires_grad) for n, p in real.model.named_parameters()}
    assert shapes == {n: (p.shape, p.dtype, p.requires_grad) for n, p in meta.model.named_parameters()}
    assert meta.has_lora and all(p.is_meta for p in meta.model.parameters())
    assert meta.model.get_output_embeddings().weight is meta.model.get_input_embeddings().weight


def test_fp32_master_weights_with_bf16_compute(tiny_dir: Path) -> None:
    bb = Backbone.load(tiny_dir, dtype="float32", compute_dtype="bfloat16", device="cpu")
    assert bb.param_dtype == torch.float32 and bb.compute_dtype == torch.bfloat16
    images = [Image.new("RGB", (256, 256))] * 2
    ctx = bb.encode_student(PROMPTS, images)
    lp = bb.token_logprobs(ctx, bb.encode_responses(["up", "down"]), grad=True)
    assert lp.logprobs.dtype == torch.float32
    params = [p for n, p in bb.model.named_parameters() if "language_model.layers.0.mlp" in n]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-6)
    (-(lp.logprobs * lp.mask).sum()).backward()
    opt.step()
    changed = sum(int((p != b).sum()) for p, b in zip(params, before, strict=True)) / sum(
        b.numel() for b in before
    )
    assert all(p.dtype == torch.float32 for p in params)
    assert changed > 0.9  # with bf16 parameters most of these 1e-6 steps would round to zero
    gen = bb.generate(ctx, max_new_tokens=4)
    assert len(gen.sequences) == 2


def test_load_rejects_non_model_directories(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a model directory: .* \(no config.json\)"):
        Backbone.load(tmp_path)
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ValueError, match="not a model directory"):
        Backbone.load(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="no such directory"):
        Backbone.load(tmp_path / "missing")


def test_cli_init_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="mgsd")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["model", "init", "--preset", "tiny", "--out", str(tmp_path / "m"), "--seed", "3"]
    )
    assert args.func(args) == 0
    args = parser.parse_args(["model", "info", str(tmp_path / "m")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "qwen3_vl" in out and "64 per 256x256 image" in out


def test_cli_preset_names_match_the_presets():
    from mgsd.models.cli import PRESET_NAMES
    from mgsd.models.tiny import PRESETS

    assert sorted(PRESET_NAMES) == sorted(PRESETS)


def test_paper_shape_preset_has_qwen3_vl_4b_widths(tiny_dir: Path) -> None:
    """Built on the meta device (no weights): the shapes a 4B user's run goes through."""
    from transformers import Qwen3VLForConditionalGeneration

    from mgsd.models.tiny import PRESETS, Dims, qwen_vl_config

    tok = Backbone.load(tiny_dir, device="cpu").tokenizer
    cfg = qwen_vl_config("qwen3_vl", PRESETS["paper-4b"], tok)
    text, vision = cfg.text_config, cfg.vision_config
    assert (text.hidden_size, text.intermediate_size, text.vocab_size) == (2560, 9728, 151_936)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (32, 8, 128)
    assert text.rope_parameters["mrope_section"] == [24, 20, 20]  # Qwen3-VL's split of a 128 head
    assert text.rope_parameters["rope_theta"] == 5_000_000.0
    assert (vision.hidden_size, vision.intermediate_size, vision.num_heads) == (1024, 4096, 16)
    assert (vision.num_position_embeddings, vision.out_hidden_size) == (2304, 2560)
    assert len(vision.deepstack_visual_indexes) == 3 and max(vision.deepstack_visual_indexes) < vision.depth
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cfg)
    assert model.lm_head.weight.shape == (151_936, 2560)
    assert 0.8e9 < sum(p.numel() for p in model.parameters()) < 0.9e9
    # the tiny tokenizer leaves rows past its size unused, as Qwen's own does; too few rows is refused
    small = Dims(64, 1, 2, 1, 128, 32, 1, 2, 64, vocab_rows=8, head_dim=32)
    with pytest.raises(ValueError, match="vocab_rows"):
        qwen_vl_config("qwen3_vl", small, tok)


def test_coordinate_embeddings_start_as_row_plus_column(tiny_dir: Path) -> None:
    bb = Backbone.load(tiny_dir, device="cpu")
    emb = bb.model.get_input_embeddings().weight
    vocab = bb.tokenizer.get_vocab()

    def e(text: str) -> torch.Tensor:
        return emb[vocab[text]]

    torch.testing.assert_close(e("(1,2)") - e("(1,3)"), e("(4,2)") - e("(4,3)"))
    torch.testing.assert_close(e(" (5,0)"), e("(5,0)"))
    assert not torch.allclose(e("(1,2)"), e("(2,1)"))
    assert 0.5 < float(e("(3,3)").std()) / float(emb.std()) < 2.0


def test_saved_adapter_points_at_its_own_base_and_loads_with_plain_peft(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel

    bb = Backbone.load(tiny_dir, device="cpu")
    bb.add_lora(r=4, alpha=8)
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    adapted = _logits(bb)
    kept = bb.save(tmp_path / "run" / "model", merge_lora=False)
    cfg = json.loads((kept / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(kept.resolve())
    monkeypatch.chdir(tmp_path / "run" / "model" / "adapter")  # from any folder: not cwd-relative
    base = AutoModelForImageTextToText.from_pretrained(cfg["base_model_name_or_path"])
    peft = PeftModel.from_pretrained(base, str(kept / "adapter"))
    ours = Backbone(peft, Backbone.load(kept, device="cpu").processor)
    torch.testing.assert_close(_logits(ours), adapted, atol=1e-5, rtol=0)


def test_saved_directory_has_the_video_config_autoprocessor_needs(tiny_dir: Path, tmp_path: Path) -> None:
    out = Backbone.load(tiny_dir, device="cpu").save(tmp_path / "m")
    video = json.loads((out / "video_preprocessor_config.json").read_text())
    image = json.loads((out / "processor_config.json").read_text())["image_processor"]
    assert video["video_processor_type"] == "Qwen3VLVideoProcessor"
    for k in ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std"):
        assert video[k] == image[k], k
    # A re-save keeps a video config that the source had, as it was.
    (out / "video_preprocessor_config.json").write_text(json.dumps({**video, "fps": 1}))
    again = Backbone.load(out, device="cpu").save(tmp_path / "again")
    assert json.loads((again / "video_preprocessor_config.json").read_text())["fps"] == 1


def test_plain_autoprocessor_loads_a_saved_directory_where_torchvision_is_installed(
    tiny_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torchvision", reason="transformers builds Qwen-VL video processors with torchvision")
    from transformers import AutoProcessor

    out = Backbone.load(tiny_dir, device="cpu").save(tmp_path / "m")
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    plain = Backbone(model, processor)
    torch.testing.assert_close(_logits(plain), _logits(Backbone.load(out, device="cpu")), atol=0, rtol=0)


def test_greedy_rows_leaving_the_batch_match_model_generate(tmp_path: Path) -> None:
    """Greedy decoding that drops finished rows and their cache gives ``model.generate``'s tokens,
    on the shipped base (whose rows end at different steps: a random model's do not), for image and
    text plan prompts of every task, cut by ``max_new_tokens`` or not."""
    from mgsd.backends.local import query_messages
    from mgsd.data.generate import generate_dataset
    from mgsd.eval.queries import load_samples, plan_query
    from mgsd.pipeline.base_model import shipped_base
    from mgsd.tasks import get_task

    for name, level in (("frozenlake", 4), ("maze", 4), ("minibehaviour", 6)):
        generate_dataset(
            get_task(name), [level], 3, split="test", seed=9, out=tmp_path, progress=False, workers=1
        )
    samples = load_samples([tmp_path])
    bb = Backbone.load(shipped_base())
    never = bb._never_sample().tolist()
    batches = [(modality, samples) for modality in ("image", "text")]  # mixed tasks: little shared
    # One task per batch: its instruction is a shared prefix, prefilled once (models/prefix.py).
    batches += [
        (m, [s for s in samples if s["task"] == t])
        for m in ("image", "text")
        for t in ("frozenlake", "maze", "minibehaviour")
    ]
    for modality, group in batches:
        ctx = bb.encode([query_messages(plan_query(s, modality)) for s in group])
        if len(group) < len(samples):
            assert shared_prefix_length(ctx, never) >= MIN_SHARED
        slow = bb.generate(ctx, max_new_tokens=48, greedy=True, shrink=False)
        fast = bb.generate(ctx, max_new_tokens=48, greedy=True)
        assert fast.sequences == slow.sequences and fast.finished == slow.finished
        assert fast.texts == slow.texts
        unshared = bb.generate(ctx, max_new_tokens=48, greedy=True, share_prefix=False)
        assert unshared.sequences == fast.sequences
    mixed = bb.encode([query_messages(plan_query(s, "image")) for s in samples])
    rows = bb.generate(mixed, max_new_tokens=48, greedy=True).sequences
    assert len({len(s) for s in rows}) > 1, "rows should end at different steps"


def test_sampled_rows_leaving_the_batch_draw_what_model_generate_draws(tmp_path: Path) -> None:
    """Sampling in which finished rows leave the batch (the stage-2 rollouts) gives, for a seed,
    ``model.generate``'s tokens and log-probs and leaves the random state where it leaves it: the
    draws are taken over the whole batch, as there. Plain and warped (temperature, top-p)."""
    from mgsd.backends.local import query_messages
    from mgsd.data.generate import generate_dataset
    from mgsd.eval.queries import load_samples, plan_query
    from mgsd.pipeline.base_model import shipped_base
    from mgsd.tasks import get_task

    for name, level in (("frozenlake", 4), ("maze", 4), ("minibehaviour", 6)):
        generate_dataset(
            get_task(name), [level], 3, split="test", seed=9, out=tmp_path, progress=False, workers=1
        )
    bb = Backbone.load(shipped_base())
    ctx = bb.encode([query_messages(plan_query(s, "image")) for s in load_samples([tmp_path])])
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        runs = []
        for shrink in (False, True):
            torch.manual_seed(3)
            gen = bb.generate(
                ctx,
                max_new_tokens=128,
                temperature=temperature,
                top_p=top_p,
                shrink=shrink,
                return_logprobs=True,
            )
            runs.append((gen, torch.rand(4)))
        (slow, after_slow), (fast, after_fast) = runs
        assert fast.sequences == slow.sequences and fast.finished == slow.finished
        assert len({len(s) for s in fast.sequences}) > 2, "rows should end at different steps"
        assert torch.equal(after_fast, after_slow)
        assert fast.logprobs is not None and slow.logprobs is not None
        for a, b in zip(fast.logprobs, slow.logprobs, strict=True):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)


def test_shared_prefix_layout_keeps_every_token_and_moves_the_padding() -> None:
    """``[prefix | pad… rest]``: the rest keeps its column, the prefix stops before a vision marker
    and leaves every row a token of its own; one row shares nothing."""
    pad, vision = 0, 99
    rows = [[5, 6, 7, 8, vision, 1, 2], [5, 6, 7, 8, vision, 3], [5, 6, 7, 8, vision, 4, 4, 4]]
    L = max(map(len, rows))
    ids = torch.tensor([[pad] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    kind = (ids == vision).long()  # a per-token extra travels with its token
    ctx = Context(ids, mask, extras={"mm_token_type_ids": kind})
    assert shared_prefix_length(ctx, [vision]) == 4
    assert shared_prefix_length(ctx.select([0]), [vision]) == 0
    assert shared_prefix_length(ctx, []) == 5  # without the marker: up to one own token per row
    out = hoist_prefix(ctx, 4, pad)
    assert out.attention_mask.tolist() == [
        [1, 1, 1, 1, 0, 1, 1, 1],
        [1, 1, 1, 1, 0, 0, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ]
    assert out.rows() == ctx.rows()
    assert out.input_ids[1, 4:6].tolist() == [pad, pad]
    assert (out.extras["mm_token_type_ids"] == (out.input_ids == vision).long()).all()
