"""transformers ``TrainingArguments`` fields beyond our own settings: checked and passed through (``trainer_args``).

ms-swift's arguments are a subclass of ``TrainingArguments``, so its users write any of its fields (``optim``,
``adam_beta2``, ``neftune_noise_alpha`` ...) in a YAML's ``training_args`` or on the command line. Fields we
own keep our names (``learning_rate`` ...); the ones tailorkit derives from other settings are refused with
the setting to use; every other field is coerced to its type and validated by transformers itself before
anything loads.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import typing
from functools import lru_cache

from ..errors import ConfigError
from .fields import base_type, json_object, to_bool

# TrainingArguments fields that tailorkit sets from its own settings or for its own reasons: what to use instead.
DERIVED = {
    "bf16": "follows --torch_dtype (bfloat16)", "fp16": "follows --torch_dtype (float16)",
    "use_cpu": "follows whether a CUDA GPU is visible",
    "remove_unused_columns": "batches carry the media fields the model needs",
    "disable_tqdm": "tailorkit prints its own progress line",
    "prediction_loss_only": "evaluation is the loss (add --eval_dataset for generation metrics)",
    "include_for_metrics": "evaluation is the loss (add --eval_dataset for generation metrics)",
    "batch_eval_metrics": "evaluation is the loss (add --eval_dataset for generation metrics)",
    "label_names": "every algorithm reads its own label fields",
    "accelerator_config": "set for tailorkit's batches (media tensors are never sliced)",
    "include_num_input_tokens_seen": "tailorkit counts the non-padding tokens",
    "ignore_data_skip": "set by --resume_from_checkpoint (a resumed stream skips its rows itself)",
    "train_sampling_strategy": "follows --group_by_length",
    "resume_from_checkpoint": "use --resume_from_checkpoint",
    "activation_checkpointing": "use --gradient_checkpointing",
    "activation_checkpointing_kwargs": "use --gradient_checkpointing_kwargs",
    "deepspeed": "use --deepspeed", "fsdp": "use --fsdp", "fsdp_config": "use --fsdp_config",
    "ddp_find_unused_parameters": "use --ddp_find_unused_parameters", "ddp_backend": "use --ddp_backend",
    "ddp_static_graph": "tailorkit chooses it from the checkpointing settings",
    "local_rank": "set by torchrun (NPROC_PER_NODE=N tailorkit ...)",
    "push_to_hub": "upload a finished model with `tailorkit export --push_to_hub`",
    "hub_token": "tailorkit never stores a token; log in with `hf auth login`",
    "do_train": "the verb decides (tailorkit sft trains)", "do_eval": "evaluation follows --eval_strategy",
    "do_predict": "use `tailorkit infer` or `tailorkit eval`",
}


def training_argument_types() -> dict[str, object]:
    """Field name -> annotated type of transformers.TrainingArguments."""
    return _field_types()


@lru_cache(maxsize=1)
def _field_types() -> dict[str, object]:
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainingArguments) if f.init}


def is_training_argument(name: str) -> bool:
    return name in _field_types()


def check_trainer_args(values, ours: set[str] = frozenset()) -> dict:
    """``trainer_args`` as a dict of typed values that transformers accepts; ``ours`` are names we own."""
    values = json_object("trainer_args", values)
    if not values:
        return {}
    types = _field_types()
    out = {}
    for name, value in values.items():
        if name in ours:
            raise ConfigError(f"trainer_args {name!r} is one of tailorkit's own settings; give it as --{name}")
        if name in DERIVED:
            raise ConfigError(f"trainer_args {name!r}: tailorkit sets it itself ({DERIVED[name]})")
        if name not in types:
            raise ConfigError(f"trainer_args {name!r} is not a transformers TrainingArguments field")
        out[name] = _coerce(name, value, types[name])
    _validate(out)
    return out


def _coerce(name: str, value, tp):
    kind = base_type(tp)
    try:
        if value is None or kind in (object, typing.Any):
            return value
        if kind is bool:
            return to_bool(value)
        if kind in (int, float) and not isinstance(value, bool):
            return kind(float(value)) if kind is int and isinstance(value, str) else kind(value)
        if kind in (dict, list) and isinstance(value, str) and value.strip()[:1] in "{[":
            return json.loads(value)
        if kind is list and isinstance(value, str):
            return [value]
        if kind in (dict, list) and isinstance(value, kind):
            return value
        if kind is str or isinstance(kind, type) and issubclass(kind, str):
            return str(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer_args {name!r}: {value!r} is not a {getattr(kind, '__name__', kind)} ({e})") \
            from None
    raise ConfigError(f"trainer_args {name!r}: {value!r} does not fit its type {tp}")


def _validate(values: dict) -> None:
    """transformers' own checks of the values (choices, combinations), on a throwaway TrainingArguments."""
    from transformers import TrainingArguments

    try:
        TrainingArguments(output_dir=None, use_cpu=True, report_to="none", **values)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"trainer_args {sorted(values)}: transformers refuses them: {e}") from None


def check_trainer_names(train) -> None:
    """--optim and --lr_scheduler_type are names transformers knows (checked only when not the default)."""
    if train.optim is not None:
        from transformers.training_args import OptimizerNames

        names = [o.value for o in OptimizerNames]
        if train.optim not in names:
            raise ConfigError(f"optim {train.optim!r} is not a transformers optimizer; known: {', '.join(names)}")
    if train.lr_scheduler_type != "cosine":
        from transformers.trainer_utils import SchedulerType

        names = [s.value for s in SchedulerType]
        if train.lr_scheduler_type not in names:
            raise ConfigError(f"lr_scheduler_type {train.lr_scheduler_type!r} is not a transformers schedule; "
                              f"known: {', '.join(names)}")


# --report_to names whose package tailorkit checks up front (transformers would fail inside train()).
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "swanlab": ("swanlab",),
                    "mlflow": ("mlflow",), "comet_ml": ("comet_ml",), "clearml": ("clearml",),
                    "dvclive": ("dvclive",), "trackio": ("trackio",)}
TRACKER_INSTALL = {
    "tensorboard": "pip install -c constraints.txt 'tailorkit[track]' (pins tensorboard)",
    "wandb": "pip install -c constraints.txt 'tailorkit[track]' (pins wandb); WANDB_MODE=offline runs without "
             "network",
    "swanlab": "pip install swanlab; it is not in tailorkit's extras because it needs protobuf<7 and (through "
               "botocore) python-dateutil<3, which conflict with the pinned protobuf 7 and python-dateutil 4, so "
               "install it in an environment without those pins; SWANLAB_MODE=offline runs without network",
}


def check_report_to(values: list[str]) -> list[str]:
    """none | all | tracker names, each installed; a missing one names the package and the extra."""
    names = [v.strip() for value in values for v in str(value).split(",") if v.strip()] or ["none"]
    if names == ["none"]:
        return names
    if "none" in names or "all" in names and len(names) > 1:
        raise ConfigError(f"report_to {names}: 'none' and 'all' stand alone")
    if names == ["all"]:
        return names
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise ConfigError(f"report_to {name!r} is not a tracker transformers knows; known: none, all, "
                              f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
        packages = TRACKER_PACKAGES.get(name, ())
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            how = TRACKER_INSTALL.get(name, f"pip install {packages[0]}")
            raise ConfigError(f"report_to {name} needs the {packages[0]} package, which is not installed: {how}")
    return names
