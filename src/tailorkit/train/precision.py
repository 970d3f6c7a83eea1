"""Mixed precision and fused-kernel settings of a training run: fp16 master weights, Liger kernels.

bf16 trains the weights as loaded (bf16 has fp32's exponent range, so no loss scaling is needed). fp16
runs under autocast with a grad scaler (transformers' ``fp16=True``); the scaler refuses to unscale fp16
gradients, and fp16 updates of small learning rates round to nothing, so the trained parameters are held
in fp32 (the master weights) while frozen ones stay fp16. The scaler's state is saved in every
checkpoint (``scaler.pt``) and restored on resume by the Trainer.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def upcast_trainable_to_fp32(model: torch.nn.Module) -> int:
    """Cast every trainable fp16 parameter to fp32 in place; returns how many were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.float16:
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
    """Before the Trainer is built: fp32 master weights for fp16 training; Liger's family check."""
    if cfg.model.torch_dtype == "float16":
        cast = upcast_trainable_to_fp32(model)
        print(f"[tailorkit] fp16 mixed precision: {cast} trainable tensors kept in fp32 (master weights), "
              "frozen weights in fp16, loss scaled by a grad scaler")
    if cfg.train.use_liger_kernel:
        model_type = check_liger_supports(model)
        print(f"[tailorkit] Liger kernels for {model_type}: RMSNorm, RoPE, SwiGLU, fused linear cross-entropy")
