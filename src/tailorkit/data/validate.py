"""Data checks for `tailorkit doctor` (everything, decoding media and encoding every row) and the cheap
preflight that a streaming `sft` runs before loading weights."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .dataset import iter_conversations, iter_text_samples, scan_dataset
from .encode import encode, media_token_ids
from .formats import MEDIA_KINDS, Conversation
from .truncate import truncate

PREFLIGHT_ROWS = 16


def preflight_stream(specs: list[str], *, system: str | None = None, text: bool = False,
                     rows: int = PREFLIGHT_ROWS, preprocess=None) -> None:
    """Read and check the first ``rows`` rows of each dataset (a stream is checked in full as it is read)."""
    for spec in specs:
        items = iter_text_samples(spec, streaming=True, preprocess=preprocess) if text else \
            iter_conversations(spec, system=system, streaming=True, preprocess=preprocess)
        for i, _item in enumerate(items):
            if i + 1 >= rows:
                break


@dataclass
class DataCheck:
    """What `doctor` found in the data: layouts, media, encoded lengths, errors and truncation outcomes."""

    rows_by_layout: Counter = field(default_factory=Counter)
    media_decoded: Counter = field(default_factory=Counter)  # kind -> items opened and decoded
    rows_with_media: int = 0
    lengths: list[int] = field(default_factory=list)
    longest: tuple[int, str] | None = None  # (length, "file:line")
    too_long: int = 0
    outcome: Counter = field(default_factory=Counter)  # what the truncation strategy does to too-long rows
    errors: list[DataError] = field(default_factory=list)
    max_media_tokens: int = 0

    @property
    def rows(self) -> int:
        return sum(self.rows_by_layout.values())


def check_data(specs: list[str], processor, *, max_length: int, truncation: str,
               system: str | None = None, preprocess=None) -> DataCheck:
    """Parse every row (after ``preprocess``), decode every media item and encode every conversation; nothing
    stops at the first error."""
    report = DataCheck()
    for spec in specs:
        convs, errors = scan_dataset(spec, system=system, preprocess=preprocess)
        report.errors += errors
        for conv in convs:
            report.rows_by_layout[conv.layout] += 1
            _check_one(conv, processor, report, max_length=max_length, truncation=truncation)
    return report


def _check_one(conv: Conversation, processor, report: DataCheck, *, max_length: int, truncation: str) -> None:
    try:
        enc = encode(conv, processor)
    except DataError as e:
        report.errors.append(e)
        return
    except Exception as e:  # noqa: BLE001 - the processor's own failure, reported with the row
        report.errors.append(conv.error(f"the processor failed on this row: {type(e).__name__}: {e}",
                                        field="messages"))
        return
    if conv.has_media:
        report.rows_with_media += 1
        for kind in MEDIA_KINDS:
            report.media_decoded[kind] += len(conv.media(kind))
    media_ids = media_token_ids(processor)
    report.max_media_tokens = max(report.max_media_tokens, sum(t in media_ids for t in enc.input_ids))
    n = len(enc)
    report.lengths.append(n)
    if report.longest is None or n > report.longest[0]:
        report.longest = (n, f"{conv.source}:{conv.line}")
    if n <= max_length:
        return
    report.too_long += 1
    if truncation in ("left", "right"):
        cut = truncate(enc, max_length, truncation, processor)
        report.outcome["cut to max_length" if cut is not None else "deleted (a cut would hit media or the reply)"] += 1
    else:
        report.outcome["deleted" if truncation == "delete" else "stop training (truncation_strategy raise)"] += 1


def text_histogram(lengths: list[int], *, max_length: int, bins: int = 10, width: int = 40) -> str:
    """An ASCII histogram of encoded lengths; the bin holding --max_length is marked."""
    if not lengths:
        return "(no encoded rows)"
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((x - lo) // step for x in lengths)
    top = max(counts.values())
    lines = []
    for b in range(-(-(hi - lo + 1) // step)):
        a, z = lo + b * step, lo + (b + 1) * step - 1
        mark = "  <- max_length" if a <= max_length <= z else ""
        bar = "#" * max(1 if counts[b] else 0, round(width * counts[b] / top))
        lines.append(f"{a:>7}-{z:<7} {counts[b]:>6} {bar}{mark}")
    return "\n".join(lines)


def save_histogram(lengths: list[int], path: str | Path, *, max_length: int) -> Path:
    """A PNG histogram of encoded lengths with --max_length drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(lengths, bins=min(50, max(1, len(set(lengths)))), color="tab:blue")
    if max_length <= 1.5 * max(lengths):
        ax.axvline(max_length, color="tab:red", linestyle="--", label=f"max_length={max_length}")
        ax.legend()
    else:  # drawing it would squash the bars into one corner
        ax.set_title(f"max_length={max_length} (beyond the longest row)")
    ax.set_xlabel("encoded length (tokens, media expanded)")
    ax.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
