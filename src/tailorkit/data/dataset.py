"""Read dataset files into Conversations (cheap checks, before any model loads), then encode them."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DataError, TooLongError
from .encode import Encoded, encode, encode_text
from .formats import Conversation, TextSample, parse_row, parse_text_row
from .media import media_exists, resolve_path

MAX_LISTED_ERRORS = 10


def split_spec(spec: str) -> tuple[str, int | None]:
    """'data.jsonl#100' -> ('data.jsonl', 100)."""
    if "#" in spec:
        path, n = spec.rsplit("#", 1)
        if not n.isdigit() or int(n) == 0:
            raise DataError(f"'{spec}': the part after '#' must be a positive number of rows")
        return path, int(n)
    return spec, None


def iter_rows(path: str):
    """(line, row) for jsonl (1-based line numbers) and json lists (0-based row index)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset file {path} does not exist")
    if p.suffix == ".jsonl":
        with p.open(encoding="utf-8") as f:
            for n, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    yield n, json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", source=path, line=n,
                                    fix="each line must be one JSON object") from None
    elif p.suffix == ".json":
        try:
            rows = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg}", source=path, line=e.lineno) from None
        if not isinstance(rows, list):
            raise DataError("a .json dataset must be a list of rows", source=path)
        yield from enumerate(rows)
    else:
        raise DataError(f"unsupported dataset file type {p.suffix!r} for {path}; use .jsonl or .json")


def sample_rows(items: list, n: int | None, seed: int) -> list:
    """ms-swift's 'path#N': N rows, shuffled; repeats whole passes when N exceeds the size."""
    if n is None:
        return items
    rng = random.Random(seed)
    out = []
    while len(out) + len(items) <= n:
        out.extend(rng.sample(items, len(items)))
    out.extend(rng.sample(items, n - len(out)))
    return out


def load_conversations(specs: list[str], *, system: str | None = None, seed: int = 42,
                       check_media: bool = True, need_reply: bool = True) -> list[Conversation]:
    """Parse every row of every dataset; all errors found are reported together (up to 10)."""
    out, errors = [], []
    for spec in specs:
        path, n = split_spec(spec)
        base = str(Path(path).resolve().parent)
        convs = []
        for line, row in iter_rows(path):
            try:
                conv = parse_row(row, source=path, line=line, base_dir=base, system=system, need_reply=need_reply)
                if check_media:
                    for src in conv.images:
                        if not media_exists(src, base):
                            raise conv.error(f"image file {resolve_path(src, base)} does not exist", field="images")
                convs.append(conv)
            except DataError as e:
                errors.append(e)
        out.extend(sample_rows(convs, n, seed))
    _raise_collected(errors)
    return out


def load_text_samples(specs: list[str], *, seed: int = 42) -> list[TextSample]:
    out, errors = [], []
    for spec in specs:
        path, n = split_spec(spec)
        samples = []
        for line, row in iter_rows(path):
            try:
                samples.append(parse_text_row(row, source=path, line=line))
            except DataError as e:
                errors.append(e)
        out.extend(sample_rows(samples, n, seed))
    _raise_collected(errors)
    return out


def _raise_collected(errors: list[DataError]) -> None:
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    shown = "\n  ".join(str(e) for e in errors[:MAX_LISTED_ERRORS])
    more = f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
    raise DataError(f"{len(errors)} rows have problems:\n  {shown}{more}")


@dataclass
class EncodeReport:
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def summary(self) -> str:
        text = f"{self.kept} samples encoded"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in self.skipped.items())
        return text


def encode_all(items: list, processor, *, max_length: int, truncation: str, desc: str = "encoding",
               text: bool = False) -> tuple[list[Encoded], EncodeReport]:
    """Encode every sample; over-long ones raise or (truncation='delete') are skipped and counted."""
    tok = getattr(processor, "tokenizer", processor)
    report, out = EncodeReport(), []
    for item in tqdm(items, desc=desc, unit="sample", disable=len(items) < 50):
        try:
            enc = encode_text(item, tok, max_length=max_length) if text else encode(item, processor,
                                                                                     max_length=max_length)
        except TooLongError:
            if truncation != "delete":
                raise
            report.skipped["longer than max_length"] += 1
            continue
        out.append(enc)
    report.kept = len(out)
    return out, report
