"""GRPO: rollouts from encoder-built prompts, group-normalised advantages, clipped objective.

Each training step samples ``num_generations`` completions per prompt with ``model.generate`` on a
left-padded batch of the prompts ``encode_prompt`` built before training (data/preference.py), checks
per batch that these prompt tokens are exactly the training encoding's prompt, scores the completions,
and optimises the clipped surrogate (token-level ratio: GRPO; sequence-level: GSPO) with an optional KL
to the reference.
Generation is on-policy, so the "old" log-probs are the current ones detached (ratio 1, as in TRL
with one iteration per batch).
"""

from __future__ import annotations

import warnings

import torch

from ..config.rlhf import LOSS_CHOICES
from ..data.collate import Collator, left_pad
from ..data.encode import IGNORE, Encoded
from ..data.preference import EncodedPrompt, check_prompt_matches
from .algorithm import Metrics, per_step_loss
from .preference import ReferenceModel, RewardAlarm, token_logps
from .rewards import RewardSet

GRPO_LOSSES = LOSS_CHOICES["grpo"]
__all__ = ["GRPO_LOSSES", "GrpoAlgorithm", "RewardAlarm", "RolloutAlarms", "group_advantages", "grpo_loss"]


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str = "group") -> torch.Tensor:
    """(r - mean of its group) / (std + 1e-4); ``scale`` picks the std: group, batch or none (no division)."""
    grouped = rewards.view(-1, num_generations)
    advantages = rewards - grouped.mean(dim=1).repeat_interleave(num_generations)
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(num_generations)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        return advantages
    return advantages / (std + 1e-4)


def grpo_loss(per_token_logps, old_per_token_logps, advantages, mask, *, ref_per_token_logps=None, beta: float = 0.0,
              epsilon: float = 0.2, epsilon_high: float | None = None, loss_type: str = "grpo",
              importance_sampling_level: str = "token", max_completion_length: int | None = None):
    """The clipped surrogate loss (+ beta * k3 KL to the reference); returns (loss, per-token KL or None).

    Aggregation: grpo = mean of per-sequence token means; bnpo and dapo = mean over all tokens of the
    batch; dr_grpo = token sum / (sequences * max_completion_length).
    """
    mask = mask.to(per_token_logps.dtype)
    log_ratio = per_token_logps - old_per_token_logps
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_ratio)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + (epsilon if epsilon_high is None else epsilon_high))
    adv = advantages.unsqueeze(1)
    per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
    kl = None
    if beta != 0.0:
        diff = ref_per_token_logps - per_token_logps
        kl = torch.exp(diff) - diff - 1
        per_token_loss = per_token_loss + beta * kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    else:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; choose one of {', '.join(GRPO_LOSSES)}")
    return loss, kl


class RolloutAlarms:
    """Warnings (``RewardAlarm``) for training that cannot learn or is drifting away from the reference."""

    def __init__(self, constant_steps: int = 5, kl_limit: float = 10.0):
        self.constant_steps, self.kl_limit = constant_steps, kl_limit
        self.constant_streak = 0

    def check(self, rewards: torch.Tensor, advantages: torch.Tensor, num_generations: int,
              kl: float | None = None) -> list[str]:
        """Warn about this step; returns the messages (also issued as warnings)."""
        messages = []
        grouped = rewards.view(-1, num_generations)
        constant = bool((grouped.max(dim=1).values == grouped.min(dim=1).values).all())
        self.constant_streak = self.constant_streak + 1 if constant else 0
        if self.constant_streak == self.constant_steps:
            values = sorted({round(v, 4) for v in grouped[:, 0].tolist()})
            messages.append(f"the reward has been constant within every group for {self.constant_steps} steps "
                            f"(values {values[:5]}): GRPO has nothing to learn from; check the reward functions, "
                            "the 'solution' column or raise --temperature / --num_generations")
        if bool((advantages == 0).all()) and not constant:
            messages.append("every advantage is zero this step: the policy gets no gradient from the rewards")
        if kl is not None and kl > self.kl_limit:
            messages.append(f"mean KL to the reference is {kl:.3g} (> kl_alarm {self.kl_limit}): the policy is "
                            "drifting; lower --learning_rate or raise --beta")
        for text in messages:
            warnings.warn(text, RewardAlarm, stacklevel=3)
        return messages


