"""`tailorkit rlhf`: DPO, ORPO, SimPO, CPO, KTO, reward models and GRPO on our one Trainer.

Same data checks, model loading, tuners, checkpoints and logs as `sft`; the algorithm object
(train/preference.py, train/grpo.py) supplies the loss and the batch preparation.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from ..config.args import ModelArgs, RlhfConfig
from ..errors import ConfigError, ModelError
from ..models.load import ModelBundle, check_module_map, load_bundle, load_processor, resolve_dtype, resolve_family
from ..tuners.plan import apply_tuner, count_parameters
from ..tuners.quant import plan_load_kwargs
from .callbacks import JsonlLogCallback, ProgressCallback, plot_loss
from .guarded import make_guards, resume_point, train_guarded
from .grpo import GrpoAlgorithm, RolloutAlarms
from .preference import (DpoAlgorithm, KtoAlgorithm, ReferenceFreeAlgorithm, ReferenceModel, RewardModelAlgorithm,
                         precompute_reference)
from .preference_data import (KtoCollator, PairCollator, encode_items, load_rows, parse_kto_row, parse_preference_row,
                              parse_prompt_row, prompt_collate)
from .rewards import build_rewards
from .precision import prepare_precision
from .sft import TrainResult, _check_output_dir, _config_writer, _split, training_arguments

def rlhf(cfg: RlhfConfig) -> TrainResult:
    """Preference or reinforcement training as chosen by ``cfg.rlhf.rlhf_type``."""
    from transformers import set_seed

    from accelerate import PartialState

    r = cfg.rlhf
    out = Path(cfg.train.output_dir)
    _check_output_dir(out, cfg)
    PartialState().wait_for_everyone()  # under torchrun: every rank checks before rank 0 writes into output_dir
    resume = resume_point(cfg, out)
    seed = cfg.data.data_seed if cfg.data.data_seed is not None else cfg.train.seed
    parse = {"kto": parse_kto_row, "grpo": parse_prompt_row}.get(r.rlhf_type, parse_preference_row)
    train_items = load_rows(cfg.data.dataset, parse, system=cfg.data.system, seed=seed)
    val_items = load_rows(cfg.data.val_dataset, parse, system=cfg.data.system, seed=seed) if cfg.data.val_dataset \
        else []
    if not val_items and cfg.data.split_dataset_ratio > 0:
        train_items, val_items = _split(train_items, cfg.data.split_dataset_ratio, seed)
    if r.rlhf_type == "kto" and len({s.label for s in train_items}) < 2:
        print("[tailorkit] warning: every KTO sample has the same label; KTO learns from both kinds")

    set_seed(cfg.train.seed)
    bundle = load_reward_bundle(cfg.model) if r.rlhf_type == "rm" else load_bundle(
        cfg.model, **plan_load_kwargs(cfg.model, cfg.tuner))
    frozen_copy = _reference_copy(cfg, bundle)
    tuner = dataclasses.replace(cfg.tuner, modules_to_save=[*cfg.tuner.modules_to_save, "score"]) \
        if r.rlhf_type == "rm" and cfg.tuner.train_type == "lora" else cfg.tuner
    model = apply_tuner(bundle, tuner)
    prepare_precision(cfg, model)
    trainable, total = count_parameters(model)
    print(f"[tailorkit] rlhf {r.rlhf_type} on {bundle.family.name}: {trainable:,} of {total:,} parameters trainable "
          f"({100 * trainable / max(total, 1):.2f}%), train_type={cfg.tuner.train_type}")

    if r.rlhf_type == "grpo":
        train_set, val_set, collate = train_items, [], prompt_collate
    else:
        train_set, val_set, collate = _encode(cfg, bundle, train_items, val_items)
        if r.precompute_ref_log_probs:
            precompute_reference(train_set + val_set, collate, model, batch_size=cfg.train.per_device_eval_batch_size)
            print(f"[tailorkit] reference log-probs precomputed for {len(train_set) + len(val_set)} samples")
    if not train_set:
        raise ConfigError("no training sample is left after encoding")

    write_config = _config_writer(cfg)
    algorithm = make_algorithm(cfg, bundle, ReferenceModel(frozen_copy))
    main = PartialState().is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out)
    guards = make_guards(cfg, out, resume, train_set, write_config)
    trainer = _make_trainer(cfg, bundle, model, train_set, val_set, collate, algorithm, guards)
    print(f"[tailorkit] world size {trainer.args.world_size}")
    final, summary = train_guarded(trainer, guards, skipped={},
                                   save_final=lambda folder: trainer.save_model(str(folder)))
    plot = None
    if main:
        plot = plot_loss(out)
        print(f"[tailorkit] done: final checkpoint {final}; log {out / 'logging.jsonl'}; plot {plot}")
    from ..data.dataset import EncodeReport
    return TrainResult(output_dir=out, final_dir=final, log_history=trainer.state.log_history, plot=plot,
                       report=EncodeReport(kept=len(train_set)), trainable_params=trainable, total_params=total,
                       model=model, bundle=bundle, summary=summary)


def _encode(cfg: RlhfConfig, bundle: ModelBundle, train_items: list, val_items: list):
    kwargs = dict(max_length=cfg.data.max_length, truncation=cfg.data.truncation_strategy)
    train_set, skipped = encode_items(train_items, bundle.processor, **kwargs)
    val_set, val_skipped = encode_items(val_items, bundle.processor, **kwargs)
    print(f"[tailorkit] {len(train_set)} training and {len(val_set)} validation samples encoded"
          + (f"; skipped: {dict(skipped + val_skipped)}" if skipped or val_skipped else ""))
    pad = bundle.tokenizer.pad_token_id
    return train_set, val_set, KtoCollator(pad) if cfg.rlhf.rlhf_type == "kto" else PairCollator(pad)


def _reference_copy(cfg: RlhfConfig, bundle: ModelBundle):
    """The reference model when one must be held: --ref_model, or a frozen copy for full training."""
    r = cfg.rlhf
    needs_ref = r.rlhf_type in ("dpo", "kto") or (r.rlhf_type == "grpo" and r.beta != 0.0)
    if not needs_ref or r.precompute_ref_log_probs:
        return None
    if r.ref_model:
        return load_bundle(ModelArgs(model=r.ref_model, torch_dtype=cfg.model.torch_dtype,
                                     attn_impl=cfg.model.attn_impl,
                                     trust_remote_code=cfg.model.trust_remote_code)).model
    if cfg.tuner.train_type == "full":
        return copy.deepcopy(bundle.model)
    return None  # LoRA: the base model with the adapter disabled


def make_algorithm(cfg: RlhfConfig, bundle: ModelBundle, reference: ReferenceModel):
    """The algorithm object for ``cfg.rlhf.rlhf_type`` (a registry of the seven types)."""
    r = cfg.rlhf
    if r.rlhf_type == "dpo":
        return DpoAlgorithm(beta=r.beta, loss_type=r.loss_type, label_smoothing=r.label_smoothing,
                            rpo_alpha=r.rpo_alpha, reference=reference, alarm_steps=r.reward_alarm_steps)
    if r.rlhf_type in ("orpo", "simpo", "cpo"):
        return ReferenceFreeAlgorithm(r.rlhf_type, beta=r.beta, loss_type=r.loss_type or "sigmoid",
                                      label_smoothing=r.label_smoothing, simpo_gamma=r.simpo_gamma,
                                      cpo_alpha=r.cpo_alpha)
    if r.rlhf_type == "kto":
        return KtoAlgorithm(beta=r.beta, desirable_weight=r.desirable_weight,
                            undesirable_weight=r.undesirable_weight, reference=reference,
                            alarm_steps=r.reward_alarm_steps)
    if r.rlhf_type == "rm":
        return RewardModelAlgorithm(center_rewards_coefficient=r.center_rewards_coefficient,
                                    alarm_steps=r.reward_alarm_steps)
    rewards = build_rewards(r.reward_funcs, r.reward_weights, r.external_plugins, format_pattern=r.format_pattern,
                            max_completion_length=r.max_completion_length, soft_cache_length=r.soft_cache_length)
    return GrpoAlgorithm(bundle.processor, rewards, num_generations=r.num_generations,
                         max_completion_length=r.max_completion_length, temperature=r.temperature, top_p=r.top_p,
                         top_k=r.top_k, beta=r.beta, epsilon=r.epsilon, epsilon_high=r.epsilon_high,
                         loss_type=r.loss_type, importance_sampling_level=r.importance_sampling_level,
                         scale_rewards=r.scale_rewards, reference=reference,
                         alarms=RolloutAlarms(r.reward_alarm_steps, r.kl_alarm))


def load_reward_bundle(args: ModelArgs) -> ModelBundle:
    """The LLM with a one-output sequence-classification head (``score``), saved in standard HF format."""
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    family = resolve_family(config, args.model_type, args.trust_remote_code)
    if family.is_multimodal:
        raise ConfigError(f"rlhf_type rm supports text models in this version; {family.name} is multimodal")
    processor = load_processor(args.model, args.trust_remote_code, family.chat_template)
    kwargs = dict(dtype=resolve_dtype(args.torch_dtype), trust_remote_code=args.trust_remote_code, num_labels=1)
    if args.attn_impl:
        kwargs["attn_implementation"] = args.attn_impl
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, **kwargs)
    except ValueError as e:
        raise ModelError(f"{args.model}: no sequence-classification class for this model: {e}") from None
    model.config.pad_token_id = processor.pad_token_id if hasattr(processor, "pad_token_id") else \
        processor.tokenizer.pad_token_id
    check_module_map(model, family)
    return ModelBundle(model=model, processor=processor, family=family)


def _make_trainer(cfg, bundle, model, train_set, val_set, collate, algorithm, guards):
    from transformers import PrinterCallback
    from transformers import ProgressCallback as HFProgress

    from .trainer import Trainer

    args = training_arguments(cfg, bool(val_set))
    args.prediction_loss_only = True  # algorithms return a loss, not logits
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set or None,
                      data_collator=collate, processing_class=bundle.processor, algorithm=algorithm,
                      checkpoints=guards.writer,
                      callbacks=[ProgressCallback(), JsonlLogCallback(), *guards.callbacks])
    for cb in (PrinterCallback, HFProgress):
        trainer.remove_callback(cb)
    return trainer
