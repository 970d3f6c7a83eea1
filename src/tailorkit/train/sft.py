"""`tailorkit sft` and `tailorkit pt`: load data (checked first), model, tuner; train; save."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..config.args import SftConfig
from ..data.collate import Collator
from ..data.dataset import EncodeReport, StreamingEncoded, encode_all, load_conversations, load_text_samples
from ..data.validate import preflight_stream
from ..errors import ConfigError
from ..models.load import ModelBundle, load_bundle, resolve_dtype
from ..tuners.plan import apply_tuner, count_parameters
from .batching import check_batching, train_batches
from ..tuners.quant import plan_load_kwargs
from .callbacks import JsonlLogCallback, ProgressCallback, RunFilesCallback, plot_loss
from .guarded import make_guards, resume_point, train_guarded
from .precision import prepare_precision
from .summary import RunSummary

CONFIG_FILE = "args.yaml"
FINAL_DIR = "checkpoint-final"


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


def sft(cfg: SftConfig, callbacks: list | None = None) -> TrainResult:
    """Supervised fine-tuning on conversations; loss on assistant replies only.

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (Python API only).
    """
    return _run(cfg, text=False, callbacks=callbacks)


def pt(cfg: SftConfig, callbacks: list | None = None) -> TrainResult:
    """Continued pre-training on {"text": ...} rows; loss on every token."""
    return _run(cfg, text=True, callbacks=callbacks)


def _run(cfg: SftConfig, *, text: bool, callbacks: list | None) -> TrainResult:
    from transformers import set_seed

    from accelerate import PartialState

    out = Path(cfg.train.output_dir)
    _check_output_dir(out, cfg)
    PartialState().wait_for_everyone()  # under torchrun: every rank checks before rank 0 writes into output_dir
    resume = resume_point(cfg, out)
    check_batching(cfg)
    data_seed = cfg.data.data_seed if cfg.data.data_seed is not None else cfg.train.seed
    # Cheap checks on every row before any weights are loaded.
    load = (lambda specs: load_text_samples(specs, seed=data_seed)) if text else (
        lambda specs: load_conversations(specs, system=cfg.data.system, seed=data_seed))
    if cfg.data.streaming:  # rows are checked as the stream reaches them; the first ones here, before weights
        preflight_stream(cfg.data.dataset, system=cfg.data.system, text=text)
    train_items = [] if cfg.data.streaming else load(cfg.data.dataset)
    val_items = load(cfg.data.val_dataset) if cfg.data.val_dataset else []
    if not val_items and cfg.data.split_dataset_ratio > 0:
        train_items, val_items = _split(train_items, cfg.data.split_dataset_ratio, data_seed)

    set_seed(cfg.train.seed)
    bundle = load_bundle(cfg.model, **plan_load_kwargs(cfg.model, cfg.tuner))
    model = apply_tuner(bundle, cfg.tuner)
    prepare_precision(cfg, model)
    trainable, total = count_parameters(model)
    print(f"[tailorkit] {bundle.family.name}: {trainable:,} of {total:,} parameters trainable "
          f"({100 * trainable / max(total, 1):.2f}%), train_type={cfg.tuner.train_type}")

    enc_kwargs = dict(max_length=cfg.data.max_length, truncation=cfg.data.truncation_strategy, text=text)
    train_set, report = encode_all(train_items, bundle.processor, desc="encoding train", **enc_kwargs)
    if cfg.data.streaming:
        train_set = StreamingEncoded(cfg.data.dataset, bundle.processor, system=cfg.data.system, **enc_kwargs)
        report = train_set.report
    val_set, val_report = encode_all(val_items, bundle.processor, desc="encoding val", **enc_kwargs)
    report.skipped.update({f"{k} (val)": v for k, v in val_report.skipped.items()})
    print(f"[tailorkit] {report.summary()}; {len(val_set)} validation samples")
    if not cfg.data.streaming and not train_set:
        raise ConfigError("no training sample is left after encoding")

    out.mkdir(parents=True, exist_ok=True)
    write_config = _config_writer(cfg)
    if PartialState().is_main_process:
        write_config(out)
    guards = make_guards(cfg, out, resume, train_set, write_config)  # fingerprints the encoded samples
    train_set, collator, _ = train_batches(cfg, bundle.model, train_set, bundle.tokenizer.pad_token_id)
    trainer = _make_trainer(cfg, bundle, model, train_set, val_set, write_config,
                            [*(callbacks or []), *guards.callbacks], checkpoints=guards.writer, collator=collator)
    final, summary = train_guarded(trainer, guards, skipped=report.skipped,
                                   save_final=lambda folder: trainer.save_model(str(folder)))
    plot = plot_loss(out)
    print(f"[tailorkit] done: final checkpoint {final}; log {out / 'logging.jsonl'}; plot {plot}")
    if report.skipped or report.truncated:
        print(f"[tailorkit] end of preprocessing: {report.summary()}")
    return TrainResult(output_dir=out, final_dir=final, log_history=trainer.state.log_history, plot=plot,
                       report=report, trainable_params=trainable, total_params=total, model=model, bundle=bundle,
                       summary=summary)


def _check_output_dir(out: Path, cfg: SftConfig) -> None:
    """Never train over an earlier run's files unless resuming it."""
    if cfg.train.resume_from_checkpoint:
        return
    if (out / CONFIG_FILE).exists() or any(out.glob("checkpoint-*")):
        raise ConfigError(f"output_dir {out} already holds a training run; choose a new --output_dir or pass "
                          "--resume_from_checkpoint to continue it")


