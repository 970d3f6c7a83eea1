"""Encode a run's datasets once, in parallel, into an on-disk cache that later runs start from.

``encoded_sets(request, rows, processor)`` returns the training and validation ``EncodedSet`` and the
end-of-preprocessing report. The cache key covers the bytes of every dataset file, the processor (its
tokenizer, chat template and media settings) and every setting the encoding depends on, so a second run
over the same data and processor opens the memory-mapped arrays and encodes nothing; a changed file,
processor, template or setting is encoded anew. Encoding a cold cache:

1. every row is parsed and checked (all errors reported together, before any weights load) and
   spilled to a scratch file, so that nothing per row stays in memory;
2. 'path#N' sampling, the validation split and KTO's companions are index arrays over the spilled rows;
3. rows are indexed (token ids and labels; media headers only, ``encode.index``) by ``--dataset_num_proc``
   worker processes and written, in order, into a ``data/store.py`` store.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import EncodeReport, collected_error, iter_conversations, iter_text_samples, sample_rows, split_rows
from .encoded_set import EncodedSet
from .expand import settings_digest
from .sources import split_spec
from .store import FORMAT, Store, StoreWriter

ENCODER_VERSION = 1  # bump when the encoder changes what it produces for the same input
CHUNK = 256  # rows per task handed to an encoding worker


@dataclass(frozen=True)
class RowKind:
    """How one training kind's rows are parsed and encoded (``train/kinds.py`` gives one per kind)."""

    # (row, *, source, line, base_dir, system) -> parsed item (a Conversation, pair, KTO sample, prompt)
    parse: Callable
    # (item, processor, *, max_length, truncation, report, media) -> encoded item, or None when skipped
    encode_item: Callable
    convs_of: Callable = field(default=lambda item: [item])  # the Conversations inside an item (media checks)
    pairing: Callable | None = None  # indexable rows -> the items to encode (KTO: each with its companion)
    text: bool = False  # rows are pre-training documents ({"text": ...})


@dataclass(frozen=True)
class EncodeRequest:
    """Everything the encoded data depends on besides the files' bytes and the processor."""

    kind: str
    specs: tuple[str, ...]
    val_specs: tuple[str, ...] = ()
    system: str | None = None
    seed: int = 42
    split_ratio: float = 0.0
    max_length: int = 2048
    truncation: str = "raise"
    num_proc: int = 1
    use_cache: bool = True
    cache_dir: str | None = None  # None: the user's cache folder (``default_cache_dir``)
    # --external_plugins row preprocessors, ``fn(row, source=, line=) -> row``, and a digest of the files
    # that define them (the key: what a preprocessor does is known only from its code)
    preprocess: Callable | None = None
    preprocess_digest: str | None = None


def default_cache_dir() -> Path:
    """``$HF_HOME/tailorkit/encoded``; HF_HOME defaults as in Hugging Face's libraries
    (``$XDG_CACHE_HOME/huggingface``, ``~/.cache/huggingface``)."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home) / "tailorkit" / "encoded"


# ---- the cache key -------------------------------------------------------------------------------------------

def file_digest(path: Path, h=None):
    """sha256 of a file's bytes (streamed)."""
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def data_digest(spec: str) -> str | None:
    """Digest of a dataset's content: a file's bytes, or every file of a folder; None for a hub id (not cached)."""
    p = Path(split_spec(spec)[0])
    if p.is_file():
        return file_digest(p).hexdigest()
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode())
            file_digest(f, h)
        return h.hexdigest()
    return None


def processor_digest(processor) -> str:
    """Digest of what a processor encodes with: tokenizer vocabulary and special tokens, chat template, media
    settings."""
    tok = getattr(processor, "tokenizer", processor)
    h = hashlib.sha256(settings_digest(processor).encode())
    h.update(type(processor).__name__.encode() + type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps([str(t) for t in getattr(tok, "all_special_tokens", [])]).encode())
    return h.hexdigest()


