"""Our one subclass of the Hugging Face Trainer: algorithms differ only by their loss."""

from __future__ import annotations

import transformers

from ..tuners.optim import build_optimizer
from ..tuners.plan import plan_of
from ..tuners.runtime import plan_callbacks, save_plan_extras
from .losses import sft_loss


class Trainer(transformers.Trainer):
    """HF Trainer with a per-supervised-token loss that is exact across gradient accumulation."""

    loss_is_scaled_for_ga = True  # sft_loss divides by the step's token count

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Make the base class count supervised tokens over the whole accumulation window for us.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        # A model prepared by tuners.plan.apply_tuner carries its declared plan: install its callbacks.
        self.tuner_plan = plan_of(self.model)
        if self.tuner_plan is not None:
            for callback in plan_callbacks(self.model, self.tuner_plan, self.args.seed):
                self.add_callback(callback)

    def create_optimizer(self, model=None):
        """The plan's parameter groups (per-component lr, LoRA+, GaLore) when there is a plan."""
        if self.tuner_plan is None or self.optimizer is not None:
            return super().create_optimizer(model)
        decay = set(self.get_decay_parameter_names(self.model))
        self.optimizer = build_optimizer(self.model, self.tuner_plan, self.args, decay)
        return self.optimizer

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.tuner_plan is not None and self.args.should_save:
            save_plan_extras(self.model, self.tuner_plan, output_dir or self.args.output_dir)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        loss = sft_loss(outputs.logits, labels, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        return (loss, outputs) if return_outputs else loss
