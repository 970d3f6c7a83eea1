"""Preference losses (DPO and variants, ORPO, SimPO, CPO, KTO, reward model) and their algorithms.

A loss is a pure function of sequence log-probabilities, tested against TRL's implementation on
identical inputs. An algorithm (the ``train.algorithm.Algorithm`` protocol) is the loss plus the batch it
needs: our one ``Trainer`` calls ``algorithm.compute_loss(trainer, model, inputs)`` and
``algorithm.pop_metrics(...)`` when logging. Losses are means over the micro-batch divided by the
accumulation steps (the Trainer does not rescale).

Pairs run as one forward pass over [chosen; rejected] (``--concatenated_forward true``, the default). Two
passes over the same parameters before one backward break DDP under reentrant gradient checkpointing
(each checkpointed segment's backward marks the parameters ready again); the Trainer names that fix.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F

from ..config.rlhf import LOSS_CHOICES
from ..data.preference import EncodedPair
from ..models.value_head import sequence_scores
from .algorithm import Metrics, per_step_loss
from .losses import token_log_probs

DPO_LOSSES = LOSS_CHOICES["dpo"]
CPO_LOSSES = LOSS_CHOICES["cpo"]
# Batch keys that are ours, never model inputs.
_EXTRA_PREFIXES = ("ref_", "kl_", "rejected_")
_EXTRA_KEYS = ("labels", "label", "margin", "prompts")


# ---- losses: pure functions of log-probabilities -------------------------------------------------------------

def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0, chosen_lengths=None, rejected_lengths=None):
    """Per-pair DPO losses and the implicit rewards (beta * log-ratio) of chosen and rejected.

    ``ipo`` averages the log-ratios over the reply tokens (``*_lengths``), as TRL does.
    """
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        delta = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * delta)
                  + label_smoothing * F.logsigmoid(-beta * delta)) / (1 - 2 * label_smoothing)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(DPO_LOSSES)}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def orpo_loss(chosen_avg_logps, rejected_avg_logps, chosen_nll, *, beta: float):
    """ORPO: NLL of the chosen reply minus beta * log sigmoid(log odds ratio); takes per-token mean log-probs."""
    c, r = chosen_avg_logps.float(), rejected_avg_logps.float()
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))
    ratio = F.logsigmoid(log_odds)
    return chosen_nll - (beta * ratio).mean(), beta * c.detach(), beta * r.detach()


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def cpo_loss(chosen_logps, rejected_logps, chosen_nll, *, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, simpo_gamma: float = 1.0, cpo_alpha: float = 1.0):
    """CPO (sum log-probs) and SimPO (``loss_type='simpo'``, mean log-probs, margin gamma); plus cpo_alpha * NLL."""
    logits = chosen_logps - rejected_logps
    if loss_type == "simpo":
        logits = logits - simpo_gamma / beta
    if loss_type in ("sigmoid", "simpo"):
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown CPO loss_type {loss_type!r}; choose one of {', '.join(CPO_LOSSES)}")
    loss = losses.mean() + cpo_alpha * chosen_nll
    return loss, beta * chosen_logps.detach(), beta * rejected_logps.detach()


def kto_loss(logps, ref_logps, labels, kl_logps, ref_kl_logps, *, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """KTO on unpaired samples: desirable (label true) pulled above, undesirable below, the batch KL estimate
    (averaged over every process's samples, as TRL gathers it)."""
    kl = kto_kl(kl_logps, ref_kl_logps)
    ratio = logps - ref_logps
    chosen, rejected = ratio[labels], ratio[~labels]
    losses = torch.cat((desirable_weight * (1 - torch.sigmoid(beta * (chosen - kl))),
                        undesirable_weight * (1 - torch.sigmoid(beta * (kl - rejected)))))
    return losses.nanmean(), beta * chosen.detach(), beta * rejected.detach(), kl


def kto_kl(kl_logps, ref_kl_logps) -> torch.Tensor:
    """KTO's estimate of KL(policy || reference): the mean log-ratio of the mismatched (KL) samples of the whole
    step's batch, all processes together (sum and count all-reduced), clamped at 0; no gradient."""
    import torch.distributed as dist

    diff = (kl_logps - ref_kl_logps).detach().float()
    total = torch.stack([diff.sum(), torch.tensor(float(diff.numel()), device=diff.device)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)  # every rank runs it every step: KTO's batches always hold KL samples
    return (total[0] / total[1].clamp(min=1)).clamp(min=0)


def reward_model_loss(chosen_rewards, rejected_rewards, *, margin=None, center_rewards_coefficient=None):
    """Bradley-Terry: -log sigmoid(r_chosen - r_rejected [- margin]); optional pull of rewards towards 0."""
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * torch.mean((chosen_rewards + rejected_rewards) ** 2)
    return loss


# ---- shared pieces of the algorithms -------------------------------------------------------------------------

def model_inputs(batch: dict, prefix: str = "") -> dict:
    """The model's keyword arguments out of a batch (keys with ``prefix`` stripped; our extras dropped)."""
    out = {}
    for key, value in batch.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        if key in _EXTRA_KEYS or (not prefix and key.startswith(_EXTRA_PREFIXES)):
            continue
        out[key] = value
    return out


def token_logps(model, batch: dict, prefix: str = "", temperature: float = 1.0):
    """(log-prob of each next token [N, T-1] (0 off the replies), reply mask [N, T-1]) for a padded batch."""
    logits = model(**model_inputs(batch, prefix), use_cache=False).logits
    return token_log_probs(logits, batch[prefix + "labels"], temperature)


def pair_token_logps(model, batch: dict, concatenated: bool = True):
    """((chosen per-token log-probs, mask), (rejected ..., mask)) of a pair batch (see ``PairCollator``)."""
    if not concatenated:
        return token_logps(model, batch), token_logps(model, batch, prefix="rejected_")
    per_token, mask = token_logps(model, batch)
    n = per_token.shape[0] // 2
    return (per_token[:n], mask[:n]), (per_token[n:], mask[n:])


def pair_sequence_logps(model, batch: dict, concatenated: bool = True):
    """(chosen, rejected) summed log-probs of a pair batch."""
    return tuple((lp * m).sum(-1) for lp, m in pair_token_logps(model, batch, concatenated))


def sequence_logps(model, batch: dict, prefix: str = ""):
    """Summed log-prob of each sequence's supervised tokens."""
    per_token, mask = token_logps(model, batch, prefix)
    return (per_token * mask).sum(-1)


def chosen_nll(per_token, mask):
    """Mean NLL over the chosen replies' tokens."""
    return -per_token[mask].mean()


def pair_metrics(chosen_rewards, rejected_rewards, **more) -> dict:
    """What every pairwise algorithm logs: rewards, margins, accuracy (and the extras given)."""
    return {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
            "rewards/margins": chosen_rewards - rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(), **more}


class ReferenceModel:
    """The reference policy: a separate frozen model, or (LoRA) the trained model with its adapter disabled."""

    def __init__(self, model: torch.nn.Module | None = None, precompute_batch_size: int | None = None):
        self.model = model
        self.precompute_batch_size = precompute_batch_size  # --precompute_ref_log_probs: batch of that pass
        if model is not None:
            model.eval().requires_grad_(False)

    def precompute(self, datasets: list[list], collate, model) -> None:
        """With --precompute_ref_log_probs, fill the encoded items' reference log-probs now, from the untrained
        ``model``; the algorithms then read them from the batch instead of running a reference."""
        if self.precompute_batch_size is None:
            return
        items = [item for dataset in datasets for item in dataset]
        precompute_reference(items, collate, model, batch_size=self.precompute_batch_size)
        print(f"[tailorkit] reference log-probs precomputed for {len(items)} samples")

    @contextlib.contextmanager
    def active(self, trainer, model):
        """Yields the module to run as the reference (no gradients)."""
        with torch.no_grad():
            if self.model is not None:
                device = trainer.accelerator.device
                if next(self.model.parameters()).device != device:
                    self.model.to(device)
                yield self.model
                return
            unwrapped = trainer.accelerator.unwrap_model(model)
            if not hasattr(unwrapped, "disable_adapter"):
                raise RuntimeError("no reference model: full training needs --ref_model, a frozen copy or "
                                   "--precompute_ref_log_probs")
            with unwrapped.disable_adapter():
                yield unwrapped


class RewardAlarm(UserWarning):
    """Training runs but cannot learn (flat margins, constant rewards, zero advantages) or drifts (KL)."""


class FlatMarginAlarm:
    """Warns when chosen and rejected get identical rewards for ``steps`` optimizer steps in a row.

    That means the policy equals its reference (nothing trains, or the reference is the policy
    itself) or the reward head ignores its input: the loss stays at its starting value.
    """

    def __init__(self, steps: int = 5):
        self.steps, self.streak = steps, 0

    def check(self, trainer, model, chosen_rewards, rejected_rewards) -> None:
        if not model.training:
            return
        flat = bool(torch.equal(chosen_rewards, rejected_rewards)) if chosen_rewards.shape == rejected_rewards.shape \
            else bool((chosen_rewards == 0).all() and (rejected_rewards == 0).all())
        self.streak = self.streak + 1 if flat else 0
        if self.streak == self.steps * trainer.current_gradient_accumulation_steps:
            warnings.warn(f"chosen and rejected rewards have been identical for {self.steps} steps: the policy "
                          "equals the reference (is anything trainable? is --ref_model the model being trained?) "
                          "and the loss cannot move", RewardAlarm, stacklevel=3)


# ---- algorithms ----------------------------------------------------------------------------------------------

class DpoAlgorithm:
    """DPO (sigmoid / ipo / hinge / robust) with optional RPO NLL term; reference log-probs from the
    batch (precomputed) or from the reference model."""

    def __init__(self, *, beta: float, loss_type: str, label_smoothing: float = 0.0, rpo_alpha: float | None = None,
                 reference: ReferenceModel | None = None, alarm_steps: int = 5, concatenated: bool = True):
        if loss_type not in DPO_LOSSES:
            raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(DPO_LOSSES)}")
        self.beta, self.loss_type, self.label_smoothing, self.rpo_alpha = beta, loss_type, label_smoothing, rpo_alpha
        self.reference = reference or ReferenceModel()
        self.concatenated = concatenated
        self.metrics = Metrics()
        self.alarm = FlatMarginAlarm(alarm_steps)

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        (chosen, c_mask), (rejected, r_mask) = pair_token_logps(model, inputs, self.concatenated)
        c_logps, r_logps = (chosen * c_mask).sum(-1), (rejected * r_mask).sum(-1)
        if "ref_chosen_logps" in inputs:
            ref_c, ref_r = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            with self.reference.active(trainer, model) as ref:
                ref_c, ref_r = pair_sequence_logps(ref, inputs, self.concatenated)
        losses, cr, rr = dpo_loss(c_logps, r_logps, ref_c, ref_r, beta=self.beta, loss_type=self.loss_type,
                                  label_smoothing=self.label_smoothing, chosen_lengths=c_mask.sum(-1),
                                  rejected_lengths=r_mask.sum(-1))
        loss = losses.mean()
        if self.rpo_alpha:
            loss = loss + self.rpo_alpha * chosen_nll(chosen, c_mask)
        self.alarm.check(trainer, model, cr, rr)
        self.metrics.add(model, **pair_metrics(cr, rr, **{"logps/chosen": c_logps.detach(),
                                                          "logps/rejected": r_logps.detach()}))
        return per_step_loss(trainer, model, loss, return_outputs)

    def pop_metrics(self, logs: dict) -> dict:
        return self.metrics.pop(logs)


class ReferenceFreeAlgorithm:
    """ORPO, CPO and SimPO: no reference model; ORPO and SimPO use per-token mean log-probs."""

    def __init__(self, kind: str, *, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 simpo_gamma: float = 1.0, cpo_alpha: float = 1.0, concatenated: bool = True):
        self.kind, self.beta, self.loss_type = kind, beta, loss_type
        self.label_smoothing, self.simpo_gamma, self.cpo_alpha = label_smoothing, simpo_gamma, cpo_alpha
        self.concatenated = concatenated
        self.metrics = Metrics()

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        (chosen, c_mask), (rejected, r_mask) = pair_token_logps(model, inputs, self.concatenated)
        total = ((chosen * c_mask).sum(-1), (rejected * r_mask).sum(-1))
        average = (total[0] / c_mask.sum(-1).clamp(min=1), total[1] / r_mask.sum(-1).clamp(min=1))
        nll = chosen_nll(chosen, c_mask)
        if self.kind == "orpo":
            loss, cr, rr = orpo_loss(*average, nll, beta=self.beta)
        else:
            logps = average if self.loss_type in ("simpo", "ipo") else total
            loss, cr, rr = cpo_loss(*logps, nll, beta=self.beta, loss_type=self.loss_type,
                                    label_smoothing=self.label_smoothing, simpo_gamma=self.simpo_gamma,
                                    cpo_alpha=self.cpo_alpha)
        self.metrics.add(model, **pair_metrics(cr, rr, nll_loss=nll.detach(), **{
            "logps/chosen": total[0].detach(), "logps/rejected": total[1].detach()}))
        return per_step_loss(trainer, model, loss, return_outputs)

    def pop_metrics(self, logs: dict) -> dict:
        return self.metrics.pop(logs)


class KtoAlgorithm:
    """KTO on unpaired samples; the KL estimate uses each prompt with another sample's reply."""

    def __init__(self, *, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 reference: ReferenceModel | None = None, alarm_steps: int = 5):
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight
        self.reference = reference or ReferenceModel()
        self.metrics = Metrics()
        self.alarm = FlatMarginAlarm(alarm_steps)

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = sequence_logps(model, inputs)
        with torch.no_grad():
            kl_logps = sequence_logps(model, inputs, prefix="kl_")
        if "ref_logps" in inputs:
            ref_logps, ref_kl = inputs["ref_logps"], inputs["ref_kl_logps"]
        else:
            with self.reference.active(trainer, model) as ref:
                ref_logps, ref_kl = sequence_logps(ref, inputs), sequence_logps(ref, inputs, prefix="kl_")
        labels = inputs["label"].bool()
        loss, cr, rr, kl = kto_loss(logps, ref_logps, labels, kl_logps, ref_kl, beta=self.beta,
                                    desirable_weight=self.desirable_weight,
                                    undesirable_weight=self.undesirable_weight)
        self.alarm.check(trainer, model, cr, rr)
        self.metrics.add(model, **{"kl": kl, "rewards/chosen": cr, "rewards/rejected": rr})
        return per_step_loss(trainer, model, loss, return_outputs)

    def pop_metrics(self, logs: dict) -> dict:
        return self.metrics.pop(logs)


class RewardModelAlgorithm:
    """Reward model on chosen/rejected pairs: the value head (models/value_head.py) scores each conversation at
    its last token; Bradley-Terry loss, with the rows' 'margin' when they have one."""

    def __init__(self, *, center_rewards_coefficient: float | None = None, alarm_steps: int = 5,
                 concatenated: bool = True):
        self.center_rewards_coefficient = center_rewards_coefficient
        self.concatenated = concatenated
        self.metrics = Metrics()
        self.alarm = FlatMarginAlarm(alarm_steps)

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.concatenated:
            chosen, rejected = sequence_scores(model, model_inputs(inputs)).chunk(2)
        else:
            chosen = sequence_scores(model, model_inputs(inputs))
            rejected = sequence_scores(model, model_inputs(inputs, "rejected_"))
        loss = reward_model_loss(chosen, rejected, margin=inputs.get("margin"),
                                 center_rewards_coefficient=self.center_rewards_coefficient)
        self.alarm.check(trainer, model, chosen.detach(), rejected.detach())
        self.metrics.add(model, **pair_metrics(chosen.detach(), rejected.detach()))
        return per_step_loss(trainer, model, loss, return_outputs)

    def pop_metrics(self, logs: dict) -> dict:
        return self.metrics.pop(logs)


@torch.no_grad()
def precompute_reference(items: list, collate, model, *, batch_size: int = 8) -> None:
    """Fill ``ref_*`` log-probs of encoded pairs / KTO samples with ``model`` (the untrained policy)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in range(0, len(items), batch_size):
            chunk = items[i: i + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            if isinstance(chunk[0], EncodedPair):
                chosen, rejected = pair_sequence_logps(model, batch, "rejected_input_ids" not in batch)
                for item, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
                    item.ref_chosen_logps, item.ref_rejected_logps = c, r
            else:
                logps = sequence_logps(model, batch).tolist()
                for item, lp, kl in zip(chunk, logps, sequence_logps(model, batch, prefix="kl_").tolist()):
                    item.ref_logps, item.ref_kl_logps = lp, kl
    finally:
        model.train(was_training)