def _split(items: list, ratio: float, seed: int) -> tuple[list, list]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(items) * ratio)))
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [items[i] for i in sorted(val_idx)]


def _config_writer(cfg: SftConfig):
    flat = cfg.flat()

    def write(folder: Path) -> None:
        Path(folder, CONFIG_FILE).write_text(yaml.safe_dump(flat, sort_keys=False))

    return write


def training_arguments(cfg: SftConfig, has_eval: bool):
    """transformers.TrainingArguments from our config (the one place the two meet)."""
    from transformers import TrainingArguments

    t = cfg.train
    dtype = resolve_dtype(cfg.model.torch_dtype)  # "auto" is bf16 on a GPU that has it: autocast then too
    eval_steps = t.eval_steps or t.save_steps
    return TrainingArguments(
        output_dir=t.output_dir, num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        learning_rate=t.learning_rate, per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        **_checkpointing_arguments(TrainingArguments, t),
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, logging_steps=t.logging_steps, save_strategy=t.save_strategy,
        save_steps=t.save_steps, save_total_limit=None,  # applied by train/checkpoint.py (keeps newest, best)
        seed=t.seed, report_to=t.report_to, include_num_input_tokens_seen="non_padding",
        eval_strategy=("steps" if t.save_strategy == "steps" else t.save_strategy) if has_eval else "no",
        eval_steps=eval_steps if has_eval else None, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        dataloader_num_workers=cfg.data.dataloader_num_workers, remove_unused_columns=False, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), deepspeed=_deepspeed_config(t.deepspeed),
        ddp_find_unused_parameters=False, save_only_model=False,
        # accelerate would otherwise dispatch a streaming dataset's batches by slicing every tensor along dim 0,
        # which cuts media tensors (pixel_values rows are patches, not samples)
        accelerator_config={"dispatch_batches": False},
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        use_liger_kernel=t.use_liger_kernel,
    )


def _checkpointing_arguments(arguments_class, t) -> dict:
    """Activation checkpointing under the name this transformers takes: ``activation_checkpointing`` since 5.2x,
    ``gradient_checkpointing`` before (and a deprecated alias after, which warns)."""
    from dataclasses import fields

    prefix = "activation" if "activation_checkpointing" in {f.name for f in fields(arguments_class)} else "gradient"
    return {f"{prefix}_checkpointing": t.gradient_checkpointing,
            f"{prefix}_checkpointing_kwargs": t.gradient_checkpointing_kwargs}


def _deepspeed_config(value: str | None):
    if value is None:
        return None
    presets = {
        "zero2": {"zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True}},
        "zero3": {"zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                                        "stage3_gather_16bit_weights_on_model_save": True}},
    }
    if value in presets:
        return {**presets[value], "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
                "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto", "train_batch_size": "auto"}
    return value  # a JSON file path, read by transformers


def _make_trainer(cfg, bundle, model, train_set, val_set, write_config, extra_callbacks, checkpoints=None,
                  collator=None):
    from transformers import PrinterCallback
    from transformers import ProgressCallback as HFProgress

    from .trainer import Trainer

    trainer = Trainer(model=model, args=training_arguments(cfg, bool(val_set)), train_dataset=train_set,
                      eval_dataset=val_set or None, data_collator=collator or Collator(bundle.tokenizer.pad_token_id),
                      processing_class=bundle.processor,
                      callbacks=[ProgressCallback(), JsonlLogCallback(),
                                 *([RunFilesCallback(write_config)] if checkpoints is None else []),
                                 *extra_callbacks],
                      checkpoints=checkpoints)
    for cb in (PrinterCallback, HFProgress):
        trainer.remove_callback(cb)
    return trainer
