"""The one door through which every stage (SFT, on-policy distillation, evaluation) talks to a model.

``Backbone`` wraps any Hugging Face image-text-to-text model and its processor:

* ``encode`` / ``encode_student`` / ``encode_teacher``: chat turns -> a left-padded ``Context``;
* ``generate``: batched sampling or greedy decoding, stopping at end of turn;
* ``token_logprobs``: log-probs of the SAME response ids under any context, one forward per context,
  with positions (Qwen M-RoPE included) computed for that context; with ``logit_chunk`` from the
  final hidden states, never holding the whole ``(B, R, V)`` logits;
* ``add_lora`` / ``teacher()``: peft LoRA, and the base with the adapter disabled as frozen teacher;
* ``save``: an atomic, plain HF model directory (LoRA merged, or kept beside the base weights).

Precision: ``dtype`` is the dtype of the stored parameters (the master weights); ``compute_dtype``
is the dtype of the arithmetic. With ``dtype="float32", compute_dtype="bfloat16"`` the forward runs
under ``torch.autocast`` in bf16 while the optimizer updates fp32 weights, so tiny steps
(lr 1e-6) are not rounded away as they are with bf16 parameters.

The class is the API; the work lives in small modules beside it: ``loading`` and ``saving`` (model
directories), ``encoding`` (chat turns to ids), ``generation`` (sampling), ``token_logprobs`` (the
scoring forward) and ``guards`` (the checks on contexts and responses).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn

from mgsd.models import guards
from mgsd.models import lora as lora_lib
from mgsd.models import token_logprobs as scoring
from mgsd.models.chat import Message, student_messages, teacher_messages
from mgsd.models.context import Context
from mgsd.models.encoding import encode_conversations, response_ids
from mgsd.models.generation import Generation, generate, never_sample
from mgsd.models.loading import load_model
from mgsd.models.logprobs import TokenLogProbs
from mgsd.models.saving import save_model_dir
from mgsd.models.storage import resolve_dtype


class Backbone:
    """A VLM + processor behind the small API every MGSD stage uses (see the module docstring)."""

    def __init__(
        self, model: nn.Module, processor: Any, *, compute_dtype: str | torch.dtype | None = None
    ) -> None:
        self.peft: Any = None
        if isinstance(model, lora_lib.PeftModel):
            self.peft, model = model, model.get_base_model()
        self.model = model
        self.processor = processor
        self.source: str | None = None  # the directory it was loaded from (its processor files)
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # prompts end at the same column: responses line up
        param_dtype = next(model.parameters()).dtype
        self.compute_dtype = resolve_dtype(compute_dtype) or param_dtype
        self._teacher_mode = False
        # Set by a data-parallel engine (train/engines.py): the wrapper the training forward goes
        # through (DDP), and whether every rank must run the same forwards (FSDP2's collectives).
        self.train_forward: nn.Module | None = None
        self.synced = False
        template = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise ValueError("the processor has no chat template")
        self.template_id = hashlib.sha256(template.encode()).hexdigest()
        vocab = json.dumps(sorted(self.tokenizer.get_vocab().items()))
        self.tokenizer_id = hashlib.sha256(vocab.encode()).hexdigest()
        self.eos_token_ids = guards.end_of_turn_ids(self.tokenizer, model)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])
        self.image_token_id = guards.config_value(model.config, "image_token_id", "image_token_index")
        self._generation_prompt_ids = guards.generation_prompt_ids(processor, self.tokenizer)
        self._generation_prompt_text: str | None = None  # decoded lazily by encode_responses
        self._forward_params = set(inspect.signature(model.forward).parameters)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def load(
        cls,
        path_or_id: str | os.PathLike[str],
        *,
        dtype: str | torch.dtype = "float32",
        compute_dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        trainable_adapter: bool = True,
        weights: bool = True,
    ) -> Backbone:
        """Load a model directory or hub id (any ``AutoModelForImageTextToText``) and its processor.

        A directory saved with an unmerged LoRA (``adapter/``) comes back with the adapter attached.
        ``dtype`` = parameter (master) dtype; ``compute_dtype`` = autocast dtype (default: ``dtype``).
        ``weights=False``: the model on the meta device, no weights read (FSDP2 rank-0 loading).
        """
        model, processor, source = load_model(
            path_or_id,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            device=device,
            trainable_adapter=trainable_adapter,
            weights=weights,
        )
        bb = cls(model, processor, compute_dtype=compute_dtype)
        bb.source = str(source)
        return bb

    def save(
        self,
        out_dir: str | os.PathLike[str],
        *,
        merge_lora: bool = True,
        dtype: str | None = None,
        full_state: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write a plain HF model directory atomically (temp dir, then rename).

        With a LoRA adapter: ``merge_lora=True`` folds it into the weights (loadable anywhere);
        ``merge_lora=False`` stores the untouched base weights plus ``adapter/``, so the teacher
        (the base) survives in the checkpoint. ``dtype`` casts the saved weights (e.g. bf16 for eval).
        ``full_state``: the model's whole state dict gathered from its shards (FSDP2), used instead of
        the live (sharded) parameters.
        """
        return save_model_dir(self, out_dir, merge_lora=merge_lora, dtype=dtype, state=full_state)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def param_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count (tied weights counted once)."""
        seen: set[int] = set()
        total = 0
        for p in self.model.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer should update."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def autocast(self) -> Any:
        """``torch.autocast`` to ``compute_dtype`` when it is lower than the parameter dtype."""
        if self.compute_dtype == self.param_dtype or self.compute_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def image_token_count(self, size: tuple[int, int] = (256, 256)) -> int:
        """Visual tokens one ``(width, height)`` image becomes in the prompt."""
        ctx = self.encode_student(["x"], [Image.new("RGB", size)])
        return (
            int((ctx.input_ids == self.image_token_id).sum().item()) if self.image_token_id is not None else 0
        )

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        conversations: Sequence[Sequence[Message]],
        images: Sequence[Sequence[Image.Image]] | None = None,
        *,
        add_generation_prompt: bool = True,
    ) -> Context:
        """Render chat ``conversations`` and tokenise them into one left-padded batch.

        ``images[i]`` are the images of conversation ``i`` in order of their ``{"type": "image"}``
        slots (or put the PIL image under the part's ``"image"`` key and pass ``images=None``).
        """
        return encode_conversations(self, conversations, images, add_generation_prompt=add_generation_prompt)

    def encode_student(
        self,
        texts: Sequence[str],
        images: Sequence[Image.Image | Sequence[Image.Image]],
        *,
        image_position: Literal["start", "end"] = "end",
    ) -> Context:
        """Student turns: a user message with the instruction text and its image(s), no system turn."""
        lists = [[img] if isinstance(img, Image.Image) else list(img) for img in images]
        if len(texts) != len(lists):
            raise ValueError(f"{len(texts)} texts but {len(lists)} images")
        convs = [student_messages(t, image_position, len(imgs)) for t, imgs in zip(texts, lists, strict=True)]
        return self.encode(convs, lists)

    def encode_teacher(self, systems: Sequence[str | None], texts: Sequence[str]) -> Context:
        """Teacher turns: a system message and a text-only user message (no image)."""
        if len(systems) != len(texts):
            raise ValueError(f"{len(systems)} system prompts but {len(texts)} texts")
        convs = [teacher_messages(s, t) for s, t in zip(systems, texts, strict=True)]
        return self.encode(convs, [[] for _ in texts])

    def encode_responses(self, texts: Sequence[str], *, add_eos: bool = True) -> list[list[int]]:
        """Response ids for target texts (SFT), ending with the end-of-turn token.

        Raises ``ValueError`` when the text, tokenised after the generation prompt as the model
        would see it, does not start a new token: e.g. a leading "\\n" merging with the prompt's
        "\\n" into one token. Training on such ids would teach a split the model never samples.
        """
        return response_ids(self, texts, add_eos=add_eos)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Token ids -> text."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ guards (see ``guards``)
    def check_image_tokens(self, ctx: Context) -> None:
        """Raise ``ValueError`` if image placeholder tokens and image features disagree."""
        guards.check_image_tokens(self, ctx)

    def check_context(self, ctx: Context) -> None:
        """Raise ``ValueError`` if ``ctx`` cannot be continued by a response of this model."""
        guards.check_context(self, ctx)

    def _check_responses(self, ctx: Context, responses: list[list[int]]) -> None:
        guards.check_responses(self, ctx, responses)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        ctx: Context,
        *,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
        return_logprobs: bool = False,
        stop_token_ids: Sequence[int] | None = None,
        shrink: bool = True,
        share_prefix: bool = True,
    ) -> Generation:
        """Batched sampling (or greedy decoding) until end of turn or ``max_new_tokens``.

        ``stop_token_ids`` replaces the end-of-turn ids as stop tokens (the stop token is kept).
        Finished rows leave the batch (``generation.decode_shrinking``; sampling makes the draws
        ``model.generate`` makes, so the same tokens for a seed) and the prompt part all rows share is
        prefilled once (``share_prefix``, models/prefix.py); ``shrink=False``, and a sharded (FSDP2)
        model, use ``model.generate`` throughout.
        """
        return generate(
            self,
            ctx,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            greedy=greedy,
            return_logprobs=return_logprobs,
            stop_token_ids=stop_token_ids,
            shrink=shrink,
            share_prefix=share_prefix,
        )

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Dropout off for the block (generation, scoring and probes); the training mode is restored."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def _never_sample(self) -> torch.Tensor:
        return never_sample(self.model, self.tokenizer)

    # ------------------------------------------------------------------ scoring
    def token_logprobs(
        self,
        ctx: Context,
        response_ids: Sequence[Sequence[int]],
        *,
        grad: bool = False,
        full_vocab: bool = False,
        logit_chunk: int = 0,
    ) -> TokenLogProbs:
        """Log-probs (temperature 1) of ``response_ids[i]`` following prompt ``i`` of ``ctx``.

        One forward over ``[pad… prompt | response pad…]``; positions (M-RoPE for Qwen-VL) are
        computed for this concatenation, so each context gets its own. ``grad=True`` keeps the graph
        (student update); otherwise runs under ``no_grad`` (teacher, old log-probs). ``full_vocab``
        also returns log-probs over the whole vocabulary at the response positions, ``(B, R, V)``.

        ``logit_chunk > 0`` runs the model without its output head (``self.model.model``, see
        ``output_head``) and computes the log-probs ``logit_chunk`` tokens at a time from the final
        hidden states, recomputing each block in backward; ``full_vocab`` then returns those hidden
        states and the head (``.hidden``) instead of ``.full``, for the chunked vocabulary losses.
        """
        return scoring.token_logprobs(
            self, ctx, response_ids, grad=grad, full_vocab=full_vocab, logit_chunk=logit_chunk
        )

    def output_head(self) -> tuple[nn.Module, nn.Linear]:
        """The model without its output head, and the head, for the chunked path.

        Assumes ``logits = lm_head(model.model(...).last_hidden_state)``: true of Hugging Face
        ``*ForConditionalGeneration`` VLMs (Qwen-VL, LLaVA, ...), whose ``.model`` is everything but
        the head, also with a peft LoRA attached (``self.model`` is then the base model with adapter
        layers injected, so ``teacher()``'s adapter-off context still applies). Refuses, with the
        reason, a model where it visibly does not hold: no ``.model``, a head that is not a plain
        ``nn.Linear`` (a LoRA on the head would be live outside ``teacher()``), or a config that
        scales or soft-caps the logits after the head.
        """
        return scoring.output_head(self.model)

    # ------------------------------------------------------------------ LoRA / teacher
    def add_lora(
        self,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        targets: str | Sequence[str] = "all-linear",
        train_vision: bool = False,
    ) -> Backbone:
        """Attach a LoRA adapter (language-model linears by default); only its weights train."""
        if self.peft is not None:
            raise ValueError("a LoRA adapter is already attached")
        self.peft = lora_lib.add_lora(self.model, r, alpha, dropout, targets, train_vision)
        return self

    @property
    def has_lora(self) -> bool:
        return self.peft is not None

    @contextmanager
    def teacher(self) -> Iterator[Backbone]:
        """The base model with the adapter disabled, frozen (``no_grad``, eval): no weight copy."""
        if self.peft is None:
            raise ValueError(
                "teacher(): no LoRA adapter to disable; load a separate teacher with Backbone.load"
            )
        was_training = self.model.training
        self.model.eval()
        self._teacher_mode = True
        try:
            with self.peft.disable_adapter(), torch.no_grad():
                yield self
        finally:
            self._teacher_mode = False
            self.model.train(was_training)

    def freeze(self) -> Backbone:
        """Make this a frozen model (separate teacher): no gradients, eval mode."""
        self.model.requires_grad_(False)
        self.model.eval()
        return self

    def enable_gradient_checkpointing(self) -> Backbone:
        """Recompute each decoder and vision block's activations in backward instead of keeping them
        (transformers' own switch; non-reentrant, so frozen inputs under LoRA need no hook). Trades
        about one more forward per step for activation memory; the gradients are unchanged."""
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(self.model).__name__} does not support gradient checkpointing")
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return self

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether activations are recomputed in backward."""
        flag = getattr(self.model, "is_activation_checkpointing", None)
        if flag is None:
            flag = getattr(self.model, "is_gradient_checkpointing", False)
        return bool(flag)

    def set_vision_trainable(self, trainable: bool) -> Backbone:
        """Full fine-tuning: (un)freeze the vision tower and merger (no-op for LoRA weights)."""
        for name, param in self.model.named_parameters():
            if lora_lib.is_vision(name) and "lora_" not in name:
                param.requires_grad_(trainable)
        return self
