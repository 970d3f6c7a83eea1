"""One recipe for every training kind: ``prepare(cfg, kind) -> Run``, then ``fit(run) -> TrainResult``.

``prepare`` checks what can be checked before weights load (output folder, resume point, batching flags,
every row), loads the model (and a reference policy where the kind has one), applies the tuner plan,
encodes the rows with the one encoder (printing the end-of-preprocessing counts), builds the guards and
then the Trainer with everything it needs. ``fit`` trains under the guards, publishes ``checkpoint-final``
atomically and prints the run summary. What differs between sft, pt, dpo ... grpo is in train/kinds.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import PartialState

from ..config.train import SftConfig
from ..data.dataset import EncodeReport, StreamingEncoded
from ..data.validate import preflight_stream
from ..distributed.engines import check_distributed, explain_collective_error, shards_weights
from ..distributed.fsdp import fsdp_by_hand, shard_on_cpu
from ..distributed.launch import init_processes, start_line
from ..distributed.media import keep_collectives_in_step
from ..errors import ConfigError, TrainingStopped
from ..models.load import ModelBundle
from ..run_files import CONFIG_FILE, FINAL_DIR, LOG_FILE
from ..tuners.adapters import apply_tuner
from ..tuners.plan import Plan, count_parameters
from .algorithm import Algorithm
from .batching import check_batching, train_batches
from .callbacks import JsonlLogCallback, plot_loss
from .checkpoint import last_checkpoint
from .guards import Guards, make_guards, resume_point
from .kinds import KINDS, Kind
from .precision import prepare_precision
from .summary import RunSummary, summarize
from .trainer import Trainer, training_arguments


@dataclass
class Run:
    """A run ready to train: what ``prepare`` built, in the order it built it."""

    cfg: SftConfig
    kind: Kind
    output_dir: Path
    bundle: ModelBundle = field(repr=False)
    model: torch.nn.Module = field(repr=False)  # the model being trained (peft-wrapped for adapters)
    plan: Plan
    train_set: list | StreamingEncoded = field(repr=False)  # what the trainer iterates (packs when packing)
    val_set: list = field(repr=False)
    report: EncodeReport  # kept, cut and skipped samples (a stream's counts grow while it trains)
    algorithm: Algorithm
    guards: Guards = field(repr=False)
    trainer: Trainer = field(repr=False)
    trainable_params: int = 0
    total_params: int = 0


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    log_history: list[dict]
    plot: Path | None
    report: EncodeReport
    trainable_params: int
    total_params: int
    model: torch.nn.Module = field(repr=False)
    bundle: ModelBundle = field(repr=False)
    summary: RunSummary | None = None


def prepare(cfg: SftConfig, kind: str, callbacks: list | None = None) -> Run:
    """Check, load, tune, encode and assemble a run of ``kind`` (a key of ``train.kinds.KINDS``).

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (Python API only).
    """
    from transformers import set_seed

    spec = KINDS[kind]
    out = Path(cfg.train.output_dir)
    check_output_dir(out, cfg)
    world = init_processes(cfg.dist).num_processes
    PartialState().wait_for_everyone()  # every rank checks before rank 0 writes into output_dir
    resume = resume_point(cfg, out)
    check_distributed(cfg, kind, world, resume)
    check_batching(cfg)
    train_items, val_items = read_rows(cfg, spec)  # cheap checks on every row, before any weights load
    gen_eval = generation_eval(cfg)  # --eval_dataset: read and checked before weights too

    set_seed(cfg.train.seed)
    bundle = spec.load_model(cfg)
    reference = spec.reference(cfg, bundle)  # before the tuner: a frozen copy is of the untouched model
    model, plan = apply_tuner(bundle, spec.tuner(cfg, bundle))
    prepare_precision(cfg, model)  # fp32 master copies of trained weights under bf16/fp16
    trainable, total = count_parameters(model)
    print(f"[tailorkit] {kind} on {bundle.family.name}: {trainable:,} of {total:,} parameters trainable "
          f"({100 * trainable / max(total, 1):.2f}%), train_type={cfg.tuner.train_type}")

    train_set, val_set, report = encode_rows(cfg, spec, bundle.processor, train_items, val_items)
    collator = spec.collator(bundle.tokenizer.pad_token_id, cfg)
    reference.precompute([train_set, val_set], collator, model)  # before the fingerprint: it covers them
    algorithm = spec.algorithm(cfg, bundle, plan, reference)

    write_config = config_writer(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if PartialState().is_main_process:
        write_config(out)
    guards = make_guards(cfg, out, resume, train_set, write_config)  # fingerprints the encoded samples
    if cfg.data.packing or cfg.data.padding_free:
        train_set, collator, _ = train_batches(cfg, bundle.model, train_set, bundle.tokenizer.pad_token_id)
    keep_collectives_in_step(model, bundle.family, world, sharded=shards_weights(cfg.dist))  # text-only batches
    # still run the vision tower
    if fsdp_by_hand(cfg.dist, world):
        model = shard_on_cpu(model, cfg.dist)
    args = training_arguments(cfg, bool(val_set), ignore_data_skip=guards.hooks.restore_rng_at_first_batch)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set or None,
                      data_collator=collator,
                      processing_class=bundle.processor, algorithm=algorithm, plan=plan, hooks=guards.hooks,
                      sequence_parallel=cfg.dist.sequence_parallel_size,
                      callbacks=[guards.progress, JsonlLogCallback(), *(callbacks or []), *guards.callbacks,
                                 *gen_eval])
    _drop_printing_callbacks(trainer)
    print(start_line(trainer.args, cfg.dist))
    return Run(cfg=cfg, kind=spec, output_dir=out, bundle=bundle, model=model, plan=plan, train_set=train_set,
               val_set=val_set, report=report, algorithm=algorithm, guards=guards, trainer=trainer,
               trainable_params=trainable, total_params=total)


def fit(run: Run) -> TrainResult:
    """Train the prepared run (resuming as asked), publish ``checkpoint-final`` atomically, print the summary.

    A signal or a fatal alarm raises TrainingStopped after the summary, naming the checkpoint to resume from.
    """
    final, summary = _train(run)
    out = run.output_dir
    plot = None
    if PartialState().is_main_process:
        plot = plot_loss(out)
        print(f"[tailorkit] done: final checkpoint {final}; log {out / LOG_FILE}; plot {plot}")
    if run.report.skipped or run.report.truncated:
        print(f"[tailorkit] end of preprocessing: {run.report.summary()}")
    return TrainResult(output_dir=out, final_dir=final, log_history=run.trainer.state.log_history, plot=plot,
                       report=run.report, trainable_params=run.trainable_params, total_params=run.total_params,
                       model=run.model, bundle=run.bundle, summary=summary)


# ---- before weights load ------------------------------------------------------------------------------------

def check_output_dir(out: Path, cfg: SftConfig) -> None:
    """Never train over an earlier run's files unless resuming it."""
    if cfg.train.resume_from_checkpoint:
        return
    if (out / CONFIG_FILE).exists() or any(out.glob("checkpoint-*")):
        raise ConfigError(f"output_dir {out} already holds a training run; choose a new --output_dir or pass "
                          "--resume_from_checkpoint to continue it")


