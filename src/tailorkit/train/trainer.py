"""Our one subclass of the Hugging Face Trainer: algorithms differ only by their loss."""

from __future__ import annotations

import transformers

from .losses import sft_loss


class Trainer(transformers.Trainer):
    """HF Trainer with a per-supervised-token loss that is exact across gradient accumulation."""

    loss_is_scaled_for_ga = True  # sft_loss divides by the step's token count

    def __init__(self, *args, algorithm=None, **kwargs):
        super().__init__(*args, **kwargs)
        # None: the SFT loss below. Otherwise an object (train/preference.py, train/grpo.py) with
        # compute_loss(trainer, model, inputs, return_outputs) and pop_metrics(logs).
        self.algorithm = algorithm
        # Make the base class count supervised tokens over the whole accumulation window for us.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.algorithm is not None:
            return self.algorithm.compute_loss(self, model, inputs, return_outputs=return_outputs)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        loss = sft_loss(outputs.logits, labels, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self.algorithm is not None:
            logs = {**logs, **self.algorithm.pop_metrics(logs)}
        super().log(logs, *args, **kwargs)
