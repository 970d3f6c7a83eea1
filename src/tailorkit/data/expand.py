"""What a processor expands each medium's placeholder into, learned from the processor itself.

A multimodal processor replaces the placeholder text the chat template renders for a medium (Qwen's
``<|vision_start|><|image_pad|><|vision_end|>``, LLaVA's ``<image>\\n``, Gemma 3's ``<start_of_image>`` ...)
by a longer text whose tokens the model fills with features. That text depends on the medium's shape
only (``data/shapes.py``). An ``Expander`` asks the processor once per media kind which placeholder the
template renders, and once per distinct shape what the processor replaces it by, on a blank medium of that
shape. Splicing those texts into the rendered conversation and tokenizing gives, token for token, what the
processor gives with the real media, without decoding them: ``encode.materialize`` checks it on every sample
it loads. Nothing about a processor is re-implemented here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import weakref

from ..errors import DataError, ModelError
from .shapes import Shape, blank

_PROBE_TEXT = "x"


class Expander:
    """Placeholders and their expansions for one processor, probed on first use and remembered.

    ``probes`` counts the processor runs made (tests assert that a cached encoding makes none).
    """

    def __init__(self, processor, render_fn, run_fn):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self._render, self._run = render_fn, run_fn
        self._renderings: dict[str, str] = {}
        self._placeholder: dict[str, str] = {}
        self._expansion: dict[tuple[Shape, int], str] = {}
        self._numbered: dict[str, bool] = {}
        self._text_needs_processor: bool | None = None
        self.probes = 0

    def placeholder(self, kind: str) -> str:
        """The part of the template's rendering of a ``kind`` medium that the processor replaces."""
        if kind not in self._placeholder:
            rendering = self._rendering(kind)
            self._placeholder[kind] = rendering
            for shape in CANONICAL[kind]:  # the first shape the processor really expands shows the part it replaces
                expanded = self._expanded_text(rendering, shape)
                if expanded != rendering:
                    self._placeholder[kind] = _replaced_part(rendering, expanded, self.tokenizer)
                    break
        return self._placeholder[kind]

    def expansion(self, shape: Shape, ordinal: int = 0) -> str:
        """The text the processor puts in place of a sample's ``ordinal``-th placeholder of its kind, for a medium
        of ``shape`` (most processors expand every medium alike; MiniCPM-V numbers its images)."""
        if ordinal and not self.numbered(shape.kind):
            ordinal = 0
        if (shape, ordinal) not in self._expansion:
            rendering, core = self._rendering(shape.kind), self.placeholder(shape.kind)
            head, tail = rendering.split(core, 1)
            before = "".join(head + self.expansion(shape, j) + tail for j in range(ordinal))
            expanded = self._expanded_text(rendering * (ordinal + 1), [shape] * (ordinal + 1))
            if not (expanded.startswith(before + head) and expanded.endswith(tail)):
                raise ModelError(f"this processor expands the {shape.kind} placeholder {rendering!r} beyond "
                                 f"{core!r} (shape {shape.key}); tailorkit cannot count its tokens without decoding "
                                 "media")
            self._expansion[shape, ordinal] = expanded[len(before) + len(head): len(expanded) - len(tail)]
        return self._expansion[shape, ordinal]

    def numbered(self, kind: str) -> bool:
        """Whether a medium's expansion depends on its position among the sample's media of its kind (two media of
        one shape, probed once, expand differently)."""
        if kind not in self._numbered:
            self._numbered[kind] = False  # expansion(shape, 0) below needs no answer
            rendering, core = self._rendering(kind), self.placeholder(kind)
            for shape in CANONICAL[kind]:
                single = rendering.replace(core, self.expansion(shape), 1)
                if single != rendering:
                    self._numbered[kind] = self._expanded_text(rendering * 2, [shape, shape]) != single * 2
                    break
        return self._numbered[kind]

    def _rendering(self, kind: str) -> str:
        """The text the chat template renders for one ``kind`` content part (template output with and without it,
        compared)."""
        if kind not in self._renderings:
            with_part = self._render(_probe_messages(kind))
            without = self._render(_probe_messages(None))
            a = _common_prefix(with_part, without)
            b = _common_prefix(with_part[a:][::-1], without[a:][::-1])
            found = with_part[a:len(with_part) - b]
            if not found:
                raise ModelError(f"the chat template renders nothing for a {kind} content part, so this model "
                                 f"cannot be given {kind}s")
            self._renderings[kind] = found
        return self._renderings[kind]

    def _expanded_text(self, text: str, shape: Shape | list[Shape]) -> str:
        """The processor's own expansion of ``text`` holding one medium of ``shape`` (a blank one), or one of each
        of a list of shapes (all of one kind)."""
        shapes = shape if isinstance(shape, list) else [shape]
        media = {"image": [], "video": [], "audio": []}
        media[shapes[0].kind] = [blank(s) for s in shapes]
        recorder = _Recorder(self.tokenizer)
        probe = copy.copy(self.processor)
        probe.tokenizer = recorder  # the processor's expanded text, as it hands it to its tokenizer
        self.probes += 1
        ids = self._run(probe, text, media)["input_ids"][0].tolist()
        candidates = [*recorder.texts, self.tokenizer.decode(ids, skip_special_tokens=False,
                                                             clean_up_tokenization_spaces=False)]
        for candidate in candidates:
            if self.tokenizer(candidate, add_special_tokens=False)["input_ids"] == ids:
                return candidate
        raise ModelError(f"cannot tell which text this processor expands the {shapes[0].kind} placeholder {text!r} "
                         f"into (shape {shapes[0].key}); tailorkit needs it to count tokens without decoding media")

    def text_needs_processor(self) -> bool:
        """Whether a text-only sample's tokens or per-token fields differ between the processor and its tokenizer
        (then text samples are run through the processor too, when they are loaded)."""
        if self._text_needs_processor is None:
            if self.tokenizer is self.processor:
                self._text_needs_processor = False
            else:
                text = self._render(_probe_messages(None))
                out = self._run(self.processor, text, {"image": [], "video": [], "audio": []})
                ids = out.pop("input_ids")[0].tolist()
                out.pop("attention_mask", None)
                self.probes += 1
                self._text_needs_processor = bool(out) or ids != self.tokenizer(
                    text, add_special_tokens=False)["input_ids"]
        return self._text_needs_processor

    def splice(self, text: str, shapes: list[Shape], where) -> str:
        """``text`` with the placeholder of each medium (``shapes``, in placeholder order per kind) replaced by its
        expansion. ``where`` (a Conversation) names the row in errors."""
        by_kind: dict[str, list[Shape]] = {}
        for s in shapes:
            by_kind.setdefault(s.kind, []).append(s)
        hits = []
        for kind, kind_shapes in by_kind.items():
            found = _occurrences(text, self.placeholder(kind))
            if len(found) != len(kind_shapes):
                raise where.error(f"the chat template renders {len(found)} {kind} placeholders for this row, which "
                                  f"has {len(kind_shapes)} {kind}s", field=f"{kind}s",
                                  fix=f"do not write the model's own {kind} token in the text")
            hits += [(at, self.placeholder(kind), s, k) for k, (at, s) in enumerate(zip(found, kind_shapes))]
        out, pos = [], 0
        for at, placeholder, s, k in sorted(hits, key=lambda h: h[0]):
            out += [text[pos:at], self.expansion(s, k)]
            pos = at + len(placeholder)
        return "".join(out) + text[pos:]


