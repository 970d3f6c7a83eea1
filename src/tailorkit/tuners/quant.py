"""QLoRA loading: the frozen base weights in 4-bit NF4 or 8-bit through bitsandbytes."""

from __future__ import annotations

import importlib.util

from ..config.train import ModelArgs, TunerArgs
from ..errors import ConfigError
from .plan import Plan, resolve_plan


def plan_load_kwargs(model_args: ModelArgs, tuner: TunerArgs) -> dict:
    """Resolve the plan from the model's config (so that its errors come before any weight is loaded) and
    return the ``from_pretrained`` kwargs it needs: a bitsandbytes config for --quant_bits / qlora, else {}.

    Components the plan trains fully, and lm_head, stay unquantized (bitsandbytes skip list).
    """
    from transformers import AutoConfig

    from ..models.load import resolve_family

    try:
        config = AutoConfig.from_pretrained(model_args.model, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError, TypeError):
        return {}  # load_bundle reports an unloadable model with its own message
    plan = resolve_plan(tuner, resolve_family(config, model_args.model_type, model_args.trust_remote_code))
    if not plan.args.quant_bits:
        return {}
    return quantization_kwargs(plan, model_args)


def quantization_kwargs(plan: Plan, model_args: ModelArgs) -> dict:
    """bitsandbytes 4-bit NF4 (double quant) or 8-bit config for the plan's frozen / adapter components."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("--quant_bits / train_type qlora needs bitsandbytes: pip install bitsandbytes==0.50.2 "
                          "(it loads 4-bit and 8-bit weights on CPU and CUDA)")
    from transformers import BitsAndBytesConfig

    from ..models.load import resolve_dtype

    family = plan.family
    skip = list(family.lm_head)
    for comp in plan.components("full"):
        skip += list(getattr(family, comp))
    compute = resolve_dtype(model_args.torch_dtype)
    if plan.args.quant_bits == 8:
        bnb = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    else:
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                 bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)
    return {"quantization_config": bnb}