def read_rows(cfg: SftConfig, spec: Kind) -> tuple[list, list]:
    """(training rows, validation rows), every row parsed and checked; a stream's first rows only."""
    seed = cfg.data.data_seed if cfg.data.data_seed is not None else cfg.train.seed
    d = cfg.data
    if d.streaming:  # rows are checked as the stream reaches them; the first ones here, before weights
        preflight_stream(d.dataset, system=d.system, text=spec.text)
    train = [] if d.streaming else spec.load(d.dataset, system=d.system, seed=seed)
    val = spec.load(d.val_dataset, system=d.system, seed=seed) if d.val_dataset else []
    if not val and d.split_dataset_ratio > 0:
        train, val = split(train, d.split_dataset_ratio, seed)
    return train, val


def generation_eval(cfg: SftConfig) -> list:
    """The callback scoring --eval_dataset with `tailorkit eval`'s metrics at each evaluation (none without it)."""
    if not cfg.train.eval_dataset:
        return []
    from ..eval.callback import GenerationEvalCallback
    from ..eval.tasks import load_tasks
    from ..infer.engine import GenerationSettings

    t = cfg.train
    tasks = load_tasks(t.eval_dataset, system=cfg.data.system, limit=t.eval_limit)
    return [GenerationEvalCallback(tasks, GenerationSettings(max_new_tokens=t.eval_max_new_tokens),
                                   strategy=t.resolved_eval_strategy(), steps=t.eval_steps or t.save_steps,
                                   batch_size=t.per_device_eval_batch_size)]


