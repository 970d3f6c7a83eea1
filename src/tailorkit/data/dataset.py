"""Read dataset files into Conversations (cheap checks, before any model loads), then encode them."""

from __future__ import annotations

import functools
import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError, TooLongError
from .encode import Encoded, encode_text, index, materialize
from .fingerprint import feed_row
from .packing import pack_indices
from .formats import MEDIA_KINDS, Conversation, TextSample, parse_row, parse_text_row
from .media import missing_media
from .sources import base_dir_of, iter_rows, split_spec
from .truncate import UNCUTTABLE, truncate

MAX_LISTED_ERRORS = 10
PACK_BUFFER = 512  # samples a packed stream holds to choose its packs from


def sample_rows(items: list, n: int | None, seed: int) -> list:
    """ms-swift's 'path#N': N rows, shuffled; repeats whole passes when N exceeds the size."""
    if n is None or not items:
        return items
    rng = random.Random(seed)
    out = []
    while len(out) + len(items) <= n:
        out.extend(rng.sample(items, len(items)))
    out.extend(rng.sample(items, n - len(out)))
    return out


def load_conversations(specs: list[str], *, system: str | None = None, seed: int = 42,
                       check_media: bool = True, parse=parse_row, convs_of=lambda item: [item],
                       need_reply: bool = True, preprocess=None) -> list[Conversation]:
    """Parse every row of every dataset; all errors found are reported together (up to 10).

    ``parse`` (a row parser with parse_row's signature) and ``convs_of`` (the Conversations inside
    what it returns) let other layouts, such as preference pairs, share this loop. ``need_reply=False``
    accepts conversations that end with a user turn (prompts to answer). ``preprocess(row, source=, line=)``
    rewrites every raw row before it is parsed (--external_plugins preprocessors).
    """
    if not need_reply:
        parse = functools.partial(parse, need_reply=False)
    out, errors = [], []
    for spec in specs:
        convs, errs = scan_dataset(spec, system=system, check_media=check_media, parse=parse, convs_of=convs_of,
                                   preprocess=preprocess)
        errors += errs
        out.extend(sample_rows(convs, split_spec(spec)[1], seed))
    _raise_collected(errors)
    return out


def scan_dataset(spec: str, *, system: str | None = None, check_media: bool = True, parse=parse_row,
                 convs_of=lambda item: [item], preprocess=None) -> tuple[list[Conversation], list[DataError]]:
    """(conversations, row errors) of one dataset spec; a file-level error (unreadable file) is collected too."""
    convs, errors = [], []
    try:
        for conv in iter_conversations(spec, system=system, check_media=check_media, errors=errors, parse=parse,
                                       convs_of=convs_of, preprocess=preprocess):
            convs.append(conv)
    except DataError as e:
        errors.append(e)
    return convs, errors


def iter_conversations(spec: str, *, system: str | None = None, check_media: bool = True,
                       errors: list | None = None, streaming: bool = False, parse=parse_row,
                       convs_of=lambda item: [item], preprocess=None):
    """Conversations of one dataset spec, lazily; bad rows go to ``errors`` (or raise when it is None).

    Under ``streaming`` a 'path#N' spec yields the first N rows (a stream cannot be shuffled or repeated).
    ``parse`` (parse_row's signature) and ``convs_of`` (the Conversations inside what it returns) let
    other layouts, such as preference pairs, share this loop.
    """
    base = base_dir_of(split_spec(spec)[0])

    def parse_checked(row, path, line):
        item = parse(row, source=path, line=line, base_dir=base, system=system)
        if check_media:
            for conv in convs_of(item):
                check_media_files(conv)
        return item

    return _iter_parsed(spec, parse_checked, errors=errors, streaming=streaming, preprocess=preprocess)


def iter_text_samples(spec: str, *, errors: list | None = None, streaming: bool = False, preprocess=None):
    """Pre-training samples of one dataset spec, lazily; like `iter_conversations` for {"text": ...} rows."""
    return _iter_parsed(spec, lambda row, path, line: parse_text_row(row, source=path, line=line), errors=errors,
                        streaming=streaming, preprocess=preprocess)


def _iter_parsed(spec: str, parse, *, errors: list | None, streaming: bool, preprocess=None):
    path, n = split_spec(spec)
    count = 0
    for line, row in iter_rows(path, streaming=streaming):
        if streaming and n is not None and count >= n:
            return
        try:
            if isinstance(row, DataError):
                raise row
            if preprocess is not None:
                row = preprocess(row, source=path, line=line)
            item = parse(row, path, line)
        except DataError as e:
            if errors is None:
                raise
            errors.append(e)
            continue
        count += 1
        yield item


