"""Segment-aware attention for packed rows, registered through transformers' ``AttentionInterface``.

Why our own: stock sdpa/eager compute the full T x T product of a packed row and mask it (slower
than padding), and they isolate packed samples only while ``use_cache`` is off (with a cache
object present transformers skips its packed-sequence detection and the samples attend to each
other). These functions find the segments from the text ``position_ids`` (restarting at 0 per
sample) and attend within each segment only, whatever ``use_cache`` says. Without segments
(ordinary padded batches, evaluation, generation, the vision tower) they are plain sdpa.
"""

from __future__ import annotations

import importlib.util

import torch

from ..errors import ConfigError

PACKED_SDPA = "tailorkit_packed_sdpa"
PACKED_FLASH = "tailorkit_packed_flash"


def segment_starts(position_ids: torch.Tensor | None, q_len: int, kv_len: int) -> list[int] | None:
    """Start offsets of the packed samples in a single row, or None when the row is not packed."""
    if position_ids is None or q_len != kv_len or q_len < 2:
        return None
    if position_ids.dim() == 2:
        if position_ids.shape[0] != 1:
            return None
        position_ids = position_ids[0]
    if position_ids.shape[-1] != q_len:
        return None
    starts = (torch.nonzero(position_ids[1:] != position_ids[:-1] + 1).flatten() + 1).tolist()
    if not starts:
        return None
    return [0] + starts


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, **kwargs):
    """sdpa run separately on each packed segment (causal inside it); plain sdpa when the row is not packed."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    starts = segment_starts(position_ids, query.shape[2], key.shape[2]) if query.shape[0] == 1 else None
    if starts is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    bounds = list(zip(starts, starts[1:] + [query.shape[2]]))
    outs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                   dropout=dropout, scaling=scaling, is_causal=True, **kwargs)[0]
            for a, b in bounds]
    return torch.cat(outs, dim=1), None


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def packed_flash_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         is_causal=None, **kwargs):
    """flash-attn's public ``flash_attn_varlen_func`` over the packed segments; sdpa when the row is not packed."""
    position_ids = kwargs.get("position_ids")
    starts = segment_starts(position_ids, query.shape[2], key.shape[2]) if query.shape[0] == 1 else None
    if starts is None or not query.is_cuda:
        return packed_sdpa_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                   is_causal=is_causal, **kwargs)
    from flash_attn import flash_attn_varlen_func

    total = query.shape[2]
    cu = torch.tensor(starts + [total], dtype=torch.int32, device=query.device)
    max_len = int((cu[1:] - cu[:-1]).max())
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (T, heads, dim); GQA native
    out = flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, dropout_p=dropout, softmax_scale=scaling,
                                 causal=True)
    return out.unsqueeze(0), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def mask(*args, **kwargs):
        # A packed row has no 2-D mask and needs none (the attention keeps to the segments); padded
        # batches (evaluation) get sdpa's mask as usual.
        if kwargs.get("attention_mask") is None:
            return None
        return sdpa_mask(*args, **kwargs)

    for name, fn in ((PACKED_SDPA, packed_sdpa_forward), (PACKED_FLASH, packed_flash_forward)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, mask)


def use_packed_attention(model, attn_impl: str | None) -> str:
    """Switch ``model`` (and its sub-models) to segment-aware attention; returns the implementation name.

    ``attn_impl`` is the user's choice: sdpa/eager/None give per-segment sdpa (exact, and it never
    builds a T x T mask); flash_attention_2 gives flash-attn varlen, which needs a GPU and flash-attn.
    """
    _register()
    if attn_impl == "flash_attention_2":
        if not flash_attn_available():
            raise ConfigError("attn_impl flash_attention_2 with packing needs a CUDA GPU and the flash-attn "
                              "package; drop --attn_impl to use per-segment sdpa")
        name = PACKED_FLASH
    else:
        name = PACKED_SDPA
    model.set_attn_implementation(name)
    return name
