"""Our one subclass of the Hugging Face Trainer: the algorithm computes the loss, the plan shapes the optimizer.

Everything a run adds to the base class is given to the constructor: the ``Algorithm`` (the loss), the
tuner ``Plan`` (parameter groups, its callbacks, its extra checkpoint files) and ``TrainerHooks`` (atomic
checkpoints and per-batch observers, built by train/guards.py). ``training_arguments`` is the one place
our config meets ``transformers.TrainingArguments``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers

from ..config.train import SftConfig
from ..distributed.deepspeed import gathered
from ..distributed.engines import READY_TWICE_HINT, engine_arguments, explain_collective_error
from ..distributed.fsdp import ShardedModule, full_state_dict, is_sharded
from ..distributed.ulysses import RepeatedBatches, seeded_order
from ..errors import ConfigError
from ..models.load import resolve_dtype
from ..tuners.modality import adapter_router
from ..tuners.optim import build_optimizer
from ..tuners.plan import Plan
from ..tuners.runtime import extra_parameters, plan_callbacks, save_plan_extras
from .algorithm import Algorithm
from .checkpoint import CheckpointWriter


@dataclass
class TrainerHooks:
    """What the run's guards (train/guards.py) give the Trainer when it is built."""

    checkpoints: CheckpointWriter | None = None  # atomic saves, `last`, rotation; None: the base class's saving
    after_batch: list[Callable] = field(default_factory=list)  # hook(inputs, loss) after every micro-batch
    # A resumed stream skips its trained rows itself: the RNG states then wait for the first batch.
    restore_rng_at_first_batch: bool = False


