"""What keeps a run safe, built before its trainer: resume checks, atomic checkpoints, signals, alarms, stream position.

``resume_point`` runs before anything loads (a changed config is refused fast); ``make_guards`` runs once
the training data is encoded (it fingerprints it) and returns the ``Guards``: the callbacks and the
``TrainerHooks`` the recipe builds the Trainer with. ``train/recipe.fit`` trains under them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import PartialState

from ..config.train import SftConfig
from ..data.dataset import StreamingEncoded, StreamPosition
from ..data.fingerprint import data_fingerprint
from ..errors import ConfigError
from ..run_files import LOG_FILE
from .alarms import AlarmCallback
from .callbacks import ProgressCallback
from .checkpoint import CheckpointWriter, check_resume, read_stream_position, resolve_resume, write_resume_info
from .signals import StopOnSignal
from .trainer import TrainerHooks


@dataclass
class Guards:
    resume: Path | None  # the checkpoint to resume from (or to take the weights of, with only_model)
    only_model: bool  # --resume_only_model: a new run from the checkpoint's weights
    writer: CheckpointWriter
    stopper: StopOnSignal
    alarms: AlarmCallback
    progress: ProgressCallback  # the progress bar, whose title counts the alarms
    hooks: TrainerHooks

    @property
    def callbacks(self) -> list:
        return [self.stopper, self.alarms]  # alarms last: a fatal alarm overrides a signal's save request


def resume_point(cfg: SftConfig, out: Path) -> Path | None:
    """Resolve --resume_from_checkpoint and, unless --resume_only_model, refuse a changed config (before loading)."""
    resume = resolve_resume(cfg.train.resume_from_checkpoint, out, weights_only=cfg.train.resume_only_model)
    if resume is not None and not cfg.train.resume_only_model:
        check_resume(resume, cfg.flat(), fingerprint=None)
    elif cfg.train.resume_only_model and resume is None:
        raise ConfigError("--resume_only_model needs --resume_from_checkpoint (a checkpoint folder or 'last')")
    return resume


def make_guards(cfg: SftConfig, out: Path, resume: Path | None, train_set, write_config) -> Guards:
    """Check the encoded data against the resumed checkpoint and build the writer, callbacks and trainer hooks.

    A streamed train set is not fingerprinted up front: checkpoints record its position (rows read and a
    digest of them) and a resume reads past those rows, refusing other content, without encoding them.
    """
    stream = train_set if isinstance(train_set, StreamingEncoded) else None
    fingerprint = data_fingerprint(train_set) if stream is None else None
    stream_resumed = False
    if resume is not None and not cfg.train.resume_only_model:
        check_resume(resume, cfg.flat(), fingerprint)
        stream_resumed = stream is not None and _resume_stream(cfg, resume, stream)

    def write_files(folder: Path) -> None:
        write_config(folder)
        position = stream.position() if stream is not None else None
        write_resume_info(folder, fingerprint, len(train_set) if stream is None else None,
                          asdict(position) if position is not None else None)

    progress = ProgressCallback()
    alarms = AlarmCallback(cfg.train.alarm_patience, cfg.train.strict_alarms, out / LOG_FILE,
                           check_grads=cfg.dist.deepspeed is None, progress=progress)
    hooks = TrainerHooks(checkpoints=CheckpointWriter(out, cfg.train.save_total_limit, write_files),
                         after_batch=[alarms.observe_batch], restore_rng_at_first_batch=stream_resumed)
    if stream is not None and PartialState().num_processes == 1:
        # Count the streamed samples trained on: checkpoints record where they end in the stream.
        hooks.after_batch.append(lambda inputs, loss: stream.consume(len(inputs["input_ids"])))
    return Guards(resume, cfg.train.resume_only_model, hooks.checkpoints, StopOnSignal(), alarms, progress, hooks)


def _resume_stream(cfg: SftConfig, resume: Path, stream: StreamingEncoded) -> bool:
    """Let the stream, not the trainer, skip the trained rows; False where its position cannot be used here.

    The trainer would skip by iterating the data loader, encoding every skipped row again. With the stream
    already past them, the trainer must skip nothing (``ignore_data_skip``) and restore the RNG states at
    the first batch (``TrainerHooks.restore_rng_at_first_batch``).
    """
    position = read_stream_position(resume)
    if position is not None and cfg.data.dataloader_num_workers == 0 and PartialState().num_processes == 1:
        stream.resume_at(StreamPosition(**position))
        return True
    print(f"[tailorkit] {resume} holds no stream position usable here (dataloader workers, several "
          "processes, or a stream read more than once): the trainer re-encodes the trained rows to skip them")
    return False
