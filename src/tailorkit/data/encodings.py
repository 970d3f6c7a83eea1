"""Dataset text below the JSON level: compression, byte order marks, encodings and duplicated keys.

Text files are read as UTF-8. A gzip stream is recognised by its magic bytes, whatever the file is
called (``data.jsonl`` that is really gzip, or ``data.jsonl.gz``). A byte order mark, as Windows editors
write it, is dropped. Bytes that are not UTF-8 (a Latin-1 or cp1252 export) are an error naming the line:
guessing the encoding would silently change the text when the guess is wrong. A JSON object with the same
key twice is an error too: JSON parsers keep the last one and the other is lost without notice.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_TEXT_TYPES = (".jsonl", ".json", ".csv")


def suffix_of(path: Path) -> str:
    """The dataset type of a file: its suffix, looking through a trailing .gz of a text type."""
    if path.suffix == ".gz" and Path(path.stem).suffix in _TEXT_TYPES:
        return Path(path.stem).suffix
    return path.suffix


def is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == _GZIP_MAGIC


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when it is a gzip stream."""
    return gzip.open(path, "rb") if is_gzip(path) else path.open("rb")


def not_utf8(err: UnicodeDecodeError, *, source: str, line: int, column: int | None = None) -> DataError:
    """The error for text that is not UTF-8, naming the first bad byte."""
    where = f" at column {column}" if column is not None else ""
    byte = err.object[err.start:err.start + 1].hex()
    return DataError(f"the file is not UTF-8 text: byte 0x{byte}{where} cannot be decoded", source=source, line=line,
                     fix="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`)")


def decoded_lines(path: Path) -> Iterator[tuple[int, str | DataError]]:
    """(1-based line, text) of a text file; a line that is not UTF-8 comes as its DataError instead."""
    n = 0
    try:
        with open_binary(path) as f:
            for n, raw in enumerate(f, 1):
                if n == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM):]
                try:
                    yield n, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield n, not_utf8(e, source=str(path), line=n, column=e.start + 1)
    except (gzip.BadGzipFile, EOFError) as e:
        raise bad_gzip(e, str(path), n + 1) from None


def bad_gzip(err: Exception, source: str, line: int) -> DataError:
    return DataError(f"the gzip stream is corrupt or cut short ({err or type(err).__name__})", source=source,
                     line=line, fix="compress the file again, or give it uncompressed")


def read_text(path: Path) -> str:
    """A whole text file (gzip and BOM handled); bytes that are not UTF-8 raise a DataError naming the line."""
    try:
        with open_binary(path) as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError) as e:
        raise bad_gzip(e, str(path), 1) from None
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(e, source=str(path), line=data[:e.start].count(b"\n") + 1) from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise DataError(f"the key {key!r} appears twice in one object; JSON keeps only the last one",
                            field=key, fix="keep one of the two")
        out[key] = value
    return out


def json_loads(text: str):
    """json.loads that refuses a key given twice in one object (DataError naming the key)."""
    return json.loads(text, object_pairs_hook=_unique_keys)
