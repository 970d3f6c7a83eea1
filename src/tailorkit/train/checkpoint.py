"""Crash-safe checkpoints: staged writes renamed into place, a `last` pointer, rotation, resume checks.

transformers' Trainer already saves and restores weights, optimizer, scheduler, RNG states, grad-scaler
state and the data position (it skips the already-trained batches of the resumed epoch through the
sampler, so the skipped samples are never loaded or collated again). What it does not do is write
atomically: a crash mid-save leaves a half folder that `get_last_checkpoint` would pick. Here every
checkpoint is written into ``<output_dir>/.staging/`` and renamed into place only when complete, so every
``checkpoint-N`` folder is whole, and ``last`` is switched to it only after the rename.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from ..errors import CheckpointError, ConfigError
from ..run_files import CONFIG_FILE, LAST, RESUME_FILE, STAGING_DIR

_STEP = re.compile(r"^checkpoint-(\d+)$")

# Settings that may change between a run and its resume without changing the trained weights.
RESUME_FREE = frozenset({
    "output_dir", "resume_from_checkpoint", "resume_only_model", "logging_steps", "save_strategy", "save_steps",
    "save_total_limit", "report_to", "dataloader_num_workers", "eval_steps", "per_device_eval_batch_size",
    "val_dataset", "strict_alarms", "alarm_patience", "gradient_checkpointing", "gradient_checkpointing_kwargs",
    "eval_strategy", "eval_dataset", "eval_limit", "eval_max_new_tokens",  # greedy scoring draws no random numbers
    "ddp_backend", "ddp_timeout", "ddp_bucket_cap_mb", "ddp_find_unused_parameters", "ddp_broadcast_buffers",
})


class CheckpointWriter:
    """Publishes checkpoint folders atomically into ``output_dir`` and keeps ``last`` pointing at the newest.

    ``write_files(folder)`` adds our run files (resolved config, data fingerprint) to every checkpoint before
    it is published; ``save_total_limit`` is applied here and never removes the newest checkpoint, the one
    ``last`` points to, or the best one.
    """

    def __init__(self, output_dir: str | Path, save_total_limit: int | None = None,
                 write_files: Callable[[Path], None] | None = None):
        self.output_dir = Path(output_dir)
        self.save_total_limit = save_total_limit
        self.write_files = write_files
        self.staging = self.output_dir / STAGING_DIR

    def publish(self, name: str, write: Callable[[Path], None], point_last: bool = True, *, is_main: bool = True,
                barrier: Callable[[], None] | None = None) -> Path:
        """Run ``write(folder)`` into a staging folder, then rename it to ``output_dir/name``.

        Any failure (a full disk above all) removes the staging folder and raises CheckpointError; the
        previously published checkpoints and ``last`` are untouched. With several processes every one calls
        this (``barrier`` waits for all): each writes its share into the staging folder, the main one renames.
        """
        final = self.output_dir / name
        staged = self.staging / name
        wait = barrier or (lambda: None)
        if is_main:
            shutil.rmtree(self.staging, ignore_errors=True)
            staged.mkdir(parents=True)
        wait()
        try:
            write(staged)
            wait()
            if is_main:
                if self.write_files is not None:
                    self.write_files(staged)
                _fsync_tree(staged)
        except Exception as e:  # OSError, torch's RuntimeError, SafetensorError...: all leave the staging folder
            if is_main:
                shutil.rmtree(self.staging, ignore_errors=True)
            raise CheckpointError(self._failure_message(name, e)) from e
        if is_main:
            self._replace(staged, final)
            shutil.rmtree(self.staging, ignore_errors=True)
            if point_last:
                self.point_last(final)
        wait()
        return final

    def rotate(self, best: str | Path | None = None) -> list[Path]:
        """Apply ``save_total_limit``, keeping the newest checkpoint, ``last``'s target and ``best``."""
        return rotate(self.output_dir, self.save_total_limit, keep={Path(best)} if best else set())

    def point_last(self, folder: Path) -> None:
        """Switch ``output_dir/last`` to ``folder`` in one atomic rename."""
        link, tmp = self.output_dir / LAST, self.output_dir / f".{LAST}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(folder.name, tmp)
        os.replace(tmp, link)
        _fsync_dir(self.output_dir)

    def _replace(self, staged: Path, final: Path) -> None:
        # A checkpoint of the same step exists when a resume redoes steps after a crash that struck between
        # the rename and the pointer switch; both hold the same state, the new one replaces it.
        if final.exists():
            old = self.staging / f"{final.name}.replaced"
            os.rename(final, old)
        os.rename(staged, final)
        _fsync_dir(self.output_dir)

    def _failure_message(self, name: str, e: BaseException) -> str:
        free = shutil.disk_usage(self.output_dir).free
        full = getattr(e, "errno", None) == errno.ENOSPC or "space" in str(e).lower() or free < 1 << 20
        last = last_checkpoint(self.output_dir)
        kept = f"the previous checkpoint {last} is intact" if last else "no earlier checkpoint exists"
        cause = (f"the disk holding {self.output_dir} is full ({free / 2**20:.0f} MiB free)" if full
                 else f"{type(e).__name__}: {e}")
        return (f"could not write checkpoint {name} into {self.output_dir}: {cause}; {kept}. Free space (or lower "
                "--save_total_limit, or choose --output_dir on a larger disk), then resume with "
                "--resume_from_checkpoint last")


