"""The registry of training kinds: sft, pt and every rlhf_type, each a ``Kind`` the recipe prepares a run from.

A kind says how its rows are read, encoded and batched (functions of data/), which model it loads, whether
it needs a reference policy (gkd: its teacher), and which ``Algorithm`` computes its loss.
``train/recipe.py`` does the rest the same way for every kind.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config.rlhf import RlhfConfig
from ..config.train import ModelArgs, SftConfig, TunerArgs
from ..data.collate import Collator
from ..data.dataset import encode_all, load_conversations, load_text_samples
from ..data.distill import DistillCollator, encode_distill
from ..data.preference import (KtoCollator, PairCollator, encode_kto_all, encode_pair, encode_prompt_sample,
                               load_rows, parse_kto_row, parse_preference_row, parse_prompt_row, prompt_collate)
from ..distributed.ulysses import SequenceParallel
from ..errors import ConfigError
from ..models.load import ModelBundle, load_bundle
from ..models.value_head import HEAD, add_value_head, lm_head_prefixes, load_reward_model, trained_head
from ..tuners.plan import Plan
from ..tuners.quant import plan_load_kwargs
from .algorithm import Algorithm, SftAlgorithm
from .gkd import GkdAlgorithm, load_teacher
from .grpo import GrpoAlgorithm, GrpoSettings, RolloutAlarms
from .ppo import Critic, PpoAlgorithm, PpoSettings
from .preference import DpoAlgorithm, KtoAlgorithm, ReferenceFreeAlgorithm, ReferenceModel, RewardModelAlgorithm
from .rewards import build_rewards, load_scheduler
from .rollout import Sampler, Sampling


# ---- models, tuners, references -----------------------------------------------------------------------------

def load_policy(cfg: SftConfig) -> ModelBundle:
    """The model to train, loaded as its tuner plan needs (quantized for QLoRA)."""
    return load_bundle(cfg.model, **plan_load_kwargs(cfg.model, cfg.tuner))


def load_reward_policy(cfg: SftConfig) -> ModelBundle:
    """rm: the model (any causal LM or VLM) with a value head on its last hidden state (models/value_head.py)."""
    bundle = load_policy(cfg)
    add_value_head(bundle.model, seed=cfg.train.seed)
    return bundle


def load_ppo_policy(cfg: RlhfConfig) -> ModelBundle:
    """ppo: the policy with its value head, as wide as the backbone it reads (the policy's, or --value_model's);
    a reward model given as --value_model starts the head from its trained one."""
    bundle = load_policy(cfg)
    critic = cfg.ppo.value_model
    trained = trained_head(critic) if critic else None
    width = None if critic is None else trained.shape[1] if trained is not None else _hidden_size(critic, cfg)
    head = add_value_head(bundle.model, width, seed=cfg.train.seed)
    with torch.no_grad():  # a new head starts at 0: the first advantages are the whitened returns, not noise
        head.weight.copy_(trained.to(head.weight.dtype) if trained is not None else torch.zeros_like(head.weight))
    return bundle


def _hidden_size(path: str, cfg: SftConfig) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code).get_text_config().hidden_size


def configured_tuner(cfg: SftConfig, bundle: ModelBundle) -> TunerArgs:
    """The tuner settings as given."""
    return cfg.tuner


def value_tuner(cfg: SftConfig, bundle: ModelBundle) -> TunerArgs:
    """ppo: the value head is trained fully, whatever the plan (next to an adapter it is saved with it)."""
    return dataclasses.replace(cfg.tuner, trainable_parameters=[*cfg.tuner.trainable_parameters, HEAD])


def reward_tuner(cfg: SftConfig, bundle: ModelBundle) -> TunerArgs:
    """rm: the value head trained fully; the LM head, which a score never reads, frozen (under DDP an untied one
    would otherwise get no gradient)."""
    frozen = lm_head_prefixes(bundle.model, bundle.family.lm_head)
    return dataclasses.replace(value_tuner(cfg, bundle), freeze_parameters=[*cfg.tuner.freeze_parameters, *frozen])


def no_reference(cfg: SftConfig, bundle: ModelBundle) -> ReferenceModel:
    """Kinds without a reference policy (sft, pt, the reference-free losses, rm)."""
    return ReferenceModel()


def reference_policy(cfg: RlhfConfig, bundle: ModelBundle) -> ReferenceModel:
    """--ref_model; a frozen copy of the model for full training; the base with the LoRA adapter disabled
    (nothing to hold); or log-probs precomputed before training (--precompute_ref_log_probs)."""
    kind = cfg.rlhf.rlhf_type
    if (kind == "grpo" and cfg.rlhf.beta == 0.0) or (kind == "ppo" and cfg.ppo.kl_coef == 0.0):
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
        print(f"[tailorkit] warning: every KTO sample of {', '.join(specs)} has the same label; KTO learns from "
              "both kinds")
    return items


# ---- batches: (pad token id, cfg) -> the function that batches encoded items ----------------------------------

def padded(pad_token_id: int, cfg: SftConfig) -> Collator:
    return Collator(pad_token_id)


def kto_padded(pad_token_id: int, cfg: SftConfig) -> KtoCollator:
    return KtoCollator(pad_token_id)


def pair_padded(pad_token_id: int, cfg: RlhfConfig) -> PairCollator:
    """[chosen; rejected] as one batch, or two with --concatenated_forward false."""
    return PairCollator(pad_token_id, concatenated=cfg.preference.concatenated_forward)


def distill_padded(pad_token_id: int, cfg: RlhfConfig) -> DistillCollator:
    return DistillCollator(pad_token_id)


def unpadded(pad_token_id: int, cfg: SftConfig) -> Callable:
    """grpo's and ppo's batches: the encoded prompts themselves (rollouts are left-padded inside the step)."""
    return prompt_collate


# ---- algorithms: (cfg, bundle, plan, reference) -> the object whose compute_loss the Trainer calls -----------

def sft_algorithm(cfg: SftConfig, bundle: ModelBundle, plan: Plan, reference: ReferenceModel) -> SftAlgorithm:
    size = cfg.dist.sequence_parallel_size
    return SftAlgorithm(plan, SequenceParallel(bundle.model, bundle.family, size) if size > 1 else None)


def dpo_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan, reference: ReferenceModel) -> DpoAlgorithm:
    p = cfg.preference
    return DpoAlgorithm(beta=cfg.rlhf.beta, loss_type=cfg.rlhf.loss_type, label_smoothing=p.label_smoothing,
                        rpo_alpha=p.rpo_alpha, reference=reference, alarm_steps=cfg.rlhf.reward_alarm_steps,
                        concatenated=p.concatenated_forward)


def reference_free_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan,
                             reference: ReferenceModel) -> ReferenceFreeAlgorithm:
    p = cfg.preference
    return ReferenceFreeAlgorithm(cfg.rlhf.rlhf_type, beta=cfg.rlhf.beta, loss_type=cfg.rlhf.loss_type or "sigmoid",
                                  label_smoothing=p.label_smoothing, simpo_gamma=p.simpo_gamma,
                                  cpo_alpha=p.cpo_alpha, concatenated=p.concatenated_forward)


def kto_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan, reference: ReferenceModel) -> KtoAlgorithm:
    p = cfg.preference
    return KtoAlgorithm(beta=cfg.rlhf.beta, desirable_weight=p.desirable_weight,
                        undesirable_weight=p.undesirable_weight, reference=reference,
                        alarm_steps=cfg.rlhf.reward_alarm_steps)


def reward_model_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan,
                           reference: ReferenceModel) -> RewardModelAlgorithm:
    return RewardModelAlgorithm(center_rewards_coefficient=cfg.preference.center_rewards_coefficient,
                                alarm_steps=cfg.rlhf.reward_alarm_steps,
                                concatenated=cfg.preference.concatenated_forward)


def sampler_of(cfg: RlhfConfig, bundle: ModelBundle) -> Sampler:
    """How the online kinds sample: --max_completion_length, --temperature ...; grpo's multi-turn scheduler."""
    g = cfg.grpo
    sampling = Sampling(g.max_completion_length, g.temperature, g.top_p, g.top_k)
    scheduler = load_scheduler(g.multi_turn_scheduler, g.external_plugins) if g.multi_turn_scheduler else None
    return Sampler(bundle.processor, sampling, scheduler=scheduler, max_turns=g.max_turns,
                   max_length=cfg.data.max_length)


