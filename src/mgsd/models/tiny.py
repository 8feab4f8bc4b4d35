"""Tiny Qwen-VL models built offline from a config: random weights, domain tokenizer, PIL processor.

Presets (Qwen3-VL architecture, tied embeddings; parameters without a corpus):

    preset  hidden  layers  vision (width x depth)  BPE vocab (max)  parameters
    tiny    256     4       128 x 4                 2048             ~5.6M
    small   384     8       192 x 6                 4096             ~20.7M

The BPE learns at most that many tokens from the built-in corpus plus the caller's ``corpus``; the
218 domain tokens (coordinates, tags, sizes) come on top, and the embedding is rounded up to a
multiple of 64 rows.

Images: patch 16 with a 2x2 merge, so one visual token per 32x32 pixel block. The processor keeps
images between 256*256 and 512*512 pixels (the paper's bounds), so a 256x256 render gives exactly
8 x 8 = 64 visual tokens and is not resized.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl import Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from mgsd.models.chat import CHAT_TEMPLATE
from mgsd.models.processor import image_only_processor_class, qwen_image_processor
from mgsd.models.tokenizer import (
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    VIDEO_TOKEN,
    VISION_END,
    VISION_START,
    build_tokenizer,
)

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Dims:
    """Model sizes. ``head_dim`` is hidden // heads for the Qwen2 families (fixed there)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    vocab: int = 2048  # BPE target size before the added domain tokens
    head_dim: int | None = None
    deepstack: tuple[int, ...] = field(default=())  # Qwen3-VL only
    min_pixels: int = 256 * 256
    max_pixels: int = 512 * 512
    # Embedding / head rows; None: the tokenizer's size rounded up to 64. Rows past the tokenizer
    # are never produced by a trained model (Qwen's own 151,936 rows exceed its 151,669 tokens).
    vocab_rows: int | None = None
    rope_theta: float = 10_000.0
    vision_positions: int = 256  # the ViT's learned position table (a 16x16 patch grid at 256 px)


PRESETS: dict[str, Dims] = {
    "tiny": Dims(256, 4, 4, 2, 768, 128, 4, 4, 512, vocab=2048, head_dim=64, deepstack=(1, 2)),
    "small": Dims(384, 8, 6, 2, 1152, 192, 6, 6, 768, vocab=4096, head_dim=64, deepstack=(1, 3, 5)),
    # Qwen3-VL-4B-Instruct's exact widths (text: hidden 2560, 32 heads of 128, 8 KV heads, MLP 9728,
    # 151,936 rows, rope 5e6; vision: hidden 1024, 16 heads, MLP 4096, 2304 positions, three
    # deepstack mergers) with its 36 + 24 layers cut to 3 + 4, so that the real shapes go through
    # every code path on a CPU (about 0.85B parameters, 3.4 GB in fp32). Random weights: it cannot
    # plan; it is for memory and shape checks (benchmarks/bench_paper_shape.py).
    "paper-4b": Dims(
        2560,
        3,
        32,
        8,
        9728,
        1024,
        4,
        16,
        4096,
        vocab=2048,
        head_dim=128,
        deepstack=(1, 2, 3),
        vocab_rows=151_936,
        rope_theta=5_000_000.0,
        vision_positions=2304,
    ),
}


def _mrope_section(head_dim: int) -> list[int]:
    # Qwen's split of the rotary half-dimension into (t, h, w), e.g. [24, 20, 20] for head_dim 128.
    half = head_dim // 2
    t = half - 2 * (half * 5 // 16)
    return [t, half * 5 // 16, half * 5 // 16]


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD_TOKEN, EOS_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN)}
    ids.update({t: tokenizer.convert_tokens_to_ids(t) for t in (VISION_START, VISION_END)})
    return ids


