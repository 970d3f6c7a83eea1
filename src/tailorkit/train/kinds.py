"""The registry of training kinds: sft, pt and every rlhf_type, each a ``Kind`` the recipe prepares a run from.

A kind says how its rows are read, encoded and batched (functions of data/), which model it loads, whether
it needs a reference policy, and which ``Algorithm`` computes its loss. ``train/recipe.py`` does the rest
the same way for every kind.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

from ..config.rlhf import RlhfConfig
from ..config.train import ModelArgs, SftConfig, TunerArgs
from ..data.collate import Collator
from ..data.build import RowKind
from ..data.dataset import encode_all, encode_one, load_conversations, load_text_samples
from ..data.formats import parse_row, parse_text_row
from ..data.preference import (KtoCollator, PairCollator, convs_of, encode_kto, encode_kto_all, encode_pair,
                               encode_prompt_sample, kto_pairs, load_rows, parse_kto_row, parse_preference_row,
                               parse_prompt_row, prompt_collate, warn_one_label)
from ..errors import ConfigError, ModelError
from ..models.load import ModelBundle, check_module_map, load_bundle, model_config, resolve_dtype, resolve_family
from ..tuners.plan import Plan
from ..tuners.quant import plan_load_kwargs
from .algorithm import Algorithm, SftAlgorithm
from .grpo import GrpoAlgorithm, RolloutAlarms
from .preference import DpoAlgorithm, KtoAlgorithm, ReferenceFreeAlgorithm, ReferenceModel, RewardModelAlgorithm
from .rewards import build_rewards


# ---- models, tuners, references -----------------------------------------------------------------------------

def load_policy(cfg: SftConfig, processor) -> ModelBundle:
    """The model to train, loaded as its tuner plan needs (quantized for QLoRA), with ``processor`` (the one
    ``models.load.bundle_processor`` gave, which encoded the data)."""
    return load_bundle(cfg.model, processor, **plan_load_kwargs(cfg.model, cfg.tuner))


def load_reward_bundle(cfg: SftConfig, processor) -> ModelBundle:
    """The LLM with a one-output sequence-classification head (``score``), saved in standard HF format."""
    import transformers

    args = cfg.model
    family = resolve_family(model_config(args), args.model_type, args.trust_remote_code)
    if family.is_multimodal:
        raise ConfigError(f"rlhf_type rm supports text models in this version; {family.name} is multimodal")
    kwargs = dict(dtype=resolve_dtype(args.torch_dtype), trust_remote_code=args.trust_remote_code, num_labels=1)
    if args.attn_impl:
        kwargs["attn_implementation"] = args.attn_impl
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, **kwargs)
    except ValueError as e:
        raise ModelError(f"{args.model}: no sequence-classification class for this model: {e}") from None
    model.config.pad_token_id = getattr(processor, "tokenizer", processor).pad_token_id
    check_module_map(model, family)
    return ModelBundle(model=model, processor=processor, family=family)


def configured_tuner(cfg: SftConfig) -> TunerArgs:
    """The tuner settings as given."""
    return cfg.tuner


def reward_tuner(cfg: SftConfig) -> TunerArgs:
    """With LoRA the new ``score`` head is trained fully next to the adapter."""
    if cfg.tuner.train_type != "lora":
        return cfg.tuner
    return dataclasses.replace(cfg.tuner, modules_to_save=[*cfg.tuner.modules_to_save, "score"])


def no_reference(cfg: SftConfig, bundle: ModelBundle) -> ReferenceModel:
    """Kinds without a reference policy (sft, pt, the reference-free losses, rm)."""
    return ReferenceModel()


def reference_policy(cfg: RlhfConfig, bundle: ModelBundle) -> ReferenceModel:
    """--ref_model; a frozen copy of the model for full training; the base with the LoRA adapter disabled
    (nothing to hold); or log-probs precomputed before training (--precompute_ref_log_probs)."""
    if cfg.rlhf.rlhf_type == "grpo" and cfg.rlhf.beta == 0.0:
        return ReferenceModel()  # no KL term
    if cfg.preference.precompute_ref_log_probs:
        return ReferenceModel(precompute_batch_size=cfg.train.per_device_eval_batch_size)
    if cfg.rlhf.ref_model:
        m = cfg.model
        return ReferenceModel(load_bundle(ModelArgs(model=cfg.rlhf.ref_model, torch_dtype=m.torch_dtype,
                                                    attn_impl=m.attn_impl,
                                                    trust_remote_code=m.trust_remote_code)).model)
    if cfg.tuner.train_type == "full":
        return ReferenceModel(copy.deepcopy(bundle.model))
    return ReferenceModel()


# ---- rows ---------------------------------------------------------------------------------------------------

def load_text_rows(specs: list[str], *, system: str | None, seed: int) -> list:
    """Pre-training rows ({"text": ...}); a system prompt has no place in them."""
    if system is not None:
        raise ConfigError("--system applies to conversations; pt trains on raw text rows: remove it")
    return load_text_samples(specs, seed=seed)


def load_kto_rows(specs: list[str], *, system: str | None, seed: int) -> list:
    """KTO rows (a conversation and a boolean label), with a warning when all labels agree."""
    items = load_rows(specs, parse_kto_row, system=system, seed=seed)
    if len({s.label for s in items}) < 2:
        warn_one_label(", ".join(specs))
    return items


def unpadded(pad_token_id: int) -> Callable:
    """GRPO's batches: the encoded prompts themselves (rollouts are left-padded inside the step)."""
    return prompt_collate


