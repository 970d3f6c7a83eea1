"""Our one subclass of the Hugging Face Trainer: algorithms differ only by their loss."""

from __future__ import annotations

import transformers

from .losses import sft_loss


class Trainer(transformers.Trainer):
    """HF Trainer with a per-supervised-token loss that is exact across gradient accumulation."""

    loss_is_scaled_for_ga = True  # sft_loss divides by the step's token count

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Make the base class count supervised tokens over the whole accumulation window for us.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, list):
            return _length_grouped(dataset, self.args.train_batch_size * self.args.gradient_accumulation_steps)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(eval_dataset, list):
            return _length_grouped(eval_dataset, self.args.eval_batch_size)
        return super()._get_eval_sampler(eval_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        loss = sft_loss(outputs.logits, labels, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        return (loss, outputs) if return_outputs else loss


def _length_grouped(dataset: list, batch_size: int):
    """HF's LengthGroupedSampler over our Encoded samples (objects, not dicts: it is handed their lengths)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    return LengthGroupedSampler(batch_size, lengths=[len(x) for x in dataset])
