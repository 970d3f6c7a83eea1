"""Dataset rows -> Conversation: the canonical form every later stage consumes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import DataError

ROLES = ("system", "user", "assistant")
MEDIA_TAGS = {"image": "<image>", "video": "<video>", "audio": "<audio>"}
_TAG_RE = re.compile("(" + "|".join(map(re.escape, MEDIA_TAGS.values())) + ")")


@dataclass
class Conversation:
    """Messages with content as text or parts ({"type": "text"|"image"|...}), plus media in order."""

    messages: list[dict]
    images: list = field(default_factory=list)
    source: str | None = None  # file the row came from
    line: int | None = None  # 1-based line (jsonl) or row index (json)
    base_dir: str | None = None  # folder that relative media paths resolve against

    def error(self, problem: str, field: str | None = None, fix: str | None = None) -> DataError:
        return DataError(problem, source=self.source, line=self.line, field=field, fix=fix)

    @property
    def has_media(self) -> bool:
        return bool(self.images)


@dataclass
class TextSample:
    """A raw-text row for pre-training (`pt`)."""

    text: str
    source: str | None = None
    line: int | None = None


def parse_row(row, *, source=None, line=None, base_dir=None, system: str | None = None,
              need_reply: bool = True) -> Conversation:
    """Parse one conversation row; the error names file, line and field.

    ``need_reply=False`` accepts a conversation that ends with a user turn (a prompt to answer)."""
    where = dict(source=source, line=line)
    if not isinstance(row, dict):
        raise DataError(f"a row must be a JSON object, got {type(row).__name__}", **where)
    if "messages" not in row:
        raise DataError("row has no 'messages'", field="messages", **where,
                        fix='rows look like {"messages": [{"role": "user", "content": "..."}, ...]}')
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError("must be a non-empty list of {role, content} objects", field="messages", **where)
    images = row.get("images") or []
    if isinstance(images, str):
        images = [images]
    conv = Conversation(messages=[], images=list(images), source=source, line=line, base_dir=base_dir)
    parts_images = []
    for i, msg in enumerate(messages):
        conv.messages.append(_parse_message(msg, i, conv, parts_images))
    if parts_images:
        if images:
            raise conv.error("images are given both in content parts and in 'images'; use one of the two",
                             field="images")
        conv.images = parts_images
    if system is not None and conv.messages[0]["role"] != "system":
        conv.messages.insert(0, {"role": "system", "content": system})
    check_conversation(conv, need_reply=need_reply)
    return conv


def _parse_message(msg, i: int, conv: Conversation, parts_images: list) -> dict:
    fname = f"messages[{i}]"
    if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
        raise conv.error("each message needs 'role' and 'content'", field=fname)
    role, content = msg["role"], msg["content"]
    if role not in ROLES:
        raise conv.error(f"role {role!r} is not one of {', '.join(ROLES)}", field=f"{fname}.role")
    if isinstance(content, str):
        return {"role": role, "content": split_tags(content)}
    if not isinstance(content, list):
        raise conv.error("content must be a string or a list of parts", field=f"{fname}.content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            split = split_tags(part.get("text", "")) if isinstance(part.get("text", ""), str) else []
            parts.extend([{"type": "text", "text": split}] if isinstance(split, str) else split)
        elif kind in ("image", "image_url"):
            src = part.get("image") if kind == "image" else (part.get("image_url") or {}).get("url")
            if src is not None:
                parts_images.append(src)
            parts.append({"type": "image"})
        else:
            raise conv.error(f"unknown content part type {kind!r}", field=f"{fname}.content[{j}]")
    return {"role": role, "content": _merge_text(parts)}


def split_tags(text: str):
    """'<image>What is it?' -> parts [{image}, {text}]; plain text stays a string."""
    if not _TAG_RE.search(text):
        return text
    parts = []
    for piece in _TAG_RE.split(text):
        if piece == MEDIA_TAGS["image"]:
            parts.append({"type": "image"})
        elif piece in MEDIA_TAGS.values():
            raise DataError(f"{piece} is not supported by this version (images only)")
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _merge_text(parts: list[dict]):
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def count_images(messages) -> int:
    return sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image")


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p["type"] == "text")


def check_conversation(conv: Conversation, *, need_reply: bool = True) -> None:
    """Roles in order, non-empty replies, one image per <image> placeholder."""
    msgs = conv.messages
    start = 1 if msgs[0]["role"] == "system" else 0
    expected = "user"
    for i, m in enumerate(msgs[start:], start):
        if m["role"] != expected:
            raise conv.error(f"role {m['role']!r} where {expected!r} was expected (after an optional system "
                             "message, user and assistant alternate)", field=f"messages[{i}].role")
        if m["role"] == "assistant" and not text_of(m["content"]).strip():
            raise conv.error("the assistant reply is empty", field=f"messages[{i}].content",
                             fix="remove the row or write the reply")
        expected = "assistant" if expected == "user" else "user"
    if need_reply and msgs[-1]["role"] != "assistant":
        raise conv.error("the last message must be the assistant's reply", field=f"messages[{len(msgs) - 1}]")
    tags = count_images(msgs)
    if tags != len(conv.images):
        raise conv.error(f"'images' has {len(conv.images)} entries but the messages contain {tags} <image> "
                         "placeholders", field="images", fix="give one image per <image> tag, in order")


def parse_text_row(row, *, source=None, line=None) -> TextSample:
    """A pre-training row: {"text": "..."}."""
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise DataError("pre-training rows need a string 'text'", source=source, line=line, field="text")
    if not row["text"].strip():
        raise DataError("'text' is empty", source=source, line=line, field="text")
    return TextSample(text=row["text"], source=source, line=line)
