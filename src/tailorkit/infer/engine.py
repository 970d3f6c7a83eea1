"""The engine interface and the transformers engine: batched, left-padded `generate` over encoder-built prompts.

Every backend takes `Request`s (a conversation, encoded by the one encoder, or a raw completion prompt)
and returns `Completion`s; `on_text(index, delta)` receives reply text as it is generated. Other
backends live in their own thin modules (`vllm_engine.py`) and are chosen in `infer/load.py`.

Rows of one batch are isolated: each keeps its own sampling settings and seed (`sampling.RowSampler`),
ends on its own (length, stop strings, cancellation by its client) and fails on its own (`Completion.error`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..data.collate import left_pad
from ..data.encode import IGNORE, Encoded, encode_prompt
from ..data.formats import Conversation
from ..data.special_tokens import check_raw_prompt
from ..errors import ConfigError, GenerationError
from .sampling import GenerationSettings, RowSampler

OnText = Callable[[int, str], None]


# transformers runs greedy with its own warpers off; RowSampler applies every row's settings itself
GENERATE_KWARGS = dict(do_sample=False, temperature=None, top_p=None, top_k=None, repetition_penalty=1.0)


@dataclass
class Request:
    """One reply to generate: from a conversation (ending with a user turn) or a raw text prompt."""

    conversation: Conversation | None = None
    prompt: str | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    adapters: tuple[str, ...] = ()  # names of loaded LoRA adapters active together; () = the base model
    encoded: Encoded | None = None  # the prompt, when encoded ahead (servers check its length first)
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def batch_key(self) -> tuple:
        """What rows of one batch must share: the adapters and the form of the encoded input (a raw prompt has
        no processor fields; media add tensors). Sampling settings, seeds and lengths are per row."""
        conv = self.conversation
        if conv is None:
            return (self.adapters, "prompt")
        return (self.adapters, "chat", bool(conv.images), bool(conv.videos), bool(conv.audios))


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string), "length"; "cancelled" / "error" are not replies
    error: str | None = None  # why this row failed (finish_reason "error"); its batch-mates are unaffected


class Engine(Protocol):
    """What `infer`, `deploy` and the batching queue need from a backend."""

    processor: object
    adapter_names: tuple[str, ...]
    max_context: int | None  # longest prompt + reply in tokens, when the model says

    def encode(self, request: Request) -> Encoded:
        """The request's prompt tokens (the one encoder for conversations)."""

    def generate_batch(self, requests: list[Request], on_text: OnText | None = None) -> list[Completion]:
        """Replies to requests that share `batch_key()`, in order."""


def encode_request(request: Request, processor) -> Encoded:
    """Prompt tokens: the one encoder for conversations, the bare tokenizer for raw completion prompts."""
    if request.encoded is not None:
        return request.encoded
    if request.conversation is not None:
        return encode_prompt(request.conversation, processor)
    check_raw_prompt(request.prompt, processor, source="request")
    ids = getattr(processor, "tokenizer", processor)(request.prompt)["input_ids"]
    return Encoded(input_ids=ids, labels=[IGNORE] * len(ids))


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters to hold back while streaming: a possible start of a stop string,
    or an incomplete multi-byte character (decoded as U+FFFD)."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    while n < len(text) and text[len(text) - n - 1] == "\ufffd":
        n += 1
    return n


class ReplyTracker:
    """Per-row reply state during one `generate`: ends rows on end-of-turn, stop strings, their own length
    limit, their client's cancellation and their own failure (``row_errors``, filled by the sampler), and
    hands new text to `on_text`. Used as a transformers stopping criterion, so it is the one place that
    decides where a reply ends; an ended row stops within the step."""

    def __init__(self, tokenizer, eos_ids: set[int], requests: list[Request], on_text: OnText | None,
                 row_errors: list[str | None] | None = None):
        self.tokenizer, self.eos_ids, self.on_text = tokenizer, eos_ids, on_text
        self.settings = [r.settings for r in requests]
        self.cancelled = [r.cancelled for r in requests]
        self.row_errors = row_errors or [None] * len(requests)
        n = len(requests)
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.text = [""] * n
        self.sent = [0] * n
        self.reason: list[str | None] = [None] * n
        # text is decoded every step only where it is watched (streaming, stop strings), else once at the end
        self.live = [on_text is not None or bool(s.stop) for s in self.settings]

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for i, tok in enumerate(last):
            if self.reason[i] is not None:
                continue
            if self.cancelled[i].is_set():
                self.reason[i] = "cancelled"
            elif self.row_errors[i] is not None:
                self.reason[i] = "error"
            else:
                self._step(i, tok)
        return torch.tensor([r is not None for r in self.reason], device=input_ids.device)

    def _step(self, i: int, tok: int) -> None:
        s = self.settings[i]
        self.tokens[i].append(tok)
        if tok in self.eos_ids:
            self.reason[i] = "stop"
        elif not self.live[i]:
            if len(self.tokens[i]) >= s.max_new_tokens:
                self.reason[i] = "length"
            return
        else:
            self.text[i] = self.tokenizer.decode(self.tokens[i], skip_special_tokens=True)
            cut = min((self.text[i].find(x) for x in s.stop if x in self.text[i]), default=-1)
            if cut >= 0:
                self.text[i], self.reason[i] = self.text[i][:cut], "stop"
            elif len(self.tokens[i]) >= s.max_new_tokens:
                self.reason[i] = "length"
        keep = 0 if self.reason[i] else held_back(self.text[i], s.stop)
        self._emit(i, len(self.text[i]) - keep)

    def _emit(self, i: int, upto: int) -> None:
        if upto > self.sent[i]:
            delta, self.sent[i] = self.text[i][self.sent[i]:upto], upto
            if self.on_text is not None:
                self.on_text(i, delta)

    def finish(self, prompt_lens: list[int]) -> list[Completion]:
        out = []
        for i, n_prompt in enumerate(prompt_lens):
            if self.reason[i] is None:  # generate stopped before the row ended (e.g. the model's max_length)
                self.reason[i] = "cancelled" if self.cancelled[i].is_set() else \
                    "error" if self.row_errors[i] is not None else "length"
            if self.reason[i] in ("cancelled", "error"):
                out.append(Completion(self.text[i], n_prompt, len(self.tokens[i]), self.reason[i], self.row_errors[i]))
                continue
            if not self.live[i]:
                reply = self.tokens[i][:-1] if self.tokens[i] and self.tokens[i][-1] in self.eos_ids else self.tokens[i]
                self.text[i] = self.tokenizer.decode(reply, skip_special_tokens=True)
            self._emit(i, len(self.text[i]))
            out.append(Completion(self.text[i], n_prompt, len(self.tokens[i]), self.reason[i]))
        return out


