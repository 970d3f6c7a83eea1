"""Special tokens typed into text are refused, the same way in training data, `infer` and `deploy`.

A chat template wraps message text in the model's control tokens (``<|im_start|>``, ``<|image_pad|>`` ...).
Text that contains one of them would be tokenized as that control token: a user could close their turn
and write the assistant's, or add media placeholders with no media behind them. Escaping would change the
text the model sees, so such text is refused with an error that names the token (a DataError naming the
row and field; the server answers 400). Raw text that is the model's input as written (a completion
prompt) may contain control tokens, but not media placeholders, which need media attached.
"""

from __future__ import annotations

import re

from ..errors import DataError
from .formats import Conversation

_PATTERNS: dict[int, tuple[object, re.Pattern | None]] = {}  # id(tokenizer) -> (tokenizer, pattern)


def special_tokens(tokenizer) -> list[str]:
    """The tokenizer's special tokens: its named ones and every added token marked special."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or ())
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            found.add(getattr(token, "content", str(token)))
    return sorted(t for t in found if t)


def _pattern(tokenizer) -> re.Pattern | None:
    cached = _PATTERNS.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:  # the tokenizer is kept, so its id is not reused
        tokens = sorted(special_tokens(tokenizer), key=len, reverse=True)
        cached = (tokenizer, re.compile("|".join(map(re.escape, tokens))) if tokens else None)
        _PATTERNS[id(tokenizer)] = cached
    return cached[1]


def find_special_token(text: str, tokenizer) -> str | None:
    """The first special token of ``tokenizer`` that ``text`` contains, or None."""
    pattern = _pattern(tokenizer)
    match = pattern.search(text) if pattern is not None else None
    return match.group(0) if match else None


def check_conversation_text(conv: Conversation, processor) -> None:
    """Refuse message text that contains one of the model's special tokens (see the module docstring)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    for i, msg in enumerate(conv.messages):
        for text in _text_runs(msg["content"]):
            token = find_special_token(text, tokenizer)
            if token is not None:
                raise conv.error(f"the text contains {token!r}, a special token of this model's tokenizer; typed "
                                 "into a message it would act as a control token", field=f"messages[{i}].content",
                                 fix="remove it or write it differently (special tokens are refused, not escaped)")


def _text_runs(content) -> list[str]:
    """The message's text as the template prints it: adjacent text parts joined (a token may span two)."""
    if isinstance(content, str):
        return [content]
    runs, current = [], []
    for part in content:
        if part["type"] == "text":
            current.append(part.get("text", ""))
        elif current:
            runs.append("".join(current))
            current = []
    return runs + ["".join(current)] if current else runs


def media_placeholders(processor) -> list[str]:
    """The processor's media placeholder tokens (image, video, audio), which only media may bring in."""
    found = []
    for attr in ("image_token", "video_token", "audio_token"):
        value = getattr(processor, attr, None)
        if isinstance(value, str) and value:
            found.append(value)
    return found


def check_raw_prompt(prompt: str, processor, *, source: str | None = None, field: str = "prompt") -> None:
    """Refuse a raw prompt (tokenized as written) that contains a media placeholder token."""
    for token in media_placeholders(processor):
        if token in prompt:
            raise DataError(f"the prompt contains {token!r}, this model's media placeholder, but a raw prompt "
                            "carries no media", source=source, field=field,
                            fix="send images through chat messages instead")
