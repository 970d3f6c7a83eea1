"""What computes a training kind's loss: the ``Algorithm`` protocol, the SFT algorithm, pieces every algorithm shares.

Our one ``Trainer`` (train/trainer.py) calls the algorithm it was built with; it never branches on the
kind. The algorithms: ``SftAlgorithm`` here (sft, pt), ``DpoAlgorithm``, ``ReferenceFreeAlgorithm`` (orpo,
simpo, cpo), ``KtoAlgorithm``, ``RewardModelAlgorithm`` in train/preference.py, ``GrpoAlgorithm`` in
train/grpo.py, ``PpoAlgorithm`` in train/ppo.py, ``GkdAlgorithm`` in train/gkd.py; train/kinds.py says which
kind uses which. An algorithm whose rollouts serve several optimizer steps (grpo --num_iterations, ppo
--num_ppo_epochs) says so with a ``rollout_reuse`` attribute: the Trainer then repeats each step's batches.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol, runtime_checkable

import torch

from ..tuners.plan import Plan
from ..tuners.runtime import adapter_penalty
from ..distributed.ulysses import SequenceParallel
from .losses import sft_loss


@runtime_checkable
class Algorithm(Protocol):
    """The loss of one training kind, and the metrics it logs next to it."""

    def compute_loss(self, trainer, model, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: int | torch.Tensor | None = None):
        """The loss of one micro-batch ``inputs`` (what the kind's collator built), ready for backward.

        It is already scaled for gradient accumulation: the Trainer never rescales it. ``num_items_in_batch``
        is the number of supervised tokens of the whole optimizer step (all micro-batches, all processes)
        when the batch has ``labels``, else None. With ``return_outputs`` it returns ``(loss, outputs)``.
        ``trainer`` gives the accelerator, the arguments and the accumulation state.
        """

    def pop_metrics(self, logs: dict) -> dict:
        """The algorithm's own metrics averaged since the last log record, to merge into ``logs``.

        Keys get an ``eval_`` prefix when ``logs`` is an evaluation record; train and eval are kept apart.
        """


class SftAlgorithm:
    """sft and pt: token cross-entropy per supervised token of the whole optimizer step, plus AdaLoRA's penalty.

    Dividing by the step's supervised-token count (not per micro-batch) makes the update the same however
    the step's tokens are split into micro-batches, packs or processes (8x1 = 1x8 = packed = 2 GPUs x 4).
    """

    def __init__(self, plan: Plan | None = None, sequence_parallel: SequenceParallel | None = None):
        self.plan = plan  # the tuner plan: AdaLoRA's orthogonality penalty is added to the loss
        self.sequence_parallel = sequence_parallel  # --sequence_parallel_size > 1: each rank's shard of the tokens

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        sp = self.sequence_parallel if model.training and num_items_in_batch is not None else None
        if self.sequence_parallel is not None:
            self.sequence_parallel.current = None  # until split() plans this batch, the hooks pass through
        if sp is not None:
            labels = sp.split(inputs, labels)
        if trainer.args.use_liger_kernel and model.training and sp is None:
            # Liger's fused linear cross-entropy never materialises the logits; it takes the labels and the
            # step's token count and computes sft_loss's sum / num_items (same shift, same ignore index).
            outputs = model(**inputs, labels=labels, num_items_in_batch=num_items_in_batch, use_cache=False)
            loss = outputs.loss
        else:
            outputs = model(**inputs, use_cache=False)
            loss = sft_loss(outputs.logits, labels, num_items_in_batch) if sp is None else \
                sp.loss(outputs.logits, labels, num_items_in_batch)
        if num_items_in_batch is not None and trainer.args.average_tokens_across_devices:
            loss = loss * trainer.accelerator.num_processes  # DDP averages gradients; the count is global
        penalty = adapter_penalty(trainer.model, self.plan)
        if penalty is not None and model.training:  # once per optimizer step, whatever the accumulation
            loss = loss + penalty / trainer.args.gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def pop_metrics(self, logs: dict) -> dict:
        return {}  # the loss is all sft logs


class Metrics:
    """Per-step values averaged into the next log record; train and eval kept apart."""

    def __init__(self):
        self.values = {"train": defaultdict(list), "eval": defaultdict(list)}

    def add(self, model, **values) -> None:
        mode = "train" if model.training else "eval"
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                if not value.numel():  # e.g. no undesirable sample in this KTO batch
                    continue
                value = value.float().mean().item()
            self.values[mode][key].append(float(value))

    def pop(self, logs: dict) -> dict:
        """Averages for the log record ``logs`` (an eval record when its keys start with 'eval_')."""
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        out = {prefix + k: sum(v) / len(v) for k, v in self.values[mode].items() if v}
        self.values[mode].clear()
        return out


class RolloutReuse:
    """Keeps each micro-batch's rollout for ``steps`` optimizer steps (the Trainer repeats the batches that often).

    The rollout made at the first repetition is reused at the others when the prompts are the same ones;
    otherwise (a resumed run, the end of an epoch) a fresh rollout is made, so nothing silently trains on
    the wrong prompts.
    """

    def __init__(self, steps: int = 1):
        self.steps, self.calls, self.kept = steps, 0, {}

    def get(self, trainer, model, prompts: list, make):
        """(the micro-batch's rollout, whether it was made now)."""
        if self.steps == 1 or not model.training:
            return make(), True
        accumulation = trainer.args.gradient_accumulation_steps
        slot, repetition = self.calls % accumulation, (self.calls // accumulation) % self.steps
        self.calls += 1
        key = [(p.sample.conv.source, p.sample.conv.line, tuple(p.prompt.input_ids)) for p in prompts]
        kept = self.kept.get(slot)
        if repetition == 0 or kept is None or kept[0] != key:
            self.kept[slot] = (key, make())
            return self.kept[slot][1], True
        return kept[1], False


def per_step_loss(trainer, model, loss, return_outputs: bool):
    """A micro-batch mean loss scaled for gradient accumulation, in the form ``compute_loss`` returns.

    Preference and GRPO losses are means over the micro-batch, so each micro-batch contributes
    1 / (accumulation steps) of the step. They return no logits: evaluation runs loss-only.
    """
    if model.training:
        loss = loss / trainer.current_gradient_accumulation_steps
    return (loss, {}) if return_outputs else loss