def checkpoint_step(path: Path) -> int | None:
    m = _STEP.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Published ``checkpoint-N`` folders, oldest step first (staging folders are never listed)."""
    found = [p for p in Path(output_dir).iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The folder ``output_dir/last`` points to, or None."""
    link = Path(output_dir) / LAST
    if not link.is_symlink():
        return None
    target = link.resolve()
    return target if target.is_dir() else None


def rotate(output_dir: Path, limit: int | None, keep: set) -> list[Path]:
    """Delete the oldest checkpoints beyond ``limit``; never the newest, ``last``'s target or those in ``keep``."""
    if not limit or limit <= 0:
        return []
    ckpts = list_checkpoints(output_dir)
    protected = {p.resolve() for p in keep if p is not None}
    if ckpts:
        protected.add(ckpts[-1].resolve())
    last = last_checkpoint(output_dir)
    if last is not None:
        protected.add(last)
    removed = []
    excess = len(ckpts) - max(limit, len(protected))
    for p in ckpts:
        if excess <= 0:
            break
        if p.resolve() not in protected:
            shutil.rmtree(p)
            removed.append(p)
            excess -= 1
    return removed


def resolve_resume(value: str | None, output_dir: str | Path, weights_only: bool = False) -> Path | None:
    """The checkpoint folder that ``--resume_from_checkpoint`` names ('last' or a folder), checked to be whole.

    ``weights_only`` (--resume_only_model) also accepts a folder of weights alone, such as checkpoint-final.
    """
    if not value:
        return None
    if value == LAST:
        found = last_checkpoint(output_dir)
        if found is None:
            raise ConfigError(f"--resume_from_checkpoint last: {output_dir} holds no complete checkpoint "
                              f"('{LAST}' is missing); name a checkpoint folder, or start over in a new "
                              "--output_dir")
        return found
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"--resume_from_checkpoint {value}: no such folder; give a checkpoint-N folder or 'last'")
    if path.name == STAGING_DIR or path.parent.name == STAGING_DIR:
        raise ConfigError(f"--resume_from_checkpoint {value}: this is an unfinished save; use 'last'")
    if not weights_only and not (path / "trainer_state.json").is_file():
        raise ConfigError(f"--resume_from_checkpoint {value}: not a training checkpoint (no trainer_state.json); "
                          "checkpoint-final holds only weights: use --resume_only_model to start from them")
    return path.resolve()


def write_resume_info(folder: Path, fingerprint: str | None, num_samples: int | None,
                      stream: dict | None = None) -> None:
    """Record what the run had trained on: the encoded data's fingerprint, or a stream's position (rows read)."""
    (Path(folder) / RESUME_FILE).write_text(json.dumps({"data_fingerprint": fingerprint,
                                                         "train_samples": num_samples, "stream": stream}))


def read_stream_position(ckpt: Path) -> dict | None:
    """The stream position a checkpoint recorded (rows, samples, digest), or None when it has none."""
    info_file = Path(ckpt) / RESUME_FILE
    return json.loads(info_file.read_text()).get("stream") if info_file.is_file() else None


def check_resume(ckpt: Path, flat: dict, fingerprint: str | None) -> None:
    """Refuse to resume when the config or the encoded data differ from the checkpoint's, listing every difference.

    ``fingerprint`` None checks the settings only (done before the model loads, so a refusal comes fast).
    """
    cfg_file = ckpt / CONFIG_FILE
    if not cfg_file.is_file():
        raise ConfigError(f"{ckpt}: no {CONFIG_FILE}, so the run's settings cannot be checked; pass "
                          "--resume_only_model to start a fresh run from these weights")
    saved = yaml.safe_load(cfg_file.read_text()) or {}
    diffs = [f"  {k}: checkpoint has {saved.get(k, '<unset>')!r}, now {flat.get(k, '<unset>')!r}"
             for k in sorted(set(saved) | set(flat)) if k not in RESUME_FREE and saved.get(k) != flat.get(k)]
    info_file = ckpt / RESUME_FILE
    if fingerprint is not None and info_file.is_file():
        info = json.loads(info_file.read_text())
        if info.get("data_fingerprint") != fingerprint:
            diffs.append(f"  training data: the encoded samples differ from the checkpoint's "
                         f"({info.get('train_samples')} samples then); the files, their order or the tokenizer changed")
    if diffs:
        raise ConfigError(f"cannot resume from {ckpt}: these settings differ from the run that wrote it and would "
                          "change the result:\n" + "\n".join(diffs) + "\nrestore them, or pass --resume_only_model "
                          "to start a new run from the checkpoint's weights")


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` so a power loss cannot leave a renamed but empty file."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