def split(items: list, ratio: float, seed: int) -> tuple[list, list]:
    """(rest, held out): a seeded ``ratio`` of the rows (at least one) held out for validation."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(items) * ratio)))
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [items[i] for i in sorted(val_idx)]


# ---- after the model loads ----------------------------------------------------------------------------------

def encode_rows(cfg: SftConfig, spec: Kind, processor, train_items: list, val_items: list):
    """(train set, validation set, report): every row through the one encoder under --truncation_strategy.

    The report counts kept, cut and skipped samples (validation skips marked '(val)'); it is printed now
    and again at the end of the run, and its skips go to the run summary.
    """
    d = cfg.data
    limits = dict(max_length=d.max_length, truncation=d.truncation_strategy)
    train_set, report = spec.encode(train_items, processor, desc="encoding train", **limits)
    if d.streaming:
        train_set = StreamingEncoded(d.dataset, processor, system=d.system, text=spec.text, **limits)
        report = train_set.report
    val_set, val_report = spec.encode(val_items, processor, desc="encoding val", **limits)
    report.skipped.update({f"{k} (val)": v for k, v in val_report.skipped.items()})
    print(f"[tailorkit] {report.summary()}; {len(val_set)} validation samples")
    if not d.streaming and not train_set:
        raise ConfigError("no training sample is left after encoding")
    return train_set, val_set, report


def config_writer(cfg: SftConfig):
    """A function writing the resolved settings (``args.yaml``) into a folder: the run's and every checkpoint's."""
    flat = cfg.flat()

    def write(folder: Path) -> None:
        Path(folder, CONFIG_FILE).write_text(yaml.safe_dump(flat, sort_keys=False))

    return write


def _drop_printing_callbacks(trainer: Trainer) -> None:
    """Our progress bar and jsonl log replace the base class's printer and progress bar."""
    from transformers import PrinterCallback
    from transformers import ProgressCallback as HFProgress

    for cb in (PrinterCallback, HFProgress):
        trainer.remove_callback(cb)


# ---- training ----------------------------------------------------------------------------------------------

def _train(run: Run) -> tuple[Path | None, RunSummary]:
    trainer, guards = run.trainer, run.guards
    if guards.resume is not None and guards.only_model:
        trainer.load_weights_only(str(guards.resume))
        print(f"[tailorkit] starting a new run from the weights of {guards.resume}")
    full_resume = guards.resume if guards.resume is not None and not guards.only_model else None
    try:
        trainer.train(resume_from_checkpoint=str(full_resume) if full_resume else None)
    except Exception as e:
        guards.stopper.restore()
        _summarize(run, f"failed: {type(e).__name__}", None)
        hint = None if isinstance(e, ConfigError) else explain_collective_error(e)  # ours already says what to do
        if hint is not None:
            raise ConfigError(f"{e}\n{hint}") from e
        raise
    state = trainer.state
    stopped = None
    if guards.alarms.fatal is not None:
        stopped = f"stopped by alarm {guards.alarms.fatal.kind}"
    elif guards.stopper.received and state.global_step < state.max_steps:
        stopped = f"stopped by {guards.stopper.received}"
    final = None if stopped else guards.writer.publish(
        FINAL_DIR, lambda folder: trainer.save_model(str(folder)), point_last=False, is_main=trainer.args.should_save,
        barrier=trainer.accelerator.wait_for_everyone)
    summary = _summarize(run, stopped or "completed", final)
    if stopped:
        raise TrainingStopped(_stop_message(run, stopped))
    return final, summary


def _stop_message(run: Run, stopped: str) -> str:
    last = last_checkpoint(run.output_dir)
    fatal = run.guards.alarms.fatal
    where = f"continue from {last} with --resume_from_checkpoint last" if last else "no checkpoint was written"
    if fatal is not None and last:
        where = f"fix the cause, then {where} (add --resume_only_model if you change a setting)"
    reason = f": {fatal}" if fatal is not None else ""
    return f"training {stopped} at step {run.trainer.state.global_step}{reason}; {where}"


def _summarize(run: Run, status: str, final: Path | None) -> RunSummary:
    trainer = run.trainer
    summary = summarize(trainer, run.output_dir, status=status, skipped=run.report.skipped,
                        alarms=run.guards.alarms.summary(), final_dir=final)
    if trainer.args.should_save:
        summary.write(run.output_dir)
        print(summary.text())
    return summary
