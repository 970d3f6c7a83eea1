"""The one encoder: Conversation -> Encoded, for training, preference training, inference and serving.

It renders with the model's own chat template and runs the model's own processor (which expands
media placeholders), once per sample. Encoding has two halves:

- ``index``: token ids and labels without loading any medium. Each medium's placeholder is replaced by
  what the processor expands it into for the medium's shape, read from its file header
  (``data/expand.py``), and the text is tokenized. Supervised spans come from the text-only renderings of
  the prefix before each assistant turn (with the generation prompt) and of the conversation through that
  turn: the tokens between the two are the reply. Lengths are exact; nothing per sample but token ids.
- ``materialize``: the processor runs on the whole conversation with the decoded media (in a data loader
  worker, per batch) and its tokens are checked against the index; pixels and features join the sample.

The prompt that inference builds is therefore, token for token, the training sequence up to the first
supervised token.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from ..errors import DataError, TooLongError
from .expand import check_expansion, expander_for
from .formats import MEDIA_KINDS, Conversation, TextSample, count_media
from .media import at_rate, load_audio, load_image, load_video
from .shapes import Shape, audio_shape, image_shape, video_shape
from .special_tokens import check_conversation_text
from .tools import renders_tools

IGNORE = -100


@dataclass
class Pending:
    """What ``materialize`` runs the processor on: the rendered conversation and its media, not loaded yet."""

    text: str
    images: list = field(default_factory=list)
    videos: list = field(default_factory=list)
    audios: list = field(default_factory=list)
    base_dir: str | None = None
    source: str | None = None
    line: int | None = None
    keep: tuple[int, int] | None = None  # the slice of the processor's tokens a truncated sample kept


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    media: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, image_grid_thw ... (cat over dim 0)
    token_fields: dict[str, list[int]] = field(default_factory=dict)  # per-token extras, e.g. mm_token_type_ids
    pending: Pending | None = None  # set by ``index``: media and per-token fields still to load (``materialize``)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render(processor, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
    """The chat template's text; ``tools`` (the row's functions) go to the template's ``tools=``."""
    if hasattr(processor, "image_processor"):
        messages = as_content_parts(messages)
    extra = {"tools": tools} if tools else {}
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **extra)


def render_conversation(processor, conv: Conversation, messages: list[dict], add_generation_prompt: bool) -> str:
    """``render`` of (a prefix of) a conversation with its tools; a template that would drop them is an error."""
    if conv.tools or any(m["role"] == "tool" or m.get("tool_calls") for m in conv.messages):
        if not renders_tools(processor, render):
            raise conv.error("this model's chat template does not render tools, tool calls and tool results (it "
                             "would silently drop them)", field="tools",
                             fix="pass --agent_template hermes to render them as <tool_call>/<tool_response> text")
    return render(processor, messages, add_generation_prompt, tools=conv.tools)


def as_content_parts(messages: list[dict]) -> list[dict]:
    """String contents as [{"type": "text", ...}]: the form multimodal processors' templates expect
    (several, e.g. LLaVA's and Idefics3's, iterate over the parts and print nothing for a string)."""
    return [m if not isinstance(m["content"], str) else {**m, "content": [{"type": "text", "text": m["content"]}]}
            for m in messages]


def run_processor(processor, text: str, images: list, videos: list | None = None, audios: list | None = None) -> dict:
    """The processor's output for one rendered text (no special tokens added: the template has them).

    ``videos`` are decoded ``media.Video`` objects (already sampled: the processor must not sample again)."""
    media = {"images": images or None}
    for name, given, owner in (("videos", videos, "video_processor"), ("audio", audios, "feature_extractor")):
        if given and _part(processor, owner) is None:
            raise DataError(f"this model's processor has no {owner} but the sample has {name}")
        if given:
            media[name] = given
    if audios:  # the samples are at the extractor's rate (data/media.at_rate); saying so stops its guessing
        media["sampling_rate"] = _part(processor, "feature_extractor").sampling_rate
    if videos:
        media["videos"] = [v.frames for v in videos]
        media.update(video_metadata=[v.metadata() for v in videos], do_sample_frames=False)
    if hasattr(processor, "tokenizer") or len(media) > 1:  # a processor (its first parameter is images)
        return dict(processor(text=[text], **media, return_tensors="pt", add_special_tokens=False))
    if images:
        raise DataError("this model has no image processor but the sample has images")
    return dict(processor(text, return_tensors="pt", add_special_tokens=False))


def media_token_ids(processor) -> set[int]:
    """Ids of placeholder tokens that the processor expands for media; never supervised."""
    ids = set()
    for attr in ("image_token_id", "video_token_id", "audio_token_id"):
        value = getattr(processor, attr, None)
        if isinstance(value, int):
            ids.add(value)
    return ids


def _images_of(conv: Conversation) -> list:
    return [load_image(src, conv.base_dir, source=conv.source, line=conv.line) for src in conv.images]


