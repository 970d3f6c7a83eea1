"""Run ``trainer.train`` with crash safety around it: resume checks, atomic checkpoints, signals, alarms, summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import PartialState

from ..data.dataset import StreamingEncoded, StreamPosition
from ..data.fingerprint import data_fingerprint
from ..errors import ConfigError, TrainingStopped
from .alarms import AlarmCallback
from ..run_files import FINAL_DIR, LOG_FILE
from .callbacks import ProgressCallback
from .checkpoint import (CheckpointWriter, check_resume, last_checkpoint, read_stream_position,
                         resolve_resume, write_resume_info)
from .signals import StopOnSignal
from .summary import RunSummary, summarize


@dataclass
class Guards:
    resume: Path | None
    only_model: bool
    writer: CheckpointWriter
    stopper: StopOnSignal
    alarms: AlarmCallback
    stream: StreamingEncoded | None = None  # a streamed train set, whose position checkpoints record
    stream_resumed: bool = False  # the stream skips to the checkpoint's position itself

    @property
    def callbacks(self) -> list:
        return [self.stopper, self.alarms]  # alarms last: a fatal alarm overrides a signal's save request


def resume_point(cfg, out: Path) -> Path | None:
    """Resolve --resume_from_checkpoint and, unless --resume_only_model, refuse a changed config (before loading)."""
    resume = resolve_resume(cfg.train.resume_from_checkpoint, out, weights_only=cfg.train.resume_only_model)
    if resume is not None and not cfg.train.resume_only_model:
        check_resume(resume, cfg.flat(), fingerprint=None)
    elif cfg.train.resume_only_model and resume is None:
        raise ConfigError("--resume_only_model needs --resume_from_checkpoint (a checkpoint folder or 'last')")
    return resume


def make_guards(cfg, out: Path, resume: Path | None, train_set, write_config) -> Guards:
    """Check the encoded data against the resumed checkpoint and build the writer and callbacks.

    A streamed train set is not fingerprinted up front: checkpoints record its position (rows read and a
    digest of them) and a resume reads past those rows, refusing other content, without encoding them.
    """
    stream = train_set if isinstance(train_set, StreamingEncoded) else None
    fingerprint = data_fingerprint(train_set) if stream is None else None
    stream_resumed = False
    if resume is not None and not cfg.train.resume_only_model:
        check_resume(resume, cfg.flat(), fingerprint)
        position = read_stream_position(resume) if stream is not None else None
        if position is not None and cfg.data.dataloader_num_workers == 0 and PartialState().num_processes == 1:
            stream.resume_at(StreamPosition(**position))
            stream_resumed = True
        elif stream is not None:
            print(f"[tailorkit] {resume} holds no stream position usable here (dataloader workers, several "
                  "processes, or a stream read more than once): the trainer re-encodes the trained rows to skip them")

    def write_files(folder: Path) -> None:
        write_config(folder)
        position = stream.position() if stream is not None else None
        write_resume_info(folder, fingerprint, len(train_set) if stream is None else None,
                          asdict(position) if position is not None else None)

    writer = CheckpointWriter(out, cfg.train.save_total_limit, write_files)
    alarms = AlarmCallback(cfg.train.alarm_patience, cfg.train.strict_alarms, out / LOG_FILE,
                           check_grads=cfg.train.deepspeed is None)
    return Guards(resume, cfg.train.resume_only_model, writer, StopOnSignal(), alarms, stream, stream_resumed)


def train_guarded(trainer, guards: Guards, *, skipped: dict, save_final) -> tuple[Path, RunSummary]:
    """Train (resuming as asked), then publish ``checkpoint-final`` atomically and print the run summary.

    ``save_final(folder)`` writes the final weights. A signal or a fatal alarm raises TrainingStopped after
    the summary, naming the checkpoint to resume from.
    """
    trainer.batch_hooks.append(guards.alarms.observe_batch)
    if guards.stream is not None and trainer.accelerator.num_processes == 1:
        _track_stream(trainer, guards)
    guards.alarms.progress = next((cb for cb in trainer.callback_handler.callbacks
                                   if isinstance(cb, ProgressCallback)), None)
    if guards.resume is not None and guards.only_model:
        trainer._load_from_checkpoint(str(guards.resume))  # weights only: the base class loads full or adapter
        print(f"[tailorkit] starting a new run from the weights of {guards.resume}")
    full_resume = guards.resume if guards.resume is not None and not guards.only_model else None
    out = guards.writer.output_dir
    try:
        trainer.train(resume_from_checkpoint=str(full_resume) if full_resume else None)
    except Exception as e:
        guards.stopper.restore()
        _report(trainer, guards, f"failed: {type(e).__name__}", skipped, None)
        raise
    state = trainer.state
    stopped = None
    if guards.alarms.fatal is not None:
        stopped = f"stopped by alarm {guards.alarms.fatal.kind}"
    elif guards.stopper.received and state.global_step < state.max_steps:
        stopped = f"stopped by {guards.stopper.received}"
    final = None if stopped else guards.writer.publish(FINAL_DIR, save_final, point_last=False,
                                                        is_main=trainer.args.should_save,
                                                        barrier=trainer.accelerator.wait_for_everyone)
    summary = _report(trainer, guards, stopped or "completed", skipped, final)
    if stopped:
        last = last_checkpoint(out)
        fatal = guards.alarms.fatal
        where = f"continue from {last} with --resume_from_checkpoint last" if last else "no checkpoint was written"
        if fatal is not None and last:
            where = f"fix the cause, then {where} (add --resume_only_model if you change a setting)"
        reason = f": {fatal}" if fatal is not None else ""
        raise TrainingStopped(f"training {stopped} at step {state.global_step}{reason}; {where}")
    return final, summary


def _track_stream(trainer, guards: Guards) -> None:
    """Count the streamed samples trained on; on resume let the stream, not the trainer, skip the trained rows.

    The base class would skip by iterating the data loader, encoding every skipped row again. With the
    stream already past them, it must skip nothing (``ignore_data_skip``) and restore the RNG states where the
    interrupted run stood at that step: just before the first forward, after the data loader has started.
    """
    stream = guards.stream
    trainer.batch_hooks.append(lambda inputs, loss: stream.consume(len(inputs["input_ids"])))
    if guards.stream_resumed:
        trainer.args.ignore_data_skip = True
        trainer.restore_rng_at_first_batch = True


def _report(trainer, guards: Guards, status: str, skipped: dict, final: Path | None) -> RunSummary:
    out = guards.writer.output_dir
    summary = summarize(trainer, out, status=status, skipped=skipped, alarms=guards.alarms.summary(), final_dir=final)
    if trainer.args.should_save:
        summary.write(out)
        print(summary.text())
    return summary