def check_media_files(conv: Conversation) -> None:
    """Every local media file of the conversation exists (cheap: nothing is decoded)."""
    for kind in MEDIA_KINDS:
        for src in conv.media(kind):
            path = missing_media(src, conv.base_dir)
            if path is not None:
                raise conv.error(f"{kind} file {path} does not exist", field=f"{kind}s",
                                 fix="fix the path; relative paths resolve against the dataset file's folder")


def load_text_samples(specs: list[str], *, seed: int = 42, preprocess=None) -> list[TextSample]:
    """Parse every pre-training row of every dataset; all errors found are reported together (up to 10)."""
    out, errors = [], []
    for spec in specs:
        try:
            samples = list(iter_text_samples(spec, errors=errors, preprocess=preprocess))
        except DataError as e:
            errors.append(e)
            continue
        out.extend(sample_rows(samples, split_spec(spec)[1], seed))
    _raise_collected(errors)
    return out


def _raise_collected(errors: list[DataError]) -> None:
    error = collected_error(errors)
    if error is not None:
        raise error


def collected_error(errors: list[DataError]) -> DataError | None:
    """One error reporting all of ``errors`` (up to 10 listed), or None when there are none."""
    if not errors:
        return None
    if len(errors) == 1:
        return errors[0]
    shown = "\n  ".join(str(e) for e in errors[:MAX_LISTED_ERRORS])
    more = f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
    return DataError(f"{len(errors)} rows have problems:\n  {shown}{more}")


