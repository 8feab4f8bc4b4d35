"""The adapter is not Qwen-specific: a tiny LLaVA (CLIP tower, Llama text model, 1-D positions)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mgsd.models import CHAT_TEMPLATE, Backbone, build_tokenizer


def _tiny_llava() -> Backbone:
    tok = build_tokenizer(vocab_size=512)
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
    )
    text = LlamaConfig(
        vocab_size=(len(tok) + 63) // 64 * 64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
        ),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>"),
        patch_size=16,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=1,  # the CLS token
    )
    return Backbone(model, processor)


def test_llava_generation_scoring_and_roundtrip(tmp_path: Path) -> None:
    bb = _tiny_llava()
    images = [Image.new("RGB", (64, 64), (200, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 200))]
    texts = ["Where is (3,1)?", "A much longer prompt about the grid, its start, its goal and holes."]
    ctx = bb.encode_student(texts, images)
    torch.manual_seed(0)
    gen = bb.generate(ctx, max_new_tokens=6, return_logprobs=True)
    lp = bb.token_logprobs(ctx, gen.sequences)
    for i, seq in enumerate(gen.sequences):
        torch.testing.assert_close(
            lp.logprobs[i, : len(seq)], torch.tensor(gen.logprobs[i]), atol=1e-4, rtol=0
        )
    alone = bb.token_logprobs(bb.encode_student(texts[:1], images[:1]), gen.sequences[:1])
    n = len(gen.sequences[0])
    torch.testing.assert_close(alone.logprobs[0], lp.logprobs[0, :n], atol=2e-5, rtol=0)
    again = Backbone.load(bb.save(tmp_path / "llava"), device="cpu")
    assert torch.equal(again.token_logprobs(ctx, gen.sequences).logprobs, lp.logprobs)