def rewards_of(cfg: RlhfConfig):
    """--reward_funcs (built-ins and --external_plugins) and --reward_model, with --reward_weights."""
    g = cfg.grpo
    return build_rewards(g.reward_funcs, g.reward_weights, g.external_plugins, format_pattern=g.format_pattern,
                         max_completion_length=g.max_completion_length, soft_cache_length=g.soft_cache_length,
                         reward_models=g.reward_model, torch_dtype=cfg.model.torch_dtype)


def grpo_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan, reference: ReferenceModel) -> GrpoAlgorithm:
    g = cfg.grpo
    settings = GrpoSettings(
        num_generations=g.num_generations, max_completion_length=g.max_completion_length, beta=cfg.rlhf.beta,
        epsilon=g.epsilon, epsilon_high=g.epsilon_high, loss_type=cfg.rlhf.loss_type,
        importance_sampling_level=g.importance_sampling_level, advantage_estimator=g.advantage_estimator,
        scale_rewards=g.scale_rewards, kl_in_reward=g.kl_in_reward, temperature=g.temperature,
        dynamic_sample=g.dynamic_sample, max_resample_times=g.max_resample_times, overlong_filter=g.overlong_filter,
        num_iterations=g.num_iterations)
    return GrpoAlgorithm(sampler_of(cfg, bundle), rewards_of(cfg), settings, reference=reference,
                         alarms=RolloutAlarms(cfg.rlhf.reward_alarm_steps, g.kl_alarm))


