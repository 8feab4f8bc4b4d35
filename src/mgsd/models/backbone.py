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
from transformers import AutoModelForImageTextToText, GenerationConfig, LogitsProcessorList

from mgsd.files import atomic_directory, write_json
from mgsd.models import lora as lora_lib
from mgsd.models.chat import Message, count_images, student_messages, teacher_messages
from mgsd.models.context import Context, append_responses
from mgsd.models.generation import Generation, RecordLogprobs, Suppress, cut_at_stop
from mgsd.models.logprobs import OutputStates, TokenLogProbs, chunked_logprobs, gather_logprobs
from mgsd.models.positions import position_ids
from mgsd.models.processor import VIDEO_CONFIG, load_processor, video_processor_config
from mgsd.models.storage import (
    quiet_progress,
    resolve_dtype,
    resolve_model_path,
    set_config_dtype,
)

ADAPTER_DIR = "adapter"  # LoRA weights saved beside unmerged base weights
# Config keys of HF models that change the logits after ``lm_head`` (Gemma's soft-cap, Cohere's and
# Granite's scales, muP-style multipliers): the chunked path, head(hidden), would miss them.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "lm_head_multiplier",
    "output_multiplier",
)


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def check_weight_files(source: str) -> None:
    """A local model directory must hold safetensors weights; pickle-only weights are refused by name
    (loading them can run arbitrary code), before transformers is asked."""
    path = Path(source)
    if not path.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) refuses pickle there
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in path.iterdir() if f.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"cannot load model {source}: only pickle weights ({pickles[0]}); mgsd loads safetensors only "
            "(convert them with safetensors.torch.save_file)"
        )
    raise ValueError(f"cannot load model {source}: no *.safetensors weights in the directory")


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
        template = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise ValueError("the processor has no chat template")
        self.template_id = hashlib.sha256(template.encode()).hexdigest()
        vocab = json.dumps(sorted(self.tokenizer.get_vocab().items()))
        self.tokenizer_id = hashlib.sha256(vocab.encode()).hexdigest()
        self.eos_token_ids = self._end_of_turn_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])
        self.image_token_id = _config_value(model.config, "image_token_id", "image_token_index")
        self._generation_prompt_ids = self._find_generation_prompt()
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
    ) -> Backbone:
        """Load a model directory or hub id (any ``AutoModelForImageTextToText``) and its processor.

        A directory saved with an unmerged LoRA (``adapter/``) comes back with the adapter attached.
        ``dtype`` = parameter (master) dtype; ``compute_dtype`` = autocast dtype (default: ``dtype``).
        """
        source = resolve_model_path(path_or_id)
        check_weight_files(source)
        try:
            with quiet_progress():
                # safetensors only: a pickle checkpoint can run code when loaded.
                model = AutoModelForImageTextToText.from_pretrained(
                    source,
                    dtype=resolve_dtype(dtype),
                    trust_remote_code=trust_remote_code,
                    use_safetensors=True,
                )
            processor = load_processor(source, trust_remote_code=trust_remote_code)
        except (ValueError, OSError) as exc:
            raise ValueError(f"cannot load model {source}: {_first_line(exc)}") from None
        except Exception as exc:  # safetensors, json and transformers raise many types for broken files
            reason = f"{type(exc).__name__}: {_first_line(exc)}"
            raise ValueError(f"cannot load model {source}: {reason}") from None
        adapter = Path(source) / ADAPTER_DIR
        if (adapter / "adapter_config.json").is_file():
            model = lora_lib.load_adapter(model, str(adapter), trainable=trainable_adapter)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        model.eval()
        bb = cls(model, processor, compute_dtype=compute_dtype)
        bb.source = str(source)
        return bb

    def save(
        self, out_dir: str | os.PathLike[str], *, merge_lora: bool = True, dtype: str | None = None
    ) -> Path:
        """Write a plain HF model directory atomically (temp dir, then rename).

        With a LoRA adapter: ``merge_lora=True`` folds it into the weights (loadable anywhere);
        ``merge_lora=False`` stores the untouched base weights plus ``adapter/``, so the teacher
        (the base) survives in the checkpoint. ``dtype`` casts the saved weights (e.g. bf16 for eval).
        """
        target = resolve_dtype(dtype)
        if self.peft is None:
            state = dict(self.model.state_dict())
        elif merge_lora:
            state = lora_lib.merged_state_dict(self.peft)
        else:
            state = lora_lib.base_state_dict(self.peft)
        if target is not None:
            state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
        with atomic_directory(out_dir) as tmp, quiet_progress():
            self.model.save_pretrained(tmp, state_dict=state)
            if target is not None:
                set_config_dtype(tmp / "config.json", str(target).removeprefix("torch."))
            if self.peft is not None and not merge_lora:
                lora_lib.save_adapter(self.peft, str(tmp / ADAPTER_DIR))
                # peft records the base as given at load time (often relative to some other cwd);
                # the base weights are the ones saved here, so point at this directory, absolutely.
                _set_adapter_base(tmp / ADAPTER_DIR, Path(out_dir).resolve())
            self.processor.save_pretrained(tmp)
            video = video_processor_config(self.source, self.model.config.model_type, self.processor)
            if video is not None and not (tmp / VIDEO_CONFIG).exists():
                write_json(video, tmp / VIDEO_CONFIG, sort_keys=True)
        return Path(out_dir)

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
        conversations = [list(c) for c in conversations]
        if images is None:
            images = [_images_in(c) for c in conversations]
        if len(images) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
        counts = [count_images(c) for c in conversations]
        for i, (n, imgs) in enumerate(zip(counts, images, strict=True)):
            if n != len(imgs):
                raise ValueError(f"conversation {i} has {n} image slots but {len(imgs)} images were given")
        texts = [
            self.processor.apply_chat_template(
                _strip_images(c), tokenize=False, add_generation_prompt=add_generation_prompt
            )
            for c in conversations
        ]
        flat = [img.convert("RGB") for imgs in images for img in imgs]
        batch = self.processor(text=texts, images=flat or None, padding=True, return_tensors="pt")
        extras = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        ctx = Context(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            extras=extras,
            images_per_sample=counts,
            template_id=self.template_id,
            tokenizer_id=self.tokenizer_id,
            generation_prompt=add_generation_prompt,
        ).to(self.device)
        self.check_image_tokens(ctx)
        return ctx

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
        texts = list(texts)
        if not texts:
            return []
        prompt = self._generation_prompt_ids or []
        alone = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        joints: list[Any] = [None] * len(texts)
        if prompt:
            if self._generation_prompt_text is None:
                self._generation_prompt_text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            prompt_text = self._generation_prompt_text
            joints = self.tokenizer([prompt_text + t for t in texts], add_special_tokens=False)["input_ids"]
        out = []
        for i, (text, ids, joint) in enumerate(zip(texts, alone, joints, strict=True)):
            ids = list(ids)
            if prompt and list(joint) != prompt + ids:
                raise ValueError(
                    f"response {i} ({text[:12]!r}) would merge into the prompt boundary: after the"
                    " generation prompt it tokenises differently than on its own"
                )
            out.append(ids + ([self.eos_token_ids[0]] if add_eos else []))
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Token ids -> text."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ guards
    def check_image_tokens(self, ctx: Context) -> None:
        """Raise ``ValueError`` if image placeholder tokens and image features disagree."""
        if self.image_token_id is None:
            return
        found = (ctx.input_ids == self.image_token_id).sum(-1).tolist()
        grid = ctx.extras.get("image_grid_thw")
        if grid is None:
            if any(n and not f for n, f in zip(ctx.images_per_sample, found, strict=False)):
                raise ValueError("a sample has images but no image tokens in input_ids")
            return
        merge = _config_value(getattr(self.model.config, "vision_config", None), "spatial_merge_size") or 1
        per_image = (grid.prod(-1) // merge**2).tolist()
        if not ctx.images_per_sample:  # unknown split over samples: check the batch total only
            found, counts = [sum(found)], [len(per_image)]
        else:
            counts = ctx.images_per_sample
        if sum(counts) != len(per_image):
            raise ValueError(f"{sum(counts)} images in the conversations but {len(per_image)} image grids")
        start = 0
        for i, n in enumerate(counts):
            expected = sum(per_image[start : start + n])
            start += n
            if found[i] != expected:
                where = f"sample {i}" if ctx.images_per_sample else "batch"
                raise ValueError(
                    f"{where}: {found[i]} image tokens in input_ids but the images give {expected}"
                )
        pixels = ctx.extras.get("pixel_values")
        patches = int(grid.prod(-1).sum())
        if pixels is not None and pixels.shape[0] != patches:
            raise ValueError(f"pixel_values has {pixels.shape[0]} patches, image_grid_thw implies {patches}")

    def check_context(self, ctx: Context) -> None:
        """Raise ``ValueError`` if ``ctx`` cannot be continued by a response of this model."""
        if ctx.tokenizer_id != self.tokenizer_id:
            raise ValueError("context was tokenised with a different vocabulary than this model's tokenizer")
        if ctx.template_id != self.template_id:
            raise ValueError("context was built with a different chat template than this model's")
        if not ctx.generation_prompt:
            raise ValueError("context has no generation prompt: a response would not start an assistant turn")
        if not bool(ctx.attention_mask[:, -1].all()):
            raise ValueError("context is not left-padded: a response would follow padding, not the prompt")
        suffix = self._generation_prompt_ids
        if suffix:
            tail = ctx.input_ids[:, -len(suffix) :]
            if not bool((tail == torch.as_tensor(suffix, device=tail.device)).all()):
                raise ValueError(
                    "context does not end with the generation prompt: the response boundary is lost"
                )
        self.check_image_tokens(ctx)

    def _check_responses(self, ctx: Context, responses: list[list[int]]) -> None:
        if len(responses) != len(ctx):
            raise ValueError(f"{len(ctx)} contexts but {len(responses)} responses")
        vocab = self.model.get_input_embeddings().num_embeddings
        for i, r in enumerate(responses):
            if not r:
                raise ValueError(f"response {i} is empty")
            if self.image_token_id is not None and self.image_token_id in r:
                raise ValueError(f"response {i} contains the image placeholder token")
            if min(r) < 0 or max(r) >= vocab:
                raise ValueError(f"response {i} has ids outside the vocabulary [0, {vocab})")

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
    ) -> Generation:
        """Batched sampling (or greedy decoding) until end of turn or ``max_new_tokens``.

        ``stop_token_ids`` replaces the end-of-turn ids as stop tokens (the stop token is kept).
        """
        self.check_context(ctx)
        stops = [int(t) for t in stop_token_ids] if stop_token_ids is not None else self.eos_token_ids
        if not greedy and temperature <= 0:
            raise ValueError("temperature must be > 0 for sampling (use greedy=True)")
        prompt_len = ctx.input_ids.shape[1]
        recorder = RecordLogprobs(prompt_len) if return_logprobs else None
        processors = LogitsProcessorList(
            [p for p in (recorder, Suppress(self._never_sample())) if p is not None]
        )
        sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            eos_token_id=stops,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            use_cache=True,
            **sampling,
        )
        with self._own_generation_config(), self.eval_mode(), torch.no_grad(), self.autocast():
            out = self.model.generate(
                input_ids=ctx.input_ids,
                attention_mask=ctx.attention_mask,
                **ctx.extras,
                generation_config=config,
                logits_processor=processors,
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
        texts = self.tokenizer.batch_decode(seqs, skip_special_tokens=True)
        return Generation(
            sequences=seqs, texts=texts, finished=finished, logprobs=lps if step_lp is not None else None
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

    @contextmanager
    def _own_generation_config(self) -> Iterator[None]:
        # A hub checkpoint's generation_config (top_k=20, temperature=0.7, ...) would fill every field
        # we leave unset; swap in an empty one so only our explicit settings apply.
        saved = self.model.generation_config
        self.model.generation_config = GenerationConfig()
        try:
            yield
        finally:
            self.model.generation_config = saved

    def _never_sample(self) -> torch.Tensor:
        ids = set()
        for name in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
            "image_token_index",
        ):
            value = _config_value(self.model.config, name)
            if value is not None:
                ids.add(int(value))
        vocab = self.model.get_input_embeddings().num_embeddings
        ids.update(range(len(self.tokenizer), vocab))
        return torch.tensor(sorted(ids), dtype=torch.long)

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
        if grad and self._teacher_mode:
            raise ValueError("grad=True inside teacher(): the teacher is frozen")
        if logit_chunk < 0:
            raise ValueError(f"logit_chunk must be >= 0, got {logit_chunk}")
        responses = [[int(t) for t in r] for r in response_ids]
        self.check_context(ctx)
        self._check_responses(ctx, responses)
        input_ids, mask, extras, R = append_responses(ctx, responses, self.pad_token_id)
        L = ctx.input_ids.shape[1]
        for i, r in enumerate(responses):  # concatenated ids, never re-tokenised text: check the seam
            if input_ids[i, L : L + len(r)].tolist() != r or int(mask[i, L - 1]) != 1:
                raise ValueError(f"sample {i}: first response token not adjacent to the prompt")
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": position_ids(self.model, input_ids, mask, extras),
            "use_cache": False,
            **extras,
        }
        targets = input_ids[:, L:]
        resp_mask = mask[:, L:].to(torch.float32)
        # Without grad (teacher, old log-probs) the model runs in eval mode, like the sampler.
        mode = nullcontext() if grad else self.eval_mode()
        full = hidden = None
        if logit_chunk:
            inner, head = self.output_head()
            with mode, torch.set_grad_enabled(grad), self.autocast():
                states = inner(**kwargs).last_hidden_state[:, -(R + 1) : -1]
                weight = head.weight if grad else head.weight.detach()
                bias = head.bias if head.bias is None or grad else head.bias.detach()
                out = OutputStates(states, weight, bias)
                # Under autocast, so the head's matmul runs in the compute dtype as lm_head would.
                logprobs = chunked_logprobs(out, targets, resp_mask, logit_chunk)
            hidden = out if full_vocab else None
        else:
            if "logits_to_keep" in self._forward_params:
                kwargs["logits_to_keep"] = R + 1  # only the positions that predict response tokens
            with mode, torch.set_grad_enabled(grad), self.autocast():
                logits = self.model(**kwargs).logits
            logits = logits[:, -(R + 1) : -1]  # position L-1+t predicts response token t
            logprobs = gather_logprobs(logits, targets) * resp_mask
            full = torch.log_softmax(logits.float(), dim=-1) if full_vocab else None
        return TokenLogProbs(
            logprobs=logprobs,
            mask=resp_mask,
            response_ids=tuple(tuple(r) for r in responses),
            template_id=ctx.template_id,
            tokenizer_id=ctx.tokenizer_id,
            full=full,
            hidden=hidden,
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
        inner = getattr(self.model, "model", None)
        head = self.model.get_output_embeddings()
        name = type(self.model).__name__
        if not isinstance(inner, nn.Module) or inner is self.model:
            raise ValueError(f"logit_chunk: {name} has no inner .model returning the final hidden states")
        if type(head) is not nn.Linear:
            raise ValueError(
                f"logit_chunk: {name}'s output head is {type(head).__name__}, not a plain nn.Linear"
            )
        configs = [self.model.config, getattr(self.model.config, "text_config", None)]
        for key in _LOGIT_TRANSFORMS:
            for config in configs:
                value = getattr(config, key, None) if config is not None else None
                if value not in (None, 0, 1, 0.0, 1.0):
                    raise ValueError(
                        f"logit_chunk: {name} transforms its logits after the head ({key}={value}): "
                        "the chunked path would compute other log-probs; use logit_chunk: 0"
                    )
        return inner, head

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

    def set_vision_trainable(self, trainable: bool) -> Backbone:
        """Full fine-tuning: (un)freeze the vision tower and merger (no-op for LoRA weights)."""
        for name, param in self.model.named_parameters():
            if lora_lib.is_vision(name) and "lora_" not in name:
                param.requires_grad_(trainable)
        return self

    # ------------------------------------------------------------------ helpers
    def _end_of_turn_ids(self) -> list[int]:
        ids: list[int] = []
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        unk = self.tokenizer.unk_token_id
        candidates = [self.tokenizer.eos_token_id, im_end if im_end != unk else None]
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        candidates += gen_eos if isinstance(gen_eos, list) else [gen_eos]
        for c in candidates:
            if c is not None and int(c) not in ids:
                ids.append(int(c))
        if not ids:
            raise ValueError("the tokenizer has no end-of-turn token")
        return ids

    def _find_generation_prompt(self) -> list[int] | None:
        conv = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
        without = self.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=False)
        with_prompt = self.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        a = self.tokenizer(without, add_special_tokens=False)["input_ids"]
        b = self.tokenizer(with_prompt, add_special_tokens=False)["input_ids"]
        if len(b) > len(a) and b[: len(a)] == a:
            return list(b[len(a) :])
        return None  # the template's prompt merges with what precedes it: cannot check


def _config_value(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None) if config is not None else None
        if value is not None:
            return value
    return None


def _images_in(conversation: Sequence[Message]) -> list[Image.Image]:
    out = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            out += [
                p["image"]
                for p in content
                if p.get("type") == "image" and isinstance(p.get("image"), Image.Image)
            ]
    return out


def _strip_images(conversation: Sequence[Message]) -> list[Message]:
    # The template only needs the slots; the PIL objects go to the processor separately.
    out = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            content = [{"type": "image"} if p.get("type") == "image" else p for p in content]
        out.append({**message, "content": content})
    return out


def _set_adapter_base(adapter_dir: Path, base: Path) -> None:
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base)
    write_json(cfg, cfg_path, sort_keys=True)
