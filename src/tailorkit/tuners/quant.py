"""QLoRA loading: the frozen base weights in 4-bit NF4 or 8-bit through bitsandbytes."""

from __future__ import annotations

import importlib.util

from ..config.args import ModelArgs, TunerArgs
from ..errors import ConfigError
from .plan import resolve_plan


def quantized_load_kwargs(model_args: ModelArgs, tuner: TunerArgs) -> dict:
    """``from_pretrained`` kwargs for --quant_bits / qlora ({} otherwise).

    Components the plan trains fully, and lm_head, stay unquantized (bitsandbytes skip list).
    """
    if not (tuner.quant_bits or tuner.train_type == "qlora"):
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("--quant_bits / train_type qlora needs bitsandbytes: pip install bitsandbytes==0.50.2 "
                          "(it loads 4-bit and 8-bit weights on CPU and CUDA)")
    from transformers import AutoConfig, BitsAndBytesConfig

    from ..models.load import detect_family, resolve_dtype

    config = AutoConfig.from_pretrained(model_args.model, trust_remote_code=model_args.trust_remote_code)
    family = detect_family(config, model_args.model_type)
    plan = resolve_plan(tuner, family)
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
