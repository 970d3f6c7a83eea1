"""One recipe for every training kind: ``prepare(cfg, kind) -> Run``, then ``fit(run) -> TrainResult``.

``prepare`` checks what can be checked before weights load (output folder, resume point, batching flags,
every row), loads the model (and a reference policy where the kind has one), applies the tuner plan,
encodes the rows with the one encoder (printing the end-of-preprocessing counts), builds the guards and
then the Trainer with everything it needs. ``fit`` trains under the guards, publishes ``checkpoint-final``
atomically and prints the run summary. What differs between sft, pt, dpo ... grpo is in train/kinds.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import PartialState

from ..config.train import SftConfig
from ..data.build import EncodeRequest, check_rows, encoded_sets
from ..data.dataset import EncodeReport, StreamingEncoded
from ..data.encoded_set import EncodedSet
from ..data.validate import preflight_stream
from ..distributed.engines import check_distributed, explain_collective_error, shards_weights
from ..distributed.fsdp import fsdp_by_hand, shard_on_cpu
from ..distributed.launch import init_processes, start_line
from ..distributed.media import keep_collectives_in_step
from ..errors import ConfigError, ModelError, TrainingStopped
from ..models.load import ModelBundle, bundle_processor
from ..plugins import Plugins, load_plugins
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
    train_set: EncodedSet | StreamingEncoded = field(repr=False)  # what the trainer iterates (packs when packing)
    val_set: EncodedSet = field(repr=False)
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
    plugins = run_plugins(cfg, kind)
    world = init_processes(cfg.dist).num_processes
    PartialState().wait_for_everyone()  # every rank checks before rank 0 writes into output_dir
    resume = resume_point(cfg, out)
    check_distributed(cfg, kind, world, resume)
    check_batching(cfg)
    processor = load_processor_or_check_rows(cfg, spec, plugins)
    with PartialState().local_main_process_first():  # one process per machine encodes; the others read its cache
        train_set, val_set, report = encode_rows(cfg, spec, processor, plugins)  # every row checked, before weights
    gen_eval = generation_eval(cfg)  # --eval_dataset: read and checked before weights too

    set_seed(cfg.train.seed)
    bundle = spec.load_model(cfg, processor)
    reference = spec.reference(cfg, bundle)  # before the tuner: a frozen copy is of the untouched model
    model, plan = apply_tuner(bundle, spec.tuner(cfg, bundle))
    prepare_precision(cfg, model)  # fp32 master copies of trained weights under bf16/fp16
    trainable, total = count_parameters(model)
    print(f"[tailorkit] {kind} on {bundle.family.name}: {trainable:,} of {total:,} parameters trainable "
          f"({100 * trainable / max(total, 1):.2f}%), train_type={cfg.tuner.train_type}")

    collator = spec.collator(bundle.tokenizer.pad_token_id, cfg)
    reference.precompute([train_set, val_set], collator, model)
    algorithm = spec.algorithm(cfg, bundle, plan, reference)

    write_config = config_writer(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if PartialState().is_main_process:
        write_config(out)
    guards = make_guards(cfg, out, resume, train_set, write_config)  # the encoded data's fingerprint
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
                      callbacks=[guards.progress, JsonlLogCallback(), *(callbacks or []), *plugins.callbacks,
                                 *guards.callbacks, *gen_eval])
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


def run_plugins(cfg: SftConfig, kind: str) -> Plugins:
    """The --external_plugins of the run; a plugin loss replaces sft/pt's token loss only."""
    plugins = load_plugins(cfg.model.external_plugins)
    if plugins.loss is not None and kind not in ("sft", "pt"):
        raise ConfigError(f"an --external_plugins file registers a loss, which replaces the sft/pt token loss; "
                          f"rlhf_type {kind} has its own (see --loss_type); drop the plugin's loss for this run")
    fused = [flag for flag, on in (("--sequence_parallel_size", cfg.dist.sequence_parallel_size > 1),
                                   ("--use_liger_kernel", cfg.train.use_liger_kernel)) if on]
    if plugins.loss is not None and fused:
        raise ConfigError(f"an --external_plugins file registers a loss, which needs the full logits; {fused[0]} "
                          "computes the loss without them: drop one of the two")
    return plugins


def load_processor_or_check_rows(cfg: SftConfig, spec: Kind, plugins: Plugins):
    """The processor the data is encoded with (no weights); where it cannot load, the rows are checked first so
    that broken data is reported before a missing or broken model."""
    try:
        return bundle_processor(cfg.model)
    except ModelError:
        d = cfg.data
        check_rows([*d.dataset, *d.val_dataset], spec.rows, system=d.system, preprocess=plugins.preprocess)
        raise


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


# ---- encoding (before any weights load) ---------------------------------------------------------------------

def encode_rows(cfg: SftConfig, spec: Kind, processor, plugins: Plugins):
    """(train set, validation set, report): every row read, checked and encoded (token ids and exact lengths; media
    load per batch) through the encoded-data cache (``data/build.py``), under --truncation_strategy.

    With --streaming the training rows are read, checked and encoded as training consumes them (the first
    ones are checked now). The report counts kept, cut and skipped samples (validation skips marked '(val)');
    it is printed now and again at the end of the run, and its skips go to the run summary.
    """
    d = cfg.data
    request = EncodeRequest(kind=spec.name, specs=() if d.streaming else tuple(d.dataset),
                            val_specs=tuple(d.val_dataset), system=d.system,
                            seed=d.data_seed if d.data_seed is not None else cfg.train.seed,
                            split_ratio=d.split_dataset_ratio, max_length=d.max_length,
                            truncation=d.truncation_strategy, num_proc=d.dataset_num_proc,
                            use_cache=d.load_from_cache_file, cache_dir=d.dataset_cache_dir,
                            preprocess=plugins.preprocess, preprocess_digest=plugins.preprocess_digest)
    train_set, val_set, report = encoded_sets(request, spec.rows, processor)
    if d.streaming:
        preflight_stream(d.dataset, system=d.system, text=spec.text, preprocess=plugins.preprocess)
        train_set = StreamingEncoded(d.dataset, processor, system=d.system, text=spec.text,
                                     max_length=d.max_length, truncation=d.truncation_strategy,
                                     packing_length=(d.packing_length or d.max_length) if d.packing else None,
                                     preprocess=plugins.preprocess)
        report.skipped.update(train_set.report.skipped)
        train_set.report = report
    print(f"[tailorkit] {report.summary()}; {len(val_set)} validation samples")
    if not d.streaming and not len(train_set):
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
