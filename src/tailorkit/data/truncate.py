"""--truncation_strategy left/right: cut an over-long sample without ever cutting into a media span.

A media span is a run of media placeholder tokens (as the processor expanded them) together with the
special tokens that wrap it (e.g. <|vision_start|> ... <|vision_end|>). A cut that would remove any
token of a span, or leave no supervised token, is refused: the caller deletes and counts the sample.
"""

from __future__ import annotations

import dataclasses

from .encode import IGNORE, Encoded, media_token_ids

UNCUTTABLE = "longer than max_length, and a cut would hit media or leave no reply"


def media_spans(ids: list[int], media_ids: set[int], wrapper_ids: set[int]) -> list[tuple[int, int]]:
    """[start, end) of each media span: a run of media tokens plus one adjacent wrapper token on each side."""
    spans, i = [], 0
    while i < len(ids):
        if ids[i] not in media_ids:
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] in media_ids:
            j += 1
        start = i - 1 if i > 0 and ids[i - 1] in wrapper_ids else i
        end = j + 1 if j < len(ids) and ids[j] in wrapper_ids else j
        spans.append((start, end))
        i = j
    return spans


def wrapper_token_ids(processor) -> set[int]:
    """Special tokens that may wrap a media run (the template's turn markers are never adjacent to media)."""
    tok = getattr(processor, "tokenizer", processor)
    return set(getattr(tok, "all_special_ids", [])) | set(getattr(tok, "added_tokens_decoder", {}) or {})


def truncate(enc: Encoded, max_length: int, side: str, processor) -> Encoded | None:
    """``enc`` cut to ``max_length`` tokens from the ``side`` ('left' or 'right'), or None if that cut is unsafe."""
    if side not in ("left", "right"):
        raise ValueError(side)
    n = len(enc)
    if n <= max_length:
        return enc
    keep = slice(0, max_length) if side == "right" else slice(n - max_length, n)
    for start, end in media_spans(enc.input_ids, media_token_ids(processor), wrapper_token_ids(processor)):
        if start < keep.start or end > keep.stop:
            return None
    labels = enc.labels[keep]
    if all(x == IGNORE for x in labels):
        return None
    pending = enc.pending
    if pending is not None:  # the processor's tokens that ``materialize`` keeps
        start = pending.keep[0] if pending.keep else 0
        pending = dataclasses.replace(pending, keep=(start + keep.start, start + keep.stop))
    return Encoded(input_ids=enc.input_ids[keep], labels=labels, media=enc.media,
                   token_fields={k: v[keep] for k, v in enc.token_fields.items()}, pending=pending)