def split_rows(items: list, ratio: float, seed: int) -> tuple[list, list]:
    """(rest, held out): a seeded ``ratio`` of the rows (at least one) held out for validation."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(items) * ratio)))
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [items[i] for i in sorted(val_idx)]


@dataclass
class EncodeReport:
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    truncated: int = 0

    def summary(self) -> str:
        text = f"{self.kept} samples encoded"
        if self.truncated:
            text += f" ({self.truncated} truncated to max_length)"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in self.skipped.items())
        return text


def encode_all(items: list, processor, *, max_length: int, truncation: str, desc: str = "encoding",
               encode_item=None) -> tuple[list, EncodeReport]:
    """Encode every sample; over-long ones raise, are skipped (delete), or cut (left/right) where that never cuts
    a media span; samples that cannot be cut safely are skipped. Skips and cuts are counted in the report.

    ``encode_item`` (``encode_one``'s signature; default ``encode_one``) encodes one item of another kind,
    such as a preference pair (data/preference.py), under the same strategy and into the same report.
    """
    encode_item = encode_item or encode_one
    report, out = EncodeReport(), []
    for item in tqdm(items, desc=desc, unit="sample", disable=len(items) < 50):
        enc = encode_item(item, processor, max_length=max_length, truncation=truncation, report=report)
        if enc is not None:
            out.append(enc)
    report.kept = len(out)
    return out, report


def encode_one(item, processor, *, max_length: int, truncation: str, report: EncodeReport, encoder=None,
               media: bool = True) -> Encoded | None:
    """One sample encoded under the truncation strategy, or None when it is skipped (counted in ``report``).

    ``encoder(item, processor, max_length=...)`` indexes the sample (``encode.index``'s contract: no media
    loaded) and raises TooLongError over the limit; the default indexes a Conversation (``index``) or a
    pre-training TextSample (``encode_text``). ``media=False`` returns the sample indexed, its media still
    to load (``encode.materialize``), as the encoded-data cache keeps it.
    """
    encoder = encoder or (_encode_text_sample if isinstance(item, TextSample) else index)
    limit = None if truncation in ("left", "right") else max_length
    try:
        enc = encoder(item, processor, max_length=limit)
    except TooLongError:
        if truncation != "delete":
            raise
        report.skipped["longer than max_length"] += 1
        return None
    if truncation in ("left", "right") and len(enc) > max_length:
        cut = truncate(enc, max_length, truncation, processor)
        if cut is None:
            report.skipped[UNCUTTABLE] += 1
            return None
        report.truncated += 1
        enc = cut
    return materialize(enc, processor) if media else enc


def _encode_text_sample(sample: TextSample, processor, *, max_length: int | None) -> Encoded:
    return encode_text(sample, getattr(processor, "tokenizer", processor), max_length=max_length)


@dataclass
class StreamPosition:
    """How far training has consumed a stream: rows read (kept or skipped), samples trained on, digest of the rows."""

    rows: int = 0
    samples: int = 0
    digest: str = field(default_factory=lambda: hashlib.sha256().hexdigest())


class StreamingEncoded(torch.utils.data.IterableDataset):
    """--streaming: rows are read, checked and encoded lazily as training consumes them.

    ``report`` counts skips and cuts so far (in this process: with --dataloader_num_workers the counts stay
    in the workers); a broken row raises when the stream reaches it.

    Resume: the trainer reports the samples it has trained on (``consume``); ``position()`` maps that count
    to the rows read so far and a digest of them, which a checkpoint records. ``resume_at(position)``
    makes the next pass read past those rows without encoding them, and refuse other content.
    Positions are known in the main process on the stream's first pass only (no dataloader workers).

    ``packing_length``: the stream yields packs (lists of samples) instead, made by best-fit-decreasing over
    a bounded buffer of ``buffer`` samples (indexed, so lengths are exact before any medium loads); a
    position is known where the samples trained on end a buffer.
    """

    def __init__(self, specs: list[str], processor, *, max_length: int, truncation: str,
                 system: str | None = None, text: bool = False, packing_length: int | None = None,
                 buffer: int = PACK_BUFFER, preprocess=None):
        self.specs, self.processor, self.system, self.text = specs, processor, system, text
        self.preprocess = preprocess
        self.kwargs = dict(max_length=max_length, truncation=truncation)
        self.packing_length, self.buffer = packing_length, buffer
        self.report = EncodeReport()
        self.start = StreamPosition()
        self._passes = 0
        self._consumed = 0
        self._ahead: dict[int, StreamPosition] = {}  # yielded, not yet trained on: samples -> position after it

    def items(self):
        for spec in self.specs:
            if self.text:
                yield from iter_text_samples(spec, streaming=True, preprocess=self.preprocess)
            else:
                yield from iter_conversations(spec, system=self.system, streaming=True, preprocess=self.preprocess)

    def resume_at(self, position: StreamPosition) -> None:
        """Start the next pass after ``position`` (read, digested and checked, never encoded)."""
        self.start, self._consumed = position, position.samples
        self._ahead = {position.samples: position}

    def consume(self, n: int) -> None:
        """The trainer has trained on ``n`` more samples of this stream."""
        self._consumed += n
        for k in [k for k in self._ahead if k < self._consumed]:
            del self._ahead[k]

    def position(self) -> StreamPosition | None:
        """Where the samples trained on so far end, or None where this process cannot know it."""
        return self._ahead.get(self._consumed)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()  # with dataloader workers, each encodes every k-th row
        self._passes += 1
        tracked = info is None and self._passes == 1
        start = self.start if tracked else StreamPosition()
        digest, kept, read, buffer, after = hashlib.sha256(), start.samples, 0, [], None
        packing = self.packing_length is not None
        for i, item in enumerate(self.items()):
            read = i + 1
            if info is not None and i % info.num_workers != info.id:
                continue
            if tracked:
                feed_row(digest, item)
            if i < start.rows:
                if i + 1 == start.rows:
                    self._check_skipped(digest.hexdigest())
                continue
            enc = encode_one(item, self.processor, report=self.report, media=not packing, **self.kwargs)
            if enc is None:
                continue
            self.report.kept += 1
            kept += 1
            after = StreamPosition(i + 1, kept, digest.hexdigest()) if tracked else None
            if not packing:
                if after is not None:
                    self._ahead[kept] = after
                yield enc
                continue
            buffer.append(enc)
            if len(buffer) == self.buffer:
                yield from self._packs(buffer, after)
                buffer = []
        if buffer:
            yield from self._packs(buffer, after)
        if read < start.rows:
            raise ConfigError(f"cannot resume the stream {', '.join(self.specs)}: it has fewer rows than the "
                              f"{start.rows} the checkpoint had read; give the same data, or pass "
                              "--resume_only_model to start a new run from the checkpoint's weights")

    def _packs(self, buffer: list[Encoded], after: StreamPosition | None):
        """The buffered samples in packs, media loaded; the position after the buffer goes with its last pack."""
        packs, _ = pack_indices([len(e) for e in buffer], self.packing_length, truncation="delete")
        for k, members in enumerate(packs):
            if k == len(packs) - 1 and after is not None:
                self._ahead[after.samples] = after
            yield [materialize(buffer[j], self.processor) for j in members]

    def _check_skipped(self, digest: str) -> None:
        if digest != self.start.digest:
            raise ConfigError(f"cannot resume the stream {', '.join(self.specs)}: its first {self.start.rows} rows "
                              "differ from those the checkpoint had trained on; give the same data, or pass "
                              "--resume_only_model to start a new run from the checkpoint's weights")