def single_adapter(names: tuple[str, ...], loaded: tuple[str, ...], backend: str) -> str | None:
    """The one adapter a request of a serving engine uses (None: the base model); engines that apply one LoRA
    adapter per request refuse several, and every engine refuses one it has not loaded."""
    if not names:
        return None
    if len(names) > 1:
        raise ConfigError(f"the {backend} backend applies one LoRA adapter per request; merge them or use "
                          "--infer_backend transformers to apply several together")
    if names[0] not in loaded:
        raise ConfigError(f"adapter {names[0]!r} is not loaded; loaded: {list(loaded)}")
    return names[0]


def request_images(request: Request) -> list:
    """The decoded images of a conversation request, in order (an unreadable one is a DataError naming the row)."""
    from ..data.media import load_image

    conv = request.conversation
    if conv is None:
        return []
    return [load_image(src, conv.base_dir, source=conv.source, line=conv.line) for src in conv.images]


def context_length(config) -> int | None:
    """The text model's max_position_embeddings, if the config has one."""
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    return {ids} if isinstance(ids, int) else set(ids or ())


class TransformersEngine:
    """Generation with a loaded model (plain or peft-wrapped, several named adapters) and its processor."""

    def __init__(self, model: torch.nn.Module, processor, max_batch_size: int = 16, *, as_loaded: bool = False):
        """``as_loaded``: generate with the model exactly as it is (its active adapters stay on and trainable),
        as evaluation during training needs; requests then name no adapters."""
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_batch_size = max_batch_size
        self.adapter_names = () if as_loaded else tuple(getattr(model, "peft_config", {}) or ())
        self.max_context = context_length(getattr(model, "config", None))

    def encode(self, request: Request) -> Encoded:
        return encode_request(request, self.processor)

    def using_adapters(self, names: tuple[str, ...]):
        """Context in which the model runs with exactly the named adapters (none: the base model)."""
        unknown = [n for n in names if n not in self.adapter_names]
        if unknown:
            raise ConfigError(f"adapter(s) {unknown} are not loaded; loaded: {list(self.adapter_names)}")
        if not self.adapter_names:
            return nullcontext()
        if not names:
            return self.model.disable_adapter()
        self.model.base_model.set_adapter(list(names), inference_mode=True)
        return nullcontext()

    @torch.no_grad()
    def generate_batch(self, requests: list[Request], on_text: OnText | None = None) -> list[Completion]:
        """Replies to requests sharing `batch_key()`, generated together in one left-padded batch."""
        if len({r.batch_key() for r in requests}) > 1:
            raise ValueError("generate_batch needs requests with one batch_key(); use generate_many")
        from transformers import LogitsProcessorList

        prompts = [self.encode(r) for r in requests]
        batch = left_pad(prompts, self.tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        eos_ids = eos_token_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        sampler = RowSampler([r.settings for r in requests], device, pad if pad is not None else min(eos_ids, default=0))
        tracker = ReplyTracker(self.tokenizer, eos_ids, requests, on_text, row_errors=sampler.errors)
        max_new = max(r.settings.max_new_tokens for r in requests)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.using_adapters(requests[0].adapters):
                self.model.generate(**batch, **GENERATE_KWARGS, max_new_tokens=max_new, pad_token_id=pad,
                                    logits_processor=LogitsProcessorList([sampler]), stopping_criteria=[tracker])
        finally:
            self.model.train(was_training)
        return tracker.finish([len(p) for p in prompts])

    def generate(self, convs: list[Conversation], settings: GenerationSettings | None = None,
                 batch_size: int | None = None) -> list[str]:
        """The reply to each conversation (its messages end with a user turn), stripped."""
        settings = settings or GenerationSettings()
        reqs = [Request(conversation=c, settings=settings, adapters=self.adapter_names) for c in convs]
        return [c.text.strip() for c in generate_many(self, reqs, batch_size or self.max_batch_size)]


def generate_many(engine: Engine, requests: list[Request], batch_size: int,
                  on_text: OnText | None = None, on_batch: Callable[[int], None] | None = None) -> list[Completion]:
    """Replies to any requests, in order: grouped by batch key, in batches of at most ``batch_size``."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.batch_key(), []).append(i)
    out: list[Completion | None] = [None] * len(requests)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start: start + batch_size]
            relay = None if on_text is None else (lambda j, d, chunk=chunk: on_text(chunk[j], d))
            for i, c in zip(chunk, engine.generate_batch([requests[i] for i in chunk], relay)):
                if c.error is not None:
                    raise GenerationError(f"request {i}: {c.error}")
                out[i] = c
            if on_batch is not None:
                on_batch(len(chunk))
    return out
