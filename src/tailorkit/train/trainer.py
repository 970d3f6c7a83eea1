"""Our one subclass of the Hugging Face Trainer: algorithms differ only by their loss."""

from __future__ import annotations

import os

import transformers

from ..tuners.optim import build_optimizer
from ..tuners.plan import plan_of
from ..tuners.runtime import adapter_penalty, plan_callbacks, save_plan_extras
from .losses import sft_loss


class Trainer(transformers.Trainer):
    """HF Trainer with a per-supervised-token loss that is exact across gradient accumulation."""

    loss_is_scaled_for_ga = True  # sft_loss divides by the step's token count

    def __init__(self, *args, algorithm=None, checkpoints=None, **kwargs):
        super().__init__(*args, **kwargs)
        # None: the SFT loss below. Otherwise an object (train/preference.py, train/grpo.py) with
        # compute_loss(trainer, model, inputs, return_outputs) and pop_metrics(logs).
        self.algorithm = algorithm
        self.checkpoints = checkpoints  # train.checkpoint.CheckpointWriter: atomic saves, `last`, rotation
        self.batch_hooks = []  # hook(inputs, loss) after every micro-batch: alarms and counters
        self._staging_root = None
        # A resumed stream skips its trained rows itself; the RNG states then wait for the first batch (guarded.py).
        self.restore_rng_at_first_batch = False
        self._pending_rng = None
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
        if self.algorithm is not None:
            return self.algorithm.compute_loss(self, model, inputs, return_outputs=return_outputs)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        if self.args.use_liger_kernel and model.training:
            # Liger's fused linear cross-entropy never materialises the logits; it takes the labels and the
            # step's token count and computes sft_loss's sum / num_items (same shift, same ignore index).
            outputs = model(**inputs, labels=labels, num_items_in_batch=num_items_in_batch, use_cache=False)
            loss = outputs.loss
        else:
            outputs = model(**inputs, use_cache=False)
            loss = sft_loss(outputs.logits, labels, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        penalty = adapter_penalty(self.model, self.tuner_plan)
        if penalty is not None and model.training:  # once per optimizer step, whatever the accumulation
            loss = loss + penalty / self.args.gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self.algorithm is not None:
            logs = {**logs, **self.algorithm.pop_metrics(logs)}
        super().log(logs, *args, **kwargs)

    def _load_rng_state(self, checkpoint):
        if self.restore_rng_at_first_batch and checkpoint is not None:
            self._pending_rng = checkpoint  # the base class would restore them before the data loader starts
            return
        super()._load_rng_state(checkpoint)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._pending_rng is not None:
            checkpoint, self._pending_rng = self._pending_rng, None
            super()._load_rng_state(checkpoint)
        loss = super().training_step(model, inputs, num_items_in_batch)
        for hook in self.batch_hooks:
            hook(inputs, loss)
        return loss

    def _get_output_dir(self, trial):
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """The base class's checkpoint (weights, optimizer, scheduler, RNG, scaler, state), published atomically."""
        if self.checkpoints is None:
            return super()._save_checkpoint(model, trial)
        out = self.checkpoints.output_dir

        def write(folder):
            self._staging_root = str(folder.parent)  # the base class writes <output_dir>/checkpoint-N here
            try:
                super(Trainer, self)._save_checkpoint(model, trial)
            finally:
                self._staging_root = None
            if self.state.best_global_step:  # the base class recorded the staging path
                self.state.best_model_checkpoint = str(out / f"checkpoint-{self.state.best_global_step}")
                if self.args.should_save:
                    self.state.save_to_json(os.path.join(folder, "trainer_state.json"))

        self.checkpoints.publish(f"checkpoint-{self.state.global_step}", write, is_main=self.args.should_save,
                                 barrier=self.accelerator.wait_for_everyone)
        if self.args.should_save:
            self.checkpoints.rotate(best=self.state.best_model_checkpoint)


def _length_grouped(dataset: list, batch_size: int):
    """HF's LengthGroupedSampler over our Encoded samples (objects, not dicts: it is handed their lengths)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    return LengthGroupedSampler(batch_size, lengths=[len(x) for x in dataset])