def _media_of(conv: Conversation, processor) -> dict[str, list]:
    """Decoded media of a conversation by kind (image, video, audio), in placeholder order."""
    check_media_kinds(conv, processor)
    where = dict(source=conv.source, line=conv.line)
    budget = video_budget(processor)
    rate = getattr(_part(processor, "feature_extractor"), "sampling_rate", None)
    return {"image": _images_of(conv),
            "video": [load_video(src, conv.base_dir, **budget, **where) for src in conv.videos],
            "audio": [at_rate(*load_audio(src, conv.base_dir, **where), rate) for src in conv.audios]}


def check_media_kinds(conv: Conversation, processor) -> None:
    """Every kind of media the row has, the processor takes."""
    for kind, owner in (("image", "image_processor"), ("video", "video_processor"), ("audio", "feature_extractor")):
        if conv.media(kind) and _part(processor, owner) is None:
            raise conv.error(f"the row has {kind}s but this model's processor has no {owner}", field=f"{kind}s",
                             fix=f"use a model that takes {kind}s or remove them from the data")


def _part(processor, owner: str):
    """A processor's sub-processor; audio feature extractors go by two names (Phi-4's is ``audio_processor``)."""
    found = getattr(processor, owner, None)
    if found is None and owner == "feature_extractor":
        found = getattr(processor, "audio_processor", None)
    return found


def video_budget(processor) -> dict:
    """--fps / --video_max_frames as written into the processor's video processor (models/media_budget.py)."""
    proc = getattr(processor, "video_processor", None)
    return {"fps": getattr(proc, "fps", None), "max_frames": getattr(proc, "max_frames", None)}


def _run(processor, text: str, media: dict[str, list]) -> dict:
    """run_processor with media given by kind."""
    return run_processor(processor, text, media["image"], media["video"], media["audio"])


def encode_prompt(conv: Conversation, processor, images: list | None = None, *,
                  max_length: int | None = None) -> Encoded:
    """Tokens of the conversation's prompt: every message so far plus the assistant generation prompt."""
    check_conversation_text(conv, processor)
    media = _media_of(conv, processor) if images is None else {"image": images, "video": [], "audio": []}
    text = render_conversation(processor, conv, conv.messages, add_generation_prompt=True)
    out = _run(processor, text, media)
    return check_length(_to_encoded(out, labels=None), max_length, conv.source, conv.line, "messages")


def encode(conv: Conversation, processor, *, max_length: int | None = None) -> Encoded:
    """Encode a full conversation with labels on the assistant replies (and their end-of-turn token)."""
    return materialize(index(conv, processor, max_length=max_length), processor)


def index(conv: Conversation, processor, *, max_length: int | None = None) -> Encoded:
    """Token ids and labels of a conversation, media not loaded (their headers are read): see the module doc.

    The result's ``pending`` says what ``materialize`` loads; it is None when nothing needs loading.
    """
    return _index(conv, processor, max_length, generation_prompt=False)


def index_prompt(conv: Conversation, processor, *, max_length: int | None = None) -> Encoded:
    """``index`` of the conversation's prompt (the generation prompt added, nothing supervised): what
    ``materialize`` turns into ``encode_prompt``'s tokens."""
    return _index(conv, processor, max_length, generation_prompt=True)


def _index(conv: Conversation, processor, max_length: int | None, *, generation_prompt: bool) -> Encoded:
    check_conversation_text(conv, processor)
    exp = expander_for(processor, lambda msgs: render(processor, msgs, False), _run)
    shapes = media_shapes(conv, processor)
    full = render_conversation(processor, conv, conv.messages, generation_prompt)
    texts, turns = [exp.splice(full, shapes, conv)], []  # the conversation, then the prefixes around each reply
    for i, msg in enumerate(conv.messages):
        if msg["role"] == "assistant" and not generation_prompt:
            turns.append(i)
            for upto, prompt in ((conv.messages[:i], True), (conv.messages[: i + 1], False)):
                if len(upto) < len(conv.messages) or prompt:  # through the last turn: the conversation itself
                    texts.append(exp.splice(render_conversation(processor, conv, upto, prompt),
                                            _shapes_in(shapes, upto), conv))
    tok = getattr(processor, "tokenizer", processor)
    all_ids = tok(texts, add_special_tokens=False)["input_ids"]
    ids = list(all_ids[0])
    labels = [IGNORE] * len(ids)
    all_ids.append(ids)  # the last reply's end, where the conversation is its own prefix
    for k in range(len(turns)):
        start = _prefix_len(all_ids[1 + 2 * k], ids, conv)
        end = _prefix_len(all_ids[2 + 2 * k], ids, conv)
        while end > start and _blank_token(tok, ids[end - 1]):  # trailing newline after end-of-turn
            end -= 1
        labels[start:end] = ids[start:end]
    media_ids = media_token_ids(processor)
    labels = [IGNORE if t in media_ids else x for t, x in zip(ids, labels)]
    pending = None
    if shapes or exp.text_needs_processor():
        pending = Pending(full, list(conv.images), list(conv.videos), list(conv.audios), conv.base_dir,
                          conv.source, conv.line)
    return check_length(Encoded(input_ids=ids, labels=labels, pending=pending), max_length, conv.source, conv.line,
                        "messages")