def ppo_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan, reference: ReferenceModel) -> PpoAlgorithm:
    p = cfg.ppo
    settings = PpoSettings(kl_coef=p.kl_coef, kl_estimator=p.kl_estimator, cliprange=p.cliprange,
                           cliprange_value=p.cliprange_value, vf_coef=p.vf_coef, gamma=p.gamma, lam=p.lam,
                           whiten_rewards=p.whiten_rewards, missing_eos_penalty=p.missing_eos_penalty,
                           num_ppo_epochs=p.num_ppo_epochs, temperature=cfg.grpo.temperature)
    critic = Critic()
    if p.value_model:
        m = cfg.model
        source = load_reward_model(p.value_model, torch_dtype=m.torch_dtype) \
            if trained_head(p.value_model) is not None else load_bundle(ModelArgs(model=p.value_model, torch_dtype=m.torch_dtype,
                                       trust_remote_code=m.trust_remote_code))
        critic = Critic(source, bundle.tokenizer)
    return PpoAlgorithm(sampler_of(cfg, bundle), rewards_of(cfg), settings, critic=critic, reference=reference)


def gkd_algorithm(cfg: RlhfConfig, bundle: ModelBundle, plan: Plan, reference: ReferenceModel) -> GkdAlgorithm:
    g = cfg.gkd
    return GkdAlgorithm(sampler_of(cfg, bundle), reference, beta=cfg.rlhf.beta, temperature=cfg.grpo.temperature,
                        lmbda=g.lmbda, seq_kd=g.seq_kd, top_k=g.gkd_logits_topk, seed=cfg.train.seed)


# ---- the registry -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """One training kind, chosen by verb (sft, pt) or by --rlhf_type."""

    name: str
    # (specs, *, system, seed) -> the parsed rows of the datasets, every row checked (before any weights load)
    load: Callable[..., list]
    # (items, processor, *, max_length, truncation, desc) -> (encoded items, EncodeReport), through data/'s encoder
    encode: Callable[..., tuple]
    collator: Callable[[int, SftConfig], Callable]  # (pad token id, cfg) -> the function that batches encoded items
    # (cfg, bundle, plan, reference) -> the object whose compute_loss the Trainer calls
    algorithm: Callable[..., Algorithm]
    text: bool = False  # rows are raw-text documents (pt); --streaming reads them as such
    load_model: Callable[[SftConfig], ModelBundle] = load_policy  # cfg -> the model to train
    tuner: Callable[[SftConfig, ModelBundle], TunerArgs] = configured_tuner  # the tuner settings to apply
    # the reference policy (gkd: the teacher), if any
    reference: Callable[[SftConfig, ModelBundle], ReferenceModel] = no_reference


def _pairs(name: str, algorithm: Callable, **kwargs) -> Kind:
    """A kind trained on chosen/rejected pairs."""
    return Kind(name, load=functools.partial(load_rows, parse=parse_preference_row),
                encode=functools.partial(encode_all, encode_item=encode_pair), collator=pair_padded,
                algorithm=algorithm, **kwargs)


def _prompts(name: str, algorithm: Callable, **kwargs) -> Kind:
    """An online kind: prompt rows, completions sampled and scored while training."""
    return Kind(name, load=functools.partial(load_rows, parse=parse_prompt_row),
                encode=functools.partial(encode_all, encode_item=encode_prompt_sample), collator=unpadded,
                algorithm=algorithm, reference=reference_policy, **kwargs)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("sft", load=load_conversations, encode=encode_all, collator=padded, algorithm=sft_algorithm),
    Kind("pt", load=load_text_rows, encode=encode_all, collator=padded, algorithm=sft_algorithm, text=True),
    _pairs("dpo", dpo_algorithm, reference=reference_policy),
    _pairs("orpo", reference_free_algorithm),
    _pairs("simpo", reference_free_algorithm),
    _pairs("cpo", reference_free_algorithm),
    Kind("kto", load=load_kto_rows, encode=encode_kto_all, collator=kto_padded, algorithm=kto_algorithm,
         reference=reference_policy),
    _pairs("rm", reward_model_algorithm, load_model=load_reward_policy, tuner=reward_tuner),
    _prompts("ppo", ppo_algorithm, load_model=load_ppo_policy, tuner=value_tuner),
    Kind("gkd", load=load_conversations, encode=functools.partial(encode_all, encode_item=encode_distill),
         collator=distill_padded, algorithm=gkd_algorithm, reference=load_teacher),
    _prompts("grpo", grpo_algorithm),
)}
