"""Read dataset rows from files, `datasets` folders and hub ids, lazily, with the line each row came from.

Every reader yields ``(line, row)``: the 1-based line for jsonl and csv (the line a record starts on),
the 0-based row index for json lists, parquet files and `datasets` data. Rows from columnar sources
drop their ``None`` cells, so a column that only some rows use does not look present in the others.
A jsonl line that is not valid JSON is yielded as its ``DataError`` (in place of the row), so that a
reader can report it and go on to the next line.

Below the JSON level (`encodings.py`): gzip-compressed files are read whatever their name, a UTF-8 byte
order mark is dropped, text that is not UTF-8 is an error naming the line, a key given twice in one
object is an error (JSON parsers would keep the last one silently), and a file with no rows is an error.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from .encodings import decoded_lines, json_loads, read_text, suffix_of

FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")
# CSV cells of these columns hold JSON (lists of messages, media lists ...), decoded when they look like it.
_JSON_COLUMNS = ("messages", "conversations", "history", "images", "videos", "audios", "rejected_messages")


def split_spec(spec: str) -> tuple[str, int | None]:
    """'data.jsonl#100' -> ('data.jsonl', 100)."""
    if "#" in spec:
        path, n = spec.rsplit("#", 1)
        if not n.isdigit() or int(n) == 0:
            raise DataError(f"'{spec}': the part after '#' must be a positive number of rows")
        return path, int(n)
    return spec, None


def base_dir_of(path: str) -> str | None:
    """The folder relative media paths resolve against: the file's folder, the dataset folder, or none."""
    p = Path(path)
    if p.is_file():
        return str(p.resolve().parent)
    if p.is_dir():
        return str(p.resolve())
    return None


def iter_rows(path: str, *, streaming: bool = False) -> Iterator[tuple[int, object]]:
    """(line, row) pairs of one dataset: a file, a `datasets` folder, a local dataset folder or a hub id."""
    p = Path(path)
    if p.is_file():
        readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}
        suffix = suffix_of(p)
        if suffix not in readers:
            raise DataError(f"unsupported dataset file type {suffix!r} for {path}; use one of "
                            f"{', '.join(FILE_TYPES)} (optionally gzip-compressed, .gz), a folder saved by "
                            "`datasets` or a hub id")
        yield from _not_empty(readers[suffix](p), path)
    elif p.is_dir():
        yield from _datasets_rows(path, streaming=streaming)
    elif p.suffix in FILE_TYPES or p.is_absolute() or path.startswith("."):
        raise DataError(f"dataset file {path} does not exist")
    else:
        yield from _datasets_rows(path, streaming=streaming)


def _not_empty(rows: Iterator, path: str):
    """The rows, or an error naming the file when it holds none (so doctor and sft stop before any model loads)."""
    empty = True
    for item in rows:
        empty = False
        yield item
    if empty:
        raise DataError("the file holds no rows", source=path, line=1,
                        fix="write one row per line (jsonl), a list of rows (json) or a header and rows (csv)")


def _jsonl_rows(p: Path):
    for n, text in decoded_lines(p):
        if isinstance(text, DataError) or not text.strip():
            if isinstance(text, DataError):
                yield n, text
            continue
        try:
            row = json_loads(text)
        except json.JSONDecodeError as e:
            row = DataError(f"invalid JSON: {e.msg} (column {e.colno})", source=str(p), line=n,
                            fix="each line must be one JSON object")
        except DataError as e:  # a key given twice
            row = DataError(e.problem, source=str(p), line=n, field=e.field, fix=e.fix)
        yield n, row


def _json_rows(p: Path):
    try:
        rows = json_loads(read_text(p))
    except DataError as e:
        raise DataError(e.problem, source=str(p), line=e.line, field=e.field, fix=e.fix) from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", source=str(p), line=e.lineno,
                        fix="a .json dataset is one JSON list of row objects") from None
    if not isinstance(rows, list):
        raise DataError("a .json dataset must be a list of rows", source=str(p), fix="use .jsonl for one row per line")
    yield from enumerate(rows)


def _csv_rows(p: Path):
    def lines():
        for _, text in decoded_lines(p):
            if isinstance(text, DataError):  # csv records may span lines: the file cannot go on past it
                raise text
            yield text

    yield from _csv_records(p, csv.DictReader(lines()))


def _csv_records(p: Path, reader: csv.DictReader):
    start = 2
    for record in reader:
        row = {k: v for k, v in record.items() if k is not None and v not in (None, "")}
        for key in _JSON_COLUMNS:
            if isinstance(row.get(key), str) and row[key].lstrip()[:1] in ("[", "{"):
                try:
                    row[key] = json_loads(row[key])
                except json.JSONDecodeError as e:
                    raise DataError(f"the cell is not valid JSON: {e.msg}", source=str(p), line=start,
                                    field=key, fix="quote the JSON list inside the CSV cell") from None
                except DataError as e:
                    raise DataError(e.problem, source=str(p), line=start, field=key, fix=e.fix) from None
        if isinstance(row.get("label"), str):
            row["label"] = {"true": True, "false": False, "1": True, "0": False}.get(
                row["label"].strip().lower(), row["label"])
        yield start, row
        start = reader.line_num + 1


def _parquet_rows(p: Path):
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(p).iter_batches(batch_size=256):
        for row in batch.to_pylist():
            yield index, _drop_none(row)
            index += 1


def _datasets_rows(path: str, *, streaming: bool):
    """A folder written by ``save_to_disk`` (load_from_disk), else ``load_dataset`` (local folder or hub id)."""
    import datasets

    p = Path(path)
    try:
        if p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()):
            data = datasets.load_from_disk(str(p))
            if isinstance(data, datasets.DatasetDict):
                data = data["train"] if "train" in data else data[next(iter(data))]
            if streaming:
                data = data.to_iterable_dataset()
        else:
            name, _, subset = path.partition(":")
            data = datasets.load_dataset(name, subset or None, split="train", streaming=streaming)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise DataError(f"cannot load dataset {path!r}: {e}", source=path,
                        fix="give a data file, a folder saved by `datasets`, or a hub id (owner/name[:subset])") \
            from None
    for index, row in enumerate(data):
        yield index, _drop_none(row)


def _drop_none(row):
    return {k: v for k, v in row.items() if v is not None} if isinstance(row, dict) else row