def cache_key(request: EncodeRequest, processor) -> str | None:
    """The key of the encoded data, or None when a dataset has no digest (a hub id)."""
    digests = [data_digest(s) for s in (*request.specs, *request.val_specs)]
    if any(d is None for d in digests):
        return None
    settings = {f.name: getattr(request, f.name) for f in fields(request)
                if f.name not in ("num_proc", "use_cache", "cache_dir", "preprocess")}
    payload = {"format": FORMAT, "encoder": ENCODER_VERSION, "settings": settings, "data": digests,
               "processor": processor_digest(processor)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ---- rows spilled to disk ------------------------------------------------------------------------------------

class RowSpill:
    """Parsed rows pickled into one scratch file in reading order; indexable (one offset per row in memory)."""

    def __init__(self, path: Path):
        self.path, self.offsets = path, array("q", [0])
        self._out = open(path, "wb")  # noqa: SIM115 - closed by ``close``
        self._fd: int | None = None

    def append(self, item) -> None:
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        self._out.write(data)
        self.offsets.append(self.offsets[-1] + len(data))

    def close(self) -> None:
        """Stop writing; rows can be read from now on."""
        self._out.close()
        self._fd = os.open(self.path, os.O_RDONLY)

    def discard(self) -> None:
        """Close and delete the scratch file."""
        self._out.close()
        if self._fd is not None:
            os.close(self._fd)
        self.path.unlink(missing_ok=True)

    def raw(self, i: int) -> bytes:
        return os.pread(self._fd, self.offsets[i + 1] - self.offsets[i], self.offsets[i])

    def __getitem__(self, i: int):
        return pickle.loads(self.raw(i))

    def __len__(self) -> int:
        return len(self.offsets) - 1


def spill_rows(specs: Iterable[str], kind: RowKind, spill: RowSpill, *, system: str | None,
               seed: int, preprocess: Callable | None = None) -> list[np.ndarray]:
    """Parse and check every row of every dataset into ``spill``; per dataset, the spilled rows it contributes
    (after 'path#N' sampling). All errors found are raised together (up to 10 listed)."""
    errors, orders = [], []
    for spec in specs:
        start = len(spill)
        try:
            rows = iter_text_samples(spec, errors=errors, preprocess=preprocess) if kind.text else \
                iter_conversations(spec, system=system, errors=errors, parse=kind.parse, convs_of=kind.convs_of,
                                   preprocess=preprocess)
            for item in rows:
                spill.append(item)
        except DataError as e:  # a file-level error (unreadable file) is collected with the row errors
            errors.append(e)
        n = split_spec(spec)[1]
        taken = range(start, len(spill))
        orders.append(np.asarray(sample_rows(list(taken), n, seed) if n else taken, dtype=np.int64))
    error = collected_error(errors)
    if error is not None:
        raise error
    return orders


def check_rows(specs: Iterable[str], kind: RowKind, *, system: str | None,
               preprocess: Callable | None = None) -> None:
    """Parse and check every row of ``specs`` (errors raised together), keeping nothing."""
    with tempfile.TemporaryDirectory(prefix="tailorkit-rows-") as scratch:
        spill = RowSpill(Path(scratch) / "rows.pkl")
        try:
            spill_rows(specs, kind, spill, system=system, seed=0, preprocess=preprocess)
        finally:
            spill.discard()


# ---- encoding ------------------------------------------------------------------------------------------------

_WORKER: dict = {}  # what a forked encoding worker encodes with (set before the pool forks)


def _encode_chunk(blobs: list[bytes]) -> tuple[list, EncodeReport]:
    """Index the pickled items of one chunk (in a worker, or in-process): (encoded items or None, report)."""
    kind, processor, limits = _WORKER["kind"], _WORKER["processor"], _WORKER["limits"]
    report, out = EncodeReport(), []
    for blob in blobs:
        out.append(kind.encode_item(pickle.loads(blob), processor, report=report, media=False, **limits))
    return out, report


def _chunks(items: Iterator, size: int) -> Iterator[list[bytes]]:
    chunk = []
    for item in items:
        chunk.append(item if isinstance(item, bytes) else pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_into(folder: Path, items: Iterator, kind: RowKind, processor, *, max_length: int, truncation: str,
                num_proc: int) -> EncodeReport:
    """Index ``items`` (parsed items, or their pickles) in order into a store at ``folder``; the report counts
    kept, cut and skipped samples."""
    _WORKER.update(kind=kind, processor=processor, limits=dict(max_length=max_length, truncation=truncation))
    writer, report = StoreWriter(folder), EncodeReport()
    pool = None
    if num_proc > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(num_proc)
    try:
        chunks = _chunks(items, CHUNK)
        results = pool.imap(_encode_chunk, chunks) if pool is not None else map(_encode_chunk, chunks)
        for encoded, part in results:
            for item in encoded:
                if item is not None:
                    writer.add(item)
                    report.kept += 1
            report.skipped.update(part.skipped)
            report.truncated += part.truncated
    finally:
        if pool is not None:
            pool.terminate()
        _WORKER.clear()
    writer.close({"report": {"kept": report.kept, "skipped": dict(report.skipped), "truncated": report.truncated}})
    return report


def _items(spill: RowSpill, order: np.ndarray, kind: RowKind) -> Iterator:
    if kind.pairing is not None:
        return iter(kind.pairing(_Rows(spill, order)))
    return (spill.raw(int(i)) for i in order)


class _Rows:
    """Spilled rows in a given order, indexable like a list (what a kind's ``pairing`` reads)."""

    def __init__(self, spill: RowSpill, order: np.ndarray):
        self.spill, self.order = spill, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        return self.spill[int(self.order[i])]


# ---- the cache -----------------------------------------------------------------------------------------------

def encoded_sets(request: EncodeRequest, kind: RowKind, processor) -> tuple[EncodedSet, EncodedSet, EncodeReport]:
    """(training set, validation set, report): from the cache when it holds this encoding, else encoded now (and
    cached unless ``request.use_cache`` is off or a dataset is a hub id). Validation skips are marked '(val)'."""
    key = cache_key(request, processor)
    root = Path(request.cache_dir) if request.cache_dir else default_cache_dir()
    folder = root / key if key is not None else None
    if folder is not None and request.use_cache and (folder / "done").is_file():
        print(f"[tailorkit] encoded data from the cache: {folder}")
    else:
        folder = _build(request, kind, processor, root, key)
    train, val = Store(folder / "train"), Store(folder / "val")
    report = _report(train.meta["report"])
    val_report = _report(val.meta["report"])
    report.skipped.update({f"{k} (val)": v for k, v in val_report.skipped.items()})
    fingerprint = key or _content_digest(folder)  # without a key: the encoded arrays themselves
    return (EncodedSet(train, processor, fingerprint + ":train"), EncodedSet(val, processor, fingerprint + ":val"),
            report)


def _content_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for part in ("train", "val"):
        for name in ("ids.bin", "labels.bin", "units.npy", "items.npy", "skeletons.bin"):
            file_digest(folder / part / name, h)
    return h.hexdigest()


def _report(saved: dict) -> EncodeReport:
    from collections import Counter

    return EncodeReport(kept=saved["kept"], skipped=Counter(saved["skipped"]), truncated=saved["truncated"])


def _build(request: EncodeRequest, kind: RowKind, processor, root: Path, key: str | None) -> Path:
    """Encode into a staging folder and move it into the cache (or keep it in a scratch folder, uncached)."""
    cached = key is not None
    base = root if cached else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
    t0 = time.perf_counter()
    try:
        rows = _encode_all(request, kind, processor, staging)
        (staging / "done").write_text("")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    print(f"[tailorkit] encoded {rows} rows in {seconds:.1f} s ({rows / max(seconds, 1e-9):.0f} rows/s, "
          f"--dataset_num_proc {request.num_proc})")
    if not cached:  # a hub dataset: encoded for this process only
        atexit.register(shutil.rmtree, str(staging), True)
        print("[tailorkit] a dataset has no file to digest (a hub id): its encoding is not cached")
        return staging
    final = root / key
    if (final / "done").is_file() and request.use_cache:  # another run cached the same encoding meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        return final
    if final.exists():  # --load_from_cache_file false: this encoding replaces it (runs reading it keep their files)
        shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    print(f"[tailorkit] encoded data cached at {final}")
    return final


def _encode_all(request: EncodeRequest, kind: RowKind, processor, staging: Path) -> int:
    spill = RowSpill(staging / "rows.pkl")
    try:
        rows = dict(system=request.system, seed=request.seed, preprocess=request.preprocess)
        train_orders = spill_rows(request.specs, kind, spill, **rows)
        val_orders = spill_rows(request.val_specs, kind, spill, **rows)
        spill.close()
        train = np.concatenate(train_orders) if train_orders else np.zeros(0, dtype=np.int64)
        val = np.concatenate(val_orders) if val_orders else np.zeros(0, dtype=np.int64)
        if not request.val_specs and request.split_ratio > 0:
            train, val = (np.asarray(x, dtype=np.int64) for x in split_rows(list(train), request.split_ratio,
                                                                              request.seed))
        limits = dict(max_length=request.max_length, truncation=request.truncation, num_proc=request.num_proc)
        encode_into(staging / "train", _items(spill, train, kind), kind, processor, **limits)
        encode_into(staging / "val", _items(spill, val, kind), kind, processor, **limits)
        return len(train) + len(val)
    finally:
        spill.discard()