def materialize(enc: Encoded, processor) -> Encoded:
    """``enc`` with its media and per-token fields: the processor runs once on the whole conversation with the
    decoded media; its tokens must be those ``index`` predicted (a DataError naming the row otherwise)."""
    p = enc.pending
    if p is None:
        return enc
    conv = Conversation(messages=[], images=p.images, videos=p.videos, audios=p.audios, source=p.source,
                        line=p.line, base_dir=p.base_dir)
    media = _media_of(conv, processor)
    out = run_processor(processor, p.text, media["image"], media["video"], media["audio"])
    ids = out["input_ids"][0].tolist()
    lo, hi = p.keep or (0, len(ids))
    input_ids = enc.input_ids
    if getattr(processor, "ids_from_media", False) and len(ids[lo:hi]) == len(input_ids) and all(
            a == b or label == IGNORE for a, b, label in zip(ids[lo:hi], input_ids, enc.labels)):
        input_ids = ids[lo:hi]  # unsupervised tokens named by the media themselves (Monkey's image paths)
    check_expansion(ids[lo:hi], input_ids, conv)
    full = _to_encoded(out, labels=None)
    return Encoded(input_ids=input_ids, labels=enc.labels, media=full.media,
                   token_fields={k: v[lo:hi] for k, v in full.token_fields.items()})


def media_shapes(conv: Conversation, processor) -> list[Shape]:
    """The shape of every medium of the conversation (images, then videos, then audio), from their headers."""
    check_media_kinds(conv, processor)
    where = dict(source=conv.source, line=conv.line)
    budget = video_budget(processor)
    rate = getattr(_part(processor, "feature_extractor"), "sampling_rate", None)
    return ([image_shape(src, conv.base_dir, **where) for src in conv.images]
            + [video_shape(src, conv.base_dir, **budget, **where) for src in conv.videos]
            + [audio_shape(src, conv.base_dir, rate, **where) for src in conv.audios])


def _shapes_in(shapes: list[Shape], messages: list[dict]) -> list[Shape]:
    """The shapes of the media placed in ``messages`` (the first ones of each kind)."""
    out = []
    for kind in MEDIA_KINDS:
        out += [s for s in shapes if s.kind == kind][: count_media(messages, kind)]
    return out


_BLANK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {token id: decodes to whitespace}


def _blank_token(tok, token_id: int) -> bool:
    """Whether a token decodes to whitespace only (remembered per tokenizer and token)."""
    known = _BLANK.setdefault(tok, {})
    if token_id not in known:
        known[token_id] = not tok.decode([token_id]).strip()
    return known[token_id]


def check_length(enc: Encoded, max_length: int | None, source, line, field: str) -> Encoded:
    """``enc``, or TooLongError naming the row when it is longer than ``max_length`` (None: no limit)."""
    if max_length is not None and len(enc) > max_length:
        raise TooLongError(f"encoded length {len(enc)} exceeds max_length {max_length}", source=source, line=line,
                           field=field,
                           fix="raise --max_length, shorten the sample, or use --truncation_strategy delete/left/right")
    return enc


def _prefix_len(prefix_ids: list[int], full_ids: list[int], conv: Conversation) -> int:
    n = len(prefix_ids)
    if full_ids[:n] != list(prefix_ids):
        raise conv.error("the chat template does not render this conversation's prefix as a prefix of the whole "
                         "conversation, so the reply cannot be located", field="messages",
                         fix="the model family needs a template patch")
    return n


def _to_encoded(out: dict, labels: list[int] | None) -> Encoded:
    ids = out.pop("input_ids")[0].tolist()
    out.pop("attention_mask", None)
    enc = Encoded(input_ids=ids, labels=labels if labels is not None else [IGNORE] * len(ids))
    for key, value in out.items():
        value = one_text_value(value)
        if not isinstance(value, torch.Tensor):
            continue
        if value.dim() == 2 and value.shape == (1, len(ids)):
            enc.token_fields[key] = value[0].tolist()
        else:
            enc.media[key] = value
    return enc


def one_text_value(value):
    """A processor output for one text as a tensor where it can be one.

    Remote-code processors (MiniCPM-V's) return nested per-text lists: [tensor] or [[slice, slice ...]]
    whose slices differ in their last dimension; those are zero-padded at the end and stacked (the model
    reads each slice's true size from its tgt_sizes). Anything else (sizes as tuples, None) is returned as is.
    """
    if not (isinstance(value, list) and len(value) == 1):
        return value
    inner = value[0]
    if isinstance(inner, list) and inner and all(isinstance(t, torch.Tensor) for t in inner):
        width = [max(t.shape[d] for t in inner) for d in range(inner[0].dim())]
        return torch.stack([torch.nn.functional.pad(t, [p for d in reversed(range(t.dim()))
                                                        for p in (0, width[d] - t.shape[d])]) for t in inner])
    return inner


def encode_text(sample: TextSample, tokenizer, *, max_length: int | None = None) -> Encoded:
    """Pre-training: every token is supervised; the tokenizer's EOS closes the document."""
    ids = tokenizer(sample.text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return check_length(Encoded(input_ids=ids, labels=list(ids)), max_length, sample.source, sample.line, "text")