class _Recorder:
    """Stands in for a processor's tokenizer in a probe: records the texts it is asked to tokenize."""

    def __init__(self, tokenizer):
        self._tokenizer, self.texts = tokenizer, []

    def __call__(self, *args, **kwargs):
        text = kwargs.get("text", args[0] if args else None)
        if isinstance(text, (list, tuple)) and len(text) == 1:
            text = text[0]
        if isinstance(text, str):
            self.texts.append(text)
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


# Shapes whose expansion shows which part of a placeholder a processor replaces (tried in order).
CANONICAL = {
    "image": [Shape("image", (448, 448)), Shape("image", (64, 48))],
    "video": [Shape("video", (4, 112, 112, 4, 2.0, (0, 1, 2, 3)))],
    "audio": [Shape("audio", (16000,))],
}


def _replaced_part(rendering: str, expanded: str, tok) -> str:
    """The smallest run of whole tokens of ``rendering`` that differs from ``expanded`` (where the processor
    only inserts, the token just before the insertion): the text a processor replaces."""
    a = _common_prefix(rendering, expanded)
    b = min(_common_prefix(rendering[::-1], expanded[::-1]), len(rendering) - a)
    end = len(rendering) - b
    bounds = _token_bounds(rendering, tok)
    lo = max((x for x in bounds if x <= a), default=0)
    hi = min((x for x in bounds if x >= end), default=len(rendering))
    if lo == hi:  # an insertion: anchor it on the token before it (or after it, at the very start)
        lo = max((x for x in bounds if x < a), default=lo)
        hi = hi if lo < hi else min((x for x in bounds if x > hi), default=len(rendering))
    return rendering[lo:hi]


def _token_bounds(text: str, tok) -> list[int]:
    """Character offsets where the tokens of ``text`` start and end."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bounds, pos = [0], 0
    for k in range(1, len(ids) + 1):
        try:
            pos = len(tok.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        except ValueError:  # a prefix some tokenizers refuse to decode (Qwen-VL's: inside <img>...</img>)
            continue
        bounds.append(pos)
    return sorted(set(bounds))


def _probe_messages(kind: str | None) -> list[dict]:
    parts = ([{"type": kind}] if kind else []) + [{"type": "text", "text": _PROBE_TEXT}]
    return [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": "y"}]}]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _occurrences(text: str, needle: str) -> list[int]:
    found, at = [], text.find(needle)
    while at != -1:
        found.append(at)
        at = text.find(needle, at + len(needle))
    return found


def settings_digest(processor) -> str:
    """A digest of what decides a processor's expansions: its sub-processors' settings and chat template."""
    h = hashlib.sha256()
    for name in ("image_processor", "video_processor", "feature_extractor", "audio_processor"):
        part = getattr(processor, name, None)
        if part is not None and hasattr(part, "to_dict"):
            h.update(name.encode() + json.dumps(part.to_dict(), sort_keys=True, default=str).encode())
    tok = getattr(processor, "tokenizer", processor)
    for template in (getattr(processor, "chat_template", None), getattr(tok, "chat_template", None)):
        h.update(json.dumps(template, sort_keys=True, default=str).encode())
    return h.hexdigest()


_EXPANDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def expander_for(processor, render_fn, run_fn) -> Expander:
    """The processor's Expander, made anew when its settings changed (a new pixel budget expands differently)."""
    digest = settings_digest(processor)
    known = _EXPANDERS.get(processor)
    if known is None or known[0] != digest:
        known = (digest, Expander(processor, render_fn, run_fn))
        _EXPANDERS[processor] = known
    return known[1]


def check_expansion(ids: list[int], expected: list[int], where) -> None:
    """Raise unless the processor's tokens of a loaded sample equal those indexed from its media shapes."""
    if ids != expected:
        raise DataError(f"the processor made {len(ids)} tokens of this row where its media headers predicted "
                        f"{len(expected)} (a media file changed since the data was encoded?)", source=where.source,
                        line=where.line, field="messages",
                        fix="run again with --load_from_cache_file false to encode the data anew")