# Over 60 lines, kept whole: one literal config per family (text, vision, token ids), each field
# beside the ones it must agree with.
def qwen_vl_config(family: str, dims: Dims, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """A Qwen2-VL, Qwen2.5-VL or Qwen3-VL config of the given size, wired to ``tokenizer``."""
    ids = _token_ids(tokenizer)
    vocab = dims.vocab_rows or math.ceil(len(tokenizer) / 64) * 64  # rows past len(tokenizer): never produced
    if vocab < len(tokenizer):
        raise ValueError(f"vocab_rows {vocab} is below the tokenizer's {len(tokenizer)} tokens")
    head_dim = dims.head_dim or dims.hidden // dims.heads
    text: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=dims.hidden,
        intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads,
        max_position_embeddings=8192,
        pad_token_id=ids[PAD_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        bos_token_id=None,
        rope_parameters={
            "rope_type": "default",
            # Qwen's 1e6 / 5e6 suit 32k+ contexts; with head_dim 64 they leave only a few rotary
            # frequencies that resolve neighbouring tokens, which a model trained from scratch on
            # ~500-token sequences needs for copying. 1e4 (the default) is the classic choice there.
            "rope_theta": dims.rope_theta,
            "mrope_section": _mrope_section(head_dim),
        },
    )
    top = dict(
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[VIDEO_TOKEN],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=True,
    )
    if family == "qwen3_vl":
        text["head_dim"] = head_dim
        text["rope_parameters"] |= {"mrope_interleaved": True}
        vision = dict(
            depth=dims.vision_depth,
            hidden_size=dims.vision_hidden,
            intermediate_size=dims.vision_intermediate,
            num_heads=dims.vision_heads,
            out_hidden_size=dims.hidden,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=dims.vision_positions,
            deepstack_visual_indexes=list(dims.deepstack),
        )
        return Qwen3VLConfig(text_config=text, vision_config=vision, **top)
    if family == "qwen2_5_vl":
        vision = dict(
            depth=dims.vision_depth,
            hidden_size=dims.vision_hidden,
            intermediate_size=dims.vision_intermediate,
            num_heads=dims.vision_heads,
            out_hidden_size=dims.hidden,
            patch_size=14,
            window_size=112,
            fullatt_block_indexes=[dims.vision_depth - 1],
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)
    if family == "qwen2_vl":
        vision = dict(
            depth=dims.vision_depth,
            embed_dim=dims.vision_hidden,
            hidden_size=dims.hidden,
            num_heads=dims.vision_heads,
            mlp_ratio=max(1, dims.vision_intermediate // dims.vision_hidden),
            patch_size=14,
        )
        return Qwen2VLConfig(text_config=text, vision_config=vision, **top)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


_MODEL_CLASSES = {
    "qwen2_vl": (Qwen2VLForConditionalGeneration, Qwen2VLProcessor, 14, CLIP_MEAN, CLIP_STD),
    "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, 14, CLIP_MEAN, CLIP_STD),
    "qwen3_vl": (Qwen3VLForConditionalGeneration, Qwen3VLProcessor, 16, (0.5,) * 3, (0.5,) * 3),
}


@torch.no_grad()
def _structure_coordinate_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Start each ``(r,c)`` token (and its leading-space twin) as row vector + column vector.

    A model trained from scratch otherwise meets 100 unrelated coordinate tokens and must discover
    the grid geometry token by token; sharing a row or a column component from the start is the
    kind of prior a pretrained model's digit embeddings carry. The scale matches the random init.
    """
    emb = model.get_input_embeddings().weight
    vocab = tokenizer.get_vocab()
    std = float(emb.std())
    gen = torch.Generator().manual_seed(1234)
    rows = torch.randn(10, emb.shape[1], generator=gen) * std / 2**0.5
    cols = torch.randn(10, emb.shape[1], generator=gen) * std / 2**0.5
    for r in range(10):
        for c in range(10):
            for text in (f"({r},{c})", f" ({r},{c})"):
                if text in vocab:
                    emb[vocab[text]] = rows[r] + cols[c]


@torch.no_grad()
def _scale_position_embeddings(model: PreTrainedModel) -> None:
    """Start the vision tower's learned position table (Qwen3-VL) at the scale of the patch content.

    At the default std of 0.02 the position signal is about 40x weaker than a patch's content, and a
    from-scratch tower could not learn where its tokens are: even a per-token read-out supervised
    directly with the cell's row and column stayed at chance for 150 steps (measured). At unit scale
    it is well above chance within a few tens of steps.
    """
    for name, module in model.named_modules():
        table = getattr(module, "pos_embed", None)
        if name.endswith("visual") and isinstance(table, torch.nn.Embedding):
            gen = torch.Generator().manual_seed(4321)
            table.weight.copy_(torch.randn(table.weight.shape, generator=gen))


def build_qwen_vl(
    family: str,
    dims: Dims,
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[PreTrainedModel, Any]:
    """A randomly initialised model and its processor (tokenizer + PIL image processor + template)."""
    if family not in _MODEL_CLASSES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    model_cls, processor_cls, patch, mean, std = _MODEL_CLASSES[family]
    if tokenizer is None:
        tokenizer = build_tokenizer(corpus, vocab_size=dims.vocab)
    config = qwen_vl_config(family, dims, tokenizer)
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    _structure_coordinate_embeddings(model, tokenizer)
    _scale_position_embeddings(model)
    ids = _token_ids(tokenizer)
    model.generation_config = GenerationConfig(
        eos_token_id=ids[EOS_TOKEN], pad_token_id=ids[PAD_TOKEN], do_sample=False
    )
    image_processor = qwen_image_processor(
        patch, min_pixels=dims.min_pixels, max_pixels=dims.max_pixels, mean=mean, std=std
    )
    processor_class = image_only_processor_class(processor_cls)
    processor = processor_class(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    return model, processor


def init_model_dir(
    out_dir: str | Path, family: str, dims: Dims, corpus: Iterable[str] | None = None, seed: int = 0
) -> Path:
    """Build a random model of ``family``/``dims`` and save it as a normal Hugging Face model directory."""
    from mgsd.models.backbone import Backbone  # the saver lives with the adapter

    model, processor = build_qwen_vl(family, dims, corpus=corpus, seed=seed)
    return Backbone(model, processor).save(out_dir)


def init_tiny(
    out_dir: str | Path, preset: str = "tiny", corpus: Iterable[str] | None = None, seed: int = 0
) -> Path:
    """Create an offline Qwen3-VL preset in ``out_dir``: ``tiny`` (~5.6M), ``small`` (~20M) or
    ``paper-4b`` (Qwen3-VL-4B's widths, few layers, ~0.85B)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return init_model_dir(out_dir, "qwen3_vl", PRESETS[preset], corpus=corpus, seed=seed)
