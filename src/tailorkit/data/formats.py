"""Dataset rows -> Conversation: the canonical form every later stage consumes.

The row layout is detected (`layouts.py`), media come as ``images``/``videos``/``audios`` lists matched
in order to ``<image>``/``<video>``/``<audio>`` tags, or as content parts. Preference rows carry a
``rejected`` conversation, KTO rows a boolean ``label``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import DataError
from .layouts import detect_layout, preference_of, to_messages
from .tools import parse_tool_calls, parse_tools, to_openai_messages

ROLES = ("system", "user", "assistant", "tool")
MEDIA_KINDS = ("image", "video", "audio")
MEDIA_TAGS = {kind: f"<{kind}>" for kind in MEDIA_KINDS}
_TAG_RE = re.compile("(" + "|".join(map(re.escape, MEDIA_TAGS.values())) + ")")
# content part type -> (media kind, how to read the source from the part)
_PART_KINDS = {
    "image": ("image", lambda p: p.get("image")),
    "image_url": ("image", lambda p: _url_of(p.get("image_url"))),
    "video": ("video", lambda p: p.get("video")),
    "video_url": ("video", lambda p: _url_of(p.get("video_url"))),
    "audio": ("audio", lambda p: p.get("audio")),
    "audio_url": ("audio", lambda p: _url_of(p.get("audio_url"))),
}


@dataclass
class Conversation:
    """Messages with content as text or parts ({"type": "text"|"image"|"video"|"audio"}), plus media in order."""

    messages: list[dict]
    images: list = field(default_factory=list)
    source: str | None = None  # file the row came from
    line: int | None = None  # 1-based line (jsonl, csv) or row index (json, parquet, datasets)
    base_dir: str | None = None  # folder that relative media paths resolve against
    videos: list = field(default_factory=list)  # a video is a file/URL or a list of frame images
    audios: list = field(default_factory=list)
    layout: str = "messages"  # the row layout it was read from
    rejected: list[dict] | None = None  # preference pair: the same prompt with the rejected reply
    label: bool | None = None  # KTO: whether the reply is desirable
    tools: list[dict] | None = None  # functions the assistant may call (rendered with the template's tools=)

    def error(self, problem: str, field: str | None = None, fix: str | None = None) -> DataError:
        return DataError(problem, source=self.source, line=self.line, field=field, fix=fix)

    def media(self, kind: str) -> list:
        return {"image": self.images, "video": self.videos, "audio": self.audios}[kind]

    @property
    def has_media(self) -> bool:
        return bool(self.images or self.videos or self.audios)


@dataclass
class TextSample:
    """A raw-text row for pre-training (`pt`)."""

    text: str
    source: str | None = None
    line: int | None = None


def parse_row(row, *, source=None, line=None, base_dir=None, system: str | None = None,
              need_reply: bool = True) -> Conversation:
    """Parse one conversation row of any layout; the error names file, line and field.

    ``need_reply=False`` accepts a conversation that ends with a user turn (a prompt to answer)."""
    try:
        return _parse_row(row, source, line, base_dir, system, need_reply)
    except DataError as e:
        if e.source is None:
            raise DataError(e.problem, source=source, line=line, field=e.field, fix=e.fix) from None
        raise


def _parse_row(row, source, line, base_dir, system, need_reply) -> Conversation:
    if not isinstance(row, dict):
        raise DataError(f"a row must be a JSON object, got {type(row).__name__}")
    layout = detect_layout(row)
    raw = to_openai_messages(to_messages(row, layout))
    conv = Conversation(messages=[], source=source, line=line, base_dir=base_dir, layout=layout)
    if row.get("tools") is not None:
        conv.tools = parse_tools(row["tools"])
    from_parts = {kind: [] for kind in MEDIA_KINDS}
    conv.messages = [_parse_message(msg, i, conv, from_parts) for i, msg in enumerate(raw)]
    for kind in MEDIA_KINDS:
        listed = _media_list(row.get(f"{kind}s"), f"{kind}s")
        if from_parts[kind] and listed:
            raise conv.error(f"{kind}s are given both in content parts and in '{kind}s'; use one of the two",
                             field=f"{kind}s")
        conv.media(kind).extend(from_parts[kind] or listed)
    if system is not None and conv.messages[0]["role"] != "system":
        conv.messages.insert(0, {"role": "system", "content": system})
    check_conversation(conv, need_reply=need_reply)
    rejected, conv.label = preference_of(row, raw)
    if rejected is not None:
        conv.rejected = _parse_rejected(rejected, conv, system)
    return conv


def _media_list(value, name: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        return [value]
    if not isinstance(value, list):
        raise DataError(f"must be a list of media (paths, URLs or data URIs), got {type(value).__name__}", field=name)
    return list(value)


def _url_of(value):
    return value.get("url") if isinstance(value, dict) else value


def _parse_message(msg, i: int, conv: Conversation, from_parts: dict, name: str = "messages") -> dict:
    fname = f"{name}[{i}]"
    if not isinstance(msg, dict) or "role" not in msg or ("content" not in msg and not msg.get("tool_calls")):
        raise conv.error("each message needs 'role' and 'content'", field=fname)
    role, content = msg["role"], msg.get("content")
    if role not in ROLES:
        raise conv.error(f"role {role!r} is not one of {', '.join(ROLES)} (or ms-swift's tool_call, tool_response)",
                         field=f"{fname}.role")
    if role == "tool" or (role == "assistant" and msg.get("tool_calls")):
        return _agent_message(msg, fname, conv)
    if isinstance(content, str):
        return {"role": role, "content": split_tags(content)}
    if not isinstance(content, list):
        raise conv.error("content must be a string or a list of parts", field=f"{fname}.content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text", ""), str):
            parts.extend(_as_parts(split_tags(part.get("text", ""))))
        elif kind in _PART_KINDS:
            media_kind, read = _PART_KINDS[kind]
            src = read(part)
            if src is not None:
                from_parts[media_kind].append(src)
            parts.append({"type": media_kind})
        else:
            raise conv.error(f"unknown content part type {kind!r}", field=f"{fname}.content[{j}]",
                             fix="parts are text, image, image_url, video, video_url, audio or audio_url")
    return {"role": role, "content": _merge_text(parts)}


def _agent_message(msg: dict, fname: str, conv: Conversation) -> dict:
    """A tool result or an assistant turn with tool calls: text only (no media tags are read inside them)."""
    content = msg.get("content")
    if content is None:
        content = ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        content = "".join(p.get("text", "") for p in content)
    if not isinstance(content, str):
        raise conv.error("must be a string (or text parts)", field=f"{fname}.content")
    if msg["role"] == "tool":
        return {"role": "tool", "content": content, **{k: msg[k] for k in ("tool_call_id", "name") if k in msg}}
    return {"role": "assistant", "content": content,
            "tool_calls": parse_tool_calls(msg["tool_calls"], f"{fname}.tool_calls")}


def split_tags(text: str):
    """'<image>What is it?' -> parts [{image}, {text}]; plain text stays a string."""
    if not _TAG_RE.search(text):
        return text
    parts = []
    for piece in _TAG_RE.split(text):
        if piece in MEDIA_TAGS.values():
            parts.append({"type": piece[1:-1]})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _as_parts(content) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _merge_text(parts: list[dict]):
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def count_media(messages, kind: str) -> int:
    """Number of ``kind`` placeholders (image / video / audio) in the messages."""
    return sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == kind)


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p["type"] == "text")


def check_conversation(conv: Conversation, *, need_reply: bool = True) -> None:
    """Roles in order, non-empty replies, one media item per placeholder tag of each kind."""
    check_roles(conv, conv.messages, need_reply=need_reply)
    for kind in MEDIA_KINDS:
        tags, given = count_media(conv.messages, kind), len(conv.media(kind))
        if tags != given:
            raise conv.error(f"'{kind}s' has {given} entries but the messages contain {tags} <{kind}> "
                             "placeholders", field=f"{kind}s", fix=f"give one {kind} per <{kind}> tag, in order")


def check_roles(conv: Conversation, msgs: list[dict], *, need_reply: bool = True, name: str = "messages") -> None:
    """After an optional system message, user and assistant alternate; an assistant turn with tool_calls is
    followed by one or more tool results, then the assistant again. Replies are not empty."""
    start = 1 if msgs[0]["role"] == "system" else 0
    if start == len(msgs):
        raise conv.error("there is no user message", field=name)
    expected = ("user",)
    for i, m in enumerate(msgs[start:], start):
        if m["role"] not in expected:
            raise conv.error(f"role {m['role']!r} where {' or '.join(map(repr, expected))} was expected (after an "
                             "optional system message, user and assistant alternate; tool results follow an "
                             "assistant's tool_calls)", field=f"{name}[{i}].role")
        calls = m.get("tool_calls")
        if m["role"] == "assistant" and not calls and not text_of(m["content"]).strip():
            raise conv.error("the assistant reply is empty", field=f"{name}[{i}].content",
                             fix="remove the row or write the reply")
        expected = {"user": ("assistant",), "tool": ("tool", "assistant")}.get(
            m["role"], ("tool",) if calls else ("user",))
    if need_reply and msgs[-1]["role"] != "assistant":
        raise conv.error("the last message must be the assistant's reply", field=f"{name}[{len(msgs) - 1}]")
    if not need_reply and msgs[-1].get("tool_calls"):
        raise conv.error("the conversation ends with tool calls; give their results (role tool) to continue",
                         field=f"{name}[{len(msgs) - 1}]")


def _parse_rejected(raw: list, conv: Conversation, system: str | None) -> list[dict]:
    """The rejected conversation: same prompt as the chosen one, a different non-empty reply."""
    ignored = {kind: [] for kind in MEDIA_KINDS}  # the prompt's media are the chosen conversation's
    msgs = [_parse_message(m, i, conv, ignored, name="rejected_messages") for i, m in enumerate(raw)]
    if system is not None and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    check_roles(conv, msgs, name="rejected_messages")
    if msgs[:-1] != conv.messages[:-1]:
        raise conv.error("the rejected conversation's prompt differs from the chosen one", field="rejected_messages",
                         fix="only the last assistant reply may differ between chosen and rejected")
    if msgs[-1] == conv.messages[-1]:
        raise conv.error("the rejected reply equals the chosen reply", field="rejected_response",
                         fix="a preference pair needs two different replies")
    return msgs


def parse_text_row(row, *, source=None, line=None) -> TextSample:
    """A pre-training row: {"text": "..."}."""
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise DataError("pre-training rows need a string 'text'", source=source, line=line, field="text")
    if not row["text"].strip():
        raise DataError("'text' is empty", source=source, line=line, field="text")
    return TextSample(text=row["text"], source=source, line=line)