# ---- algorithms: (cfg, bundle, plan, reference) -> the object whose compute_loss the Trainer calls -----------

def sft_algorithm(cfg: SftConfig, bundle: ModelBundle, plan: Plan, reference: ReferenceModel) -> SftAlgorithm:
    return SftAlgorithm(plan)


def dpo_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan, reference: ReferenceModel) -> DpoAlgorithm:
    p = cfg.preference
    return DpoAlgorithm(beta=cfg.rlhf.beta, loss_type=cfg.rlhf.loss_type, label_smoothing=p.label_smoothing,
                        rpo_alpha=p.rpo_alpha, reference=reference, alarm_steps=cfg.rlhf.reward_alarm_steps)


def reference_free_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan,
                             reference: ReferenceModel) -> ReferenceFreeAlgorithm:
    p = cfg.preference
    return ReferenceFreeAlgorithm(cfg.rlhf.rlhf_type, beta=cfg.rlhf.beta, loss_type=cfg.rlhf.loss_type or "sigmoid",
                                  label_smoothing=p.label_smoothing, simpo_gamma=p.simpo_gamma,
                                  cpo_alpha=p.cpo_alpha)


def kto_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan, reference: ReferenceModel) -> KtoAlgorithm:
    p = cfg.preference
    return KtoAlgorithm(beta=cfg.rlhf.beta, desirable_weight=p.desirable_weight,
                        undesirable_weight=p.undesirable_weight, reference=reference,
                        alarm_steps=cfg.rlhf.reward_alarm_steps)


def reward_model_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan,
                           reference: ReferenceModel) -> RewardModelAlgorithm:
    return RewardModelAlgorithm(center_rewards_coefficient=cfg.preference.center_rewards_coefficient,
                                alarm_steps=cfg.rlhf.reward_alarm_steps)


def grpo_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan, reference: ReferenceModel) -> GrpoAlgorithm:
    g = cfg.grpo
    rewards = build_rewards(g.reward_funcs, g.reward_weights, g.external_plugins, format_pattern=g.format_pattern,
                            max_completion_length=g.max_completion_length, soft_cache_length=g.soft_cache_length)
    return GrpoAlgorithm(bundle.processor, rewards, num_generations=g.num_generations,
                         max_completion_length=g.max_completion_length, temperature=g.temperature, top_p=g.top_p,
                         top_k=g.top_k, beta=cfg.rlhf.beta, epsilon=g.epsilon, epsilon_high=g.epsilon_high,
                         loss_type=cfg.rlhf.loss_type, importance_sampling_level=g.importance_sampling_level,
                         scale_rewards=g.scale_rewards, reference=reference,
                         alarms=RolloutAlarms(cfg.rlhf.reward_alarm_steps, g.kl_alarm))


# ---- the registry -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """One training kind, chosen by verb (sft, pt) or by --rlhf_type."""

    name: str
    # (specs, *, system, seed) -> the parsed rows of the datasets, every row checked (before any weights load)
    load: Callable[..., list]
    # (items, processor, *, max_length, truncation, desc) -> (encoded items, EncodeReport), through data/'s encoder
    encode: Callable[..., tuple]
    collator: Callable[[int], Callable]  # pad token id -> the function that batches encoded items
    rows: RowKind  # how a run reads and encodes its rows into the encoded-data cache (data/build.py)
    # (cfg, bundle, plan, reference) -> the object whose compute_loss the Trainer calls
    algorithm: Callable[..., Algorithm]
    text: bool = False  # rows are raw-text documents (pt); --streaming reads them as such
    load_model: Callable[..., ModelBundle] = load_policy  # (cfg, processor) -> the model to train
    tuner: Callable[[SftConfig], TunerArgs] = configured_tuner  # cfg -> the tuner settings to apply
    reference: Callable[[SftConfig, ModelBundle], ReferenceModel] = no_reference  # the reference policy, if any


def _pairs(name: str, algorithm: Callable, **kwargs) -> Kind:
    """A kind trained on chosen/rejected pairs."""
    return Kind(name, load=functools.partial(load_rows, parse=parse_preference_row),
                encode=functools.partial(encode_all, encode_item=encode_pair), collator=PairCollator,
                rows=RowKind(parse_preference_row, encode_pair, convs_of=convs_of), algorithm=algorithm, **kwargs)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("sft", load=load_conversations, encode=encode_all, collator=Collator, rows=RowKind(parse_row, encode_one),
         algorithm=sft_algorithm),
    Kind("pt", load=load_text_rows, encode=encode_all, collator=Collator,
         rows=RowKind(parse_text_row, encode_one, text=True), algorithm=sft_algorithm, text=True),
    _pairs("dpo", dpo_algorithm, reference=reference_policy),
    _pairs("orpo", reference_free_algorithm),
    _pairs("simpo", reference_free_algorithm),
    _pairs("cpo", reference_free_algorithm),
    Kind("kto", load=load_kto_rows, encode=encode_kto_all, collator=KtoCollator,
         rows=RowKind(parse_kto_row, encode_kto, convs_of=convs_of, pairing=kto_pairs), algorithm=kto_algorithm,
         reference=reference_policy),
    _pairs("rm", reward_model_algorithm, load_model=load_reward_bundle, tuner=reward_tuner),
    Kind("grpo", load=functools.partial(load_rows, parse=parse_prompt_row),
         encode=functools.partial(encode_all, encode_item=encode_prompt_sample), collator=unpadded,
         rows=RowKind(parse_prompt_row, encode_prompt_sample, convs_of=convs_of),
         algorithm=grpo_algorithm, reference=reference_policy),
)}
