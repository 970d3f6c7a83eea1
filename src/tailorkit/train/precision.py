"""Mixed precision and fused-kernel settings of a training run: fp32 master weights, Liger kernels.

bf16 and fp16 runs compute under autocast (transformers' ``bf16``/``fp16``); fp16 also scales the loss with
a grad scaler, whose state is saved in every checkpoint (``scaler.pt``) and restored on resume by the
Trainer. The trained parameters are held in fp32 (the master weights) while frozen ones stay in the
16-bit dtype they were loaded in: a 16-bit weight cannot take an update smaller than half its spacing
(bf16 near 1.0: 0.004, so a norm weight never moves at lr 1e-5), and the grad scaler refuses to unscale
fp16 gradients. Under DeepSpeed the weights stay as loaded: its bf16/fp16 optimizer keeps fp32 masters itself.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def upcast_trainable_to_fp32(model: torch.nn.Module) -> int:
    """Cast every trainable fp16/bf16 parameter to fp32 in place; returns how many were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
            cast += 1
    return cast


def liger_model_types() -> frozenset[str]:
    """The model types Liger has kernels for (its own registry, read from the installed package)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def check_liger_supports(model: torch.nn.Module) -> str:
    """The model type Liger will patch; an error for one it has no kernels for (Liger itself only logs a
    warning and trains without them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in liger_model_types():
        raise ConfigError(f"--use_liger_kernel: Liger has no kernels for model type {model_type!r} (it covers "
                          f"{', '.join(sorted(liger_model_types()))}); drop --use_liger_kernel for this model")
    return model_type


def prepare_precision(cfg, model: torch.nn.Module) -> None:
    """Before the Trainer is built: fp32 master weights for 16-bit training; Liger's family check."""
    from ..models.load import resolve_dtype

    dtype = resolve_dtype(cfg.model.torch_dtype)
    if dtype in (torch.float16, torch.bfloat16) and not cfg.dist.deepspeed:
        cast = upcast_trainable_to_fp32(model)
        name = "fp16" if dtype == torch.float16 else "bf16"
        print(f"[tailorkit] {name} mixed precision: {cast} trainable tensors held in fp32 (master weights), "
              f"frozen weights in {name}" + (", loss scaled by a grad scaler" if name == "fp16" else ""))
    if cfg.train.use_liger_kernel:
        model_type = check_liger_supports(model)
        print(f"[tailorkit] Liger kernels for {model_type}: RMSNorm, RoPE, SwiGLU, fused linear cross-entropy")