class Trainer(transformers.Trainer):
    """HF Trainer whose loss is ``algorithm.compute_loss`` (already scaled for gradient accumulation)."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args, algorithm: Algorithm, plan: Plan | None = None, hooks: TrainerHooks | None = None,
                 sequence_parallel: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.algorithm = algorithm
        self.sequence_parallel = sequence_parallel  # ranks that share each batch (Ulysses)
        self.tuner_plan = plan  # the plan tuners.adapters.apply_tuner applied to the model (None: no tuner)
        self.hooks = hooks or TrainerHooks()
        self._pending_rng = None
        self._ready_twice: ReadyTwiceGuard | None = None
        # Make the base class count supervised tokens over the whole accumulation window (num_items_in_batch).
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        if plan is not None:
            for callback in plan_callbacks(self.model, plan, self.args.seed):
                self.add_callback(callback)
        self.sharded_by_hand = is_sharded(self.model)  # FSDP2 applied by distributed/fsdp.py (CPU)
        # Shipped adapters that the model switches by modality (Phi-4-multimodal): each batch picks its own.
        self.route_adapters = adapter_router(self.model, self.tuner_plan.family) if self.tuner_plan else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        routed_off = self.route_adapters is not None and self.route_adapters(inputs) is None
        result = self.algorithm.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                             num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        if routed_off and model.training and not loss.requires_grad:
            # a text batch runs with every routed adapter off, so nothing it reaches trains: its backward pass
            # must be a no-op (the loss is still logged), not an error
            loss = loss.detach().requires_grad_()
            result = (loss, result[1]) if return_outputs else loss
        return result

    def log(self, logs, *args, **kwargs):
        super().log({**logs, **self.algorithm.pop_metrics(logs)}, *args, **kwargs)

    def create_optimizer(self, model=None):
        """The plan's parameter groups (per-component lr, LoRA+, GaLore) when there is a plan."""
        if self.tuner_plan is None or self.optimizer is not None:
            return super().create_optimizer(model)
        decay = set(self.get_decay_parameter_names(self.model))
        self.optimizer = build_optimizer(self.model, self.tuner_plan, self.args, decay)
        return self.optimizer

    def save_model(self, output_dir=None, _internal_call=False):
        """The base class's weights (full, adapter, or gathered from DeepSpeed/FSDP), plus what the plan adds."""
        out = output_dir or self.args.output_dir
        if self.sharded_by_hand:
            state = full_state_dict(self.model)  # every rank gathers, rank 0 gets the weights and writes
            self._save_gathered(out, state)
            if self.tuner_plan is not None and self.args.should_save:
                save_plan_extras(self.model, self.tuner_plan, out, state)
            return
        if self._several_shipped_adapters():
            # transformers saves one active adapter at the top level and refuses several; each shipped adapter
            # gets its own folder instead (save_plan_extras), as the model's checkpoint ships them
            if self.args.should_save:
                os.makedirs(out, exist_ok=True)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(out)
                torch.save(self.args, os.path.join(out, transformers.trainer.TRAINING_ARGS_NAME))
        else:
            super().save_model(output_dir, _internal_call)
        if self.tuner_plan is not None:
            with gathered(extra_parameters(self.model, self.tuner_plan)):  # ZeRO-3: whole on every rank
                if self.args.should_save:
                    save_plan_extras(self.model, self.tuner_plan, out)

    def _save_gathered(self, out: str, state: dict) -> None:
        """Weights gathered whole from an FSDP2 model, saved as a plain HF / peft checkpoint by rank 0."""
        if not self.args.should_save:
            return
        os.makedirs(out, exist_ok=True)
        self.model.save_pretrained(out, state_dict=state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(out)
        torch.save(self.args, os.path.join(out, transformers.trainer.TRAINING_ARGS_NAME))

    def _several_shipped_adapters(self) -> bool:
        config = getattr(self.model, "peft_config", None)
        return self.tuner_plan is not None and self.tuner_plan.train_type == "dummy" and isinstance(config, dict) \
            and len(config) > 1

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._pending_rng is not None:
            checkpoint, self._pending_rng = self._pending_rng, None
            super()._load_rng_state(checkpoint)
        if self._ready_twice is None and isinstance(model, torch.nn.parallel.DistributedDataParallel) \
                and not model.static_graph:  # a static graph reduces a gradient that arrives twice correctly
            self._ready_twice = ReadyTwiceGuard(model.module)
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except RuntimeError as e:
            hint = explain_collective_error(e)
            if hint is not None:
                raise ConfigError(hint) from e
            raise
        if self._ready_twice is not None:
            self._ready_twice.check()
        for hook in self.hooks.after_batch:
            hook(inputs, loss)
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation loss of every kind: the base class computes a loss only for batches with ``labels``, and
        grpo's and ppo's prompt batches have none (their algorithm samples, scores and logs eval_reward)."""
        if "labels" in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def load_weights_only(self, checkpoint: str) -> None:
        """--resume_only_model: the checkpoint's weights (full or adapter), without its optimizer, schedule or step.

        No public method loads weights without resuming the run; the base class's loader knows every
        checkpoint layout it writes.
        """
        self._load_from_checkpoint(checkpoint)

    # ---- private methods of the base class that have no public hook -----------------------------------------

    def _wrap_model(self, model, training=True, dataloader=None):
        # A model sharded by hand with FSDP2 (CPU) reduces its own gradients; the base class would hand it to
        # accelerate, which wraps it in DDP and refuses its DTensor parameters. Returning another object than
        # self.model is the base class's sign that the model is already wrapped.
        if self.sharded_by_hand and training:
            return model if isinstance(model, ShardedModule) else ShardedModule(model)
        return super()._wrap_model(model, training, dataloader)

    def _get_train_sampler(self, train_dataset=None):
        # --group_by_length: the base class reads lengths from dict rows only; ours are Encoded objects
        # (and pairs, KTO samples, prompts), each with a len().
        # --sequence_parallel_size k: the k ranks of a group must get the same batches.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, list):
            sampler = length_grouped(dataset, self.args.train_batch_size * self.args.gradient_accumulation_steps)
        elif self.sequence_parallel > 1 and self.args.train_sampling_strategy == "random":
            sampler = seeded_order(dataset, self.args.data_seed)
        else:
            sampler = super()._get_train_sampler(train_dataset)
        if self.sequence_parallel > 1:
            return RepeatedBatches(sampler, self._train_batch_size, self.sequence_parallel)
        reuse = getattr(self.algorithm, "rollout_reuse", 1)  # grpo --num_iterations, ppo --num_ppo_epochs
        if reuse > 1 and sampler is not None:
            step = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            sampler = RepeatSteps(sampler, step, reuse)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        # As _get_train_sampler, for evaluation batches.
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(eval_dataset, list):
            return length_grouped(eval_dataset, self.args.eval_batch_size)
        return super()._get_eval_sampler(eval_dataset)

    def _load_rng_state(self, checkpoint):
        # The base class restores the RNG states before the data loader starts; a resumed stream needs them
        # restored where the interrupted run stood at that step: just before the first forward.
        if self.hooks.restore_rng_at_first_batch and checkpoint is not None:
            self._pending_rng = checkpoint
            return
        super()._load_rng_state(checkpoint)

    def _save_checkpoint(self, model, trial):
        # The base class writes weights, optimizer, scheduler, RNG, scaler and state straight into
        # <output_dir>/checkpoint-N, so a crash mid-save leaves a half folder there; here it writes into a
        # staging folder that the CheckpointWriter renames into place when whole.
        writer = self.hooks.checkpoints
        if writer is None:
            return super()._save_checkpoint(model, trial)
        out = writer.output_dir

        def write(folder):
            final_dir = self.args.output_dir
            self.args.output_dir = str(folder.parent)  # the base class writes <output_dir>/checkpoint-N
            try:
                super(Trainer, self)._save_checkpoint(model, trial)
            finally:
                self.args.output_dir = final_dir
            if self.state.best_global_step:  # the base class recorded the staging path
                self.state.best_model_checkpoint = str(out / f"checkpoint-{self.state.best_global_step}")
                if self.args.should_save:
                    self.state.save_to_json(str(folder / "trainer_state.json"))

        writer.publish(f"checkpoint-{self.state.global_step}", write, is_main=self.args.should_save,
                       barrier=self.accelerator.wait_for_everyone)
        if self.args.should_save:
            writer.rotate(best=self.state.best_model_checkpoint)


class ReadyTwiceGuard:
    """Under DDP, counts each trainable parameter's gradient accumulations per backward pass.

    More than one means separate backward passes reached the parameter (reentrant checkpointing of two
    forward passes): DDP either raises 'mark a variable ready only once' or, when every bucket was already
    reduced after the first one, silently leaves the second contribution un-synchronised, so the processes'
    weights drift apart. Both end here with the same error.
    """

    def __init__(self, module: torch.nn.Module):
        self.counts: dict[str, int] = {}
        for name, p in module.named_parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(functools.partial(self._count, name))

    def _count(self, name: str, _param) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def check(self) -> None:
        """After a micro-batch's backward: raise if any parameter's gradient arrived twice, then start over."""
        twice = sorted(n for n, c in self.counts.items() if c > 1)
        self.counts.clear()
        if twice:
            raise ConfigError(f"{READY_TWICE_HINT} [{len(twice)} parameters, e.g. {twice[0]}]")


class RepeatSteps(torch.utils.data.Sampler):
    """Each optimizer step's indices (``step`` of them, all processes together) yielded ``times`` times in a row,
    so a rollout made at the first repetition trains the following ones on the same prompts."""

    def __init__(self, sampler, step: int, times: int):
        self.sampler, self.step, self.times = sampler, step, times

    def __iter__(self):
        chunk = []
        for index in self.sampler:
            chunk.append(index)
            if len(chunk) == self.step:
                yield from chunk * self.times
                chunk = []
        yield from chunk * self.times

    def __len__(self) -> int:
        return len(self.sampler) * self.times

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def length_grouped(dataset: list, batch_size: int):
    """HF's LengthGroupedSampler over our items (objects, not dicts: it is handed their lengths)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    return LengthGroupedSampler(batch_size, lengths=[len(x) for x in dataset])


def training_arguments(cfg: SftConfig, has_eval: bool, *, ignore_data_skip: bool = False):
    """transformers.TrainingArguments from our config (the one place the two meet).

    ``ignore_data_skip``: on resume the data already skips what was trained (a resumed stream).
    """
    from transformers import TrainingArguments

    t = cfg.train
    dtype = resolve_dtype(cfg.model.torch_dtype)  # "auto" is bf16 on a GPU that has it: autocast then too
    eval_steps = t.eval_steps or t.save_steps
    return TrainingArguments(
        output_dir=t.output_dir, num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        learning_rate=t.learning_rate, per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        **_checkpointing_arguments(TrainingArguments, t),
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, logging_steps=t.logging_steps, save_strategy=t.save_strategy,
        save_steps=t.save_steps, save_total_limit=None,  # applied by train/checkpoint.py (keeps newest, best)
        seed=t.seed, report_to=t.report_to, include_num_input_tokens_seen="non_padding",
        eval_strategy=t.resolved_eval_strategy() if has_eval else "no",
        eval_steps=eval_steps if has_eval else None, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        dataloader_num_workers=cfg.data.dataloader_num_workers, remove_unused_columns=False, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), ignore_data_skip=ignore_data_skip,
        prediction_loss_only=True,  # no algorithm returns logits for metrics: evaluation is the loss
        # accelerate would otherwise dispatch a streaming dataset's batches by slicing every tensor along dim 0,
        # which cuts media tensors (pixel_values rows are patches, not samples)
        accelerator_config={"dispatch_batches": False},
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        use_liger_kernel=t.use_liger_kernel,
        **engine_arguments(cfg.dist, t),
    )


def _checkpointing_arguments(arguments_class, t) -> dict:
    """Activation checkpointing under the name this transformers takes: ``activation_checkpointing`` since 5.2x,
    ``gradient_checkpointing`` before (and a deprecated alias after, which warns)."""
    from dataclasses import fields

    prefix = "activation" if "activation_checkpointing" in {f.name for f in fields(arguments_class)} else "gradient"
    return {f"{prefix}_checkpointing": t.gradient_checkpointing,
            f"{prefix}_checkpointing_kwargs": t.gradient_checkpointing_kwargs}