class GrpoAlgorithm:
    """Rollout + reward + clipped objective for batches of ``EncodedPrompt`` (prompts encoded once, up front)."""

    def __init__(self, processor, rewards: RewardSet, *, num_generations: int, max_completion_length: int,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, beta: float = 0.04,
                 epsilon: float = 0.2, epsilon_high: float | None = None, loss_type: str = "grpo",
                 importance_sampling_level: str = "token", scale_rewards: str = "group",
                 reference: ReferenceModel | None = None, alarms: RolloutAlarms | None = None):
        if loss_type not in GRPO_LOSSES:
            raise ValueError(f"unknown GRPO loss_type {loss_type!r}; choose one of {', '.join(GRPO_LOSSES)}")
        self.processor, self.rewards = processor, rewards
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.num_generations, self.max_completion_length = num_generations, max_completion_length
        self.sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None)
        self.temperature, self.beta, self.epsilon, self.epsilon_high = temperature, beta, epsilon, epsilon_high
        self.loss_type, self.importance_sampling_level, self.scale_rewards = (loss_type, importance_sampling_level,
                                                                              scale_rewards)
        self.reference = reference or ReferenceModel()
        self.alarms = alarms or RolloutAlarms()
        self.collate = Collator(self.tokenizer.pad_token_id)
        self.metrics = Metrics()

    def _eos_ids(self, model) -> set[int]:
        eos = getattr(model.generation_config, "eos_token_id", None) or self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    @torch.no_grad()
    def rollout(self, model, samples: list[EncodedPrompt]) -> tuple[list[Encoded], list[list[int]], list[str]]:
        """(prompt encodings, completion token ids, decoded completions), ``num_generations`` per prompt in order."""
        prompts = [s.prompt for s in samples]
        repeated = [p for p in prompts for _ in range(self.num_generations)]
        batch = left_pad(repeated, self.tokenizer.pad_token_id)
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        was_training = model.training
        model.eval()
        try:
            out = model.generate(**batch, **self.sampling, max_new_tokens=self.max_completion_length, use_cache=True,
                                 pad_token_id=self.tokenizer.pad_token_id)
        finally:
            model.train(was_training)
        width = batch["input_ids"].shape[1]
        for i, sample in enumerate(samples):  # the prompt tokens generation saw, pads removed
            row = i * self.num_generations
            seen = out[row, :width][batch["attention_mask"][row].bool()].tolist()
            first = self._cut(out[row, width:].tolist(), model)
            check_prompt_matches(sample.sample, seen, self.tokenizer.decode(first, skip_special_tokens=True),
                                 self.processor)
        completions = [self._cut(row.tolist(), model) for row in out[:, width:]]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return repeated, completions, texts

    def _cut(self, tokens: list[int], model) -> list[int]:
        """Tokens up to and including the first end-of-sequence token (generate pads after it)."""
        eos = self._eos_ids(model)
        for i, t in enumerate(tokens):
            if t in eos:
                return tokens[: i + 1]
        return tokens

    def _training_batch(self, prompts: list[Encoded], completions: list[list[int]], device) -> dict:
        samples = []
        for p, c in zip(prompts, completions):
            enc = Encoded(input_ids=p.input_ids + c, labels=[IGNORE] * len(p) + c, media=p.media,
                          token_fields={k: v + [0] * len(c) for k, v in p.token_fields.items()})
            samples.append(enc)
        return {k: v.to(device) for k, v in self.collate(samples).items()}

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        samples = inputs["prompts"]
        gen_model = trainer.accelerator.unwrap_model(model)
        prompts, completions, texts = self.rollout(gen_model, samples)
        rows = [s.sample.columns for s in samples]
        columns = {k: [row.get(k) for row in rows for _ in range(self.num_generations)]
                   for k in sorted({k for row in rows for k in row})}
        columns["completion_lengths"] = [len(c) for c in completions]
        columns["completion_ids"] = completions
        total, per_func = self.rewards.score(texts, columns)
        device = trainer.accelerator.device
        rewards = torch.tensor(total, dtype=torch.float32, device=device)
        advantages = group_advantages(rewards, self.num_generations, self.scale_rewards)

        batch = self._training_batch(prompts, completions, device)
        per_token, mask = token_logps(model, batch, temperature=self.temperature)
        ref_tok = None
        if self.beta != 0.0:
            with self.reference.active(trainer, model) as ref:
                ref_tok, _ = token_logps(ref, batch, temperature=self.temperature)
        loss, kl = grpo_loss(per_token, per_token.detach(), advantages, mask, ref_per_token_logps=ref_tok,
                             beta=self.beta, epsilon=self.epsilon, epsilon_high=self.epsilon_high,
                             loss_type=self.loss_type, importance_sampling_level=self.importance_sampling_level,
                             max_completion_length=self.max_completion_length)
        mean_kl = None if kl is None else float((kl.detach() * mask).sum() / mask.sum().clamp(min=1))
        if model.training:
            self.alarms.check(rewards, advantages, self.num_generations, mean_kl)
        grouped = rewards.view(-1, self.num_generations)
        self.metrics.add(model, reward=rewards, reward_std=grouped.std(dim=1),
                         frac_reward_zero_std=(grouped.std(dim=1) == 0).float(),
                         completion_length=mask.sum(-1).float(), **({"kl": mean_kl} if mean_kl is not None else {}),
                         **{f"rewards/{name}": torch.tensor(v) for name, v in per_func.items()})
        return per_step_loss(trainer, model, loss, return_outputs)

    def pop_metrics(self, logs: dict) -> dict:
        return self.metrics.pop(logs)
