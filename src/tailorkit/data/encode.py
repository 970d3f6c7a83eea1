"""The one encoder: Conversation -> Encoded, for training, preference training, inference and serving.

It renders with the model's own chat template and runs the model's own processor (which expands
media placeholders). Supervised spans are found by rendering the prefix before each assistant
turn (with the generation prompt) and the conversation through that turn: the tokens between the
two are the reply. The prompt that inference builds is therefore, token for token, the training
sequence up to the first supervised token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import DataError, TooLongError
from .formats import Conversation, TextSample, count_media
from .media import at_rate, load_audio, load_image, load_video
from .special_tokens import check_conversation_text
from .tools import renders_tools

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    media: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, image_grid_thw ... (cat over dim 0)
    token_fields: dict[str, list[int]] = field(default_factory=dict)  # per-token extras, e.g. mm_token_type_ids

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
    where = dict(source=conv.source, line=conv.line)
    for kind, owner in (("image", "image_processor"), ("video", "video_processor"), ("audio", "feature_extractor")):
        if conv.media(kind) and _part(processor, owner) is None:
            raise conv.error(f"the row has {kind}s but this model's processor has no {owner}", field=f"{kind}s",
                             fix=f"use a model that takes {kind}s or remove them from the data")
    budget = video_budget(processor)
    rate = getattr(_part(processor, "feature_extractor"), "sampling_rate", None)
    return {"image": _images_of(conv),
            "video": [load_video(src, conv.base_dir, **budget, **where) for src in conv.videos],
            "audio": [at_rate(*load_audio(src, conv.base_dir, **where), rate) for src in conv.audios]}


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


def _run(processor, text: str, media: dict[str, list], messages: list | None = None) -> dict:
    """run_processor with the media of the first ``messages`` (all media when None)."""
    n = {k: len(v) if messages is None else count_media(messages, k) for k, v in media.items()}
    return run_processor(processor, text, media["image"][: n["image"]], media["video"][: n["video"]],
                         media["audio"][: n["audio"]])


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
    check_conversation_text(conv, processor)
    images = _media_of(conv, processor)
    full = _run(processor, render_conversation(processor, conv, conv.messages, False), images)
    ids = full["input_ids"][0].tolist()
    labels = [IGNORE] * len(ids)
    tok = getattr(processor, "tokenizer", processor)
    for i, msg in enumerate(conv.messages):
        if msg["role"] != "assistant":
            continue
        start = _prefix_len(processor, conv, conv.messages[:i], True, images, ids)
        end = _prefix_len(processor, conv, conv.messages[: i + 1], False, images, ids)
        while end > start and not tok.decode([ids[end - 1]]).strip():  # trailing newline after end-of-turn
            end -= 1
        labels[start:end] = ids[start:end]
    for j, t in enumerate(ids):
        if t in media_token_ids(processor):
            labels[j] = IGNORE
    return check_length(_to_encoded(full, labels), max_length, conv.source, conv.line, "messages")


def check_length(enc: Encoded, max_length: int | None, source, line, field: str) -> Encoded:
    """``enc``, or TooLongError naming the row when it is longer than ``max_length`` (None: no limit)."""
    if max_length is not None and len(enc) > max_length:
        raise TooLongError(f"encoded length {len(enc)} exceeds max_length {max_length}", source=source, line=line,
                           field=field,
                           fix="raise --max_length, shorten the sample, or use --truncation_strategy delete/left/right")
    return enc


def _prefix_len(processor, conv, messages, gen_prompt: bool, images: list, full_ids: list[int]) -> int:
    text = render_conversation(processor, conv, messages, gen_prompt)
    ids = _run(processor, text, images, messages)["input_ids"][0].tolist()
    if full_ids[: len(ids)] != ids:
        raise conv.error("the chat template does not render this conversation's prefix as a prefix of the whole "
                         "conversation, so the reply cannot be located", field="messages",
                         fix="the model family needs a template patch")
    return len(ids)


def _to_encoded(out: dict, labels: list[int] | None) -> Encoded:
    ids = out.pop("input_ids")[0].tolist()
    out.pop("attention_mask", None)
    enc = Encoded(input_ids=ids, labels=labels if labels is not None else [IGNORE] * len(ids))
    for key, value in out.items():
        if not isinstance(value, torch.Tensor):
            continue
        if value.dim() == 2 and value.shape == (1, len(ids)):
            enc.token_fields[key] = value[0].tolist()
        else:
            enc.media[key] = value
    return enc


def encode_text(sample: TextSample, tokenizer, *, max_length: int | None = None) -> Encoded:
    """Pre-training: every token is supervised; the tokenizer's EOS closes the document."""
    ids = tokenizer(sample.text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return check_length(Encoded(input_ids=ids, labels=list(ids)), max_length, sample.source, sample.line, "text")
