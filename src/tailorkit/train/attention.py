"""Segment-aware attention for packed rows, registered through transformers' ``AttentionInterface``.

Why our own: stock sdpa/eager compute the full T x T product of a packed row and mask it (slower
than padding), and they isolate packed samples only while ``use_cache`` is off (with a cache
object present transformers skips its packed-sequence detection and the samples attend to each
other). These functions find the segments from the text ``position_ids`` (restarting at 0 per
sample) and attend within each segment only, whatever ``use_cache`` says. Without segments
(ordinary padded batches, evaluation, generation, the vision tower) they are plain sdpa.

On a CUDA GPU in fp16/bf16 a packed row runs as one fused variable-length kernel over all its
segments: torch's ``varlen_attn`` (flash / cuDNN backends) when this torch has it, flash-attn's
``flash_attn_varlen_func`` with ``--attn_impl flash_attention_2``. Elsewhere (CPU, fp32, dropout,
a head size the kernels do not take) each segment runs through sdpa on its own, which is exact.
"""

from __future__ import annotations

import importlib.util
import inspect
import weakref
from functools import lru_cache

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


_last_segments: list = [None, -1, None]  # (weakref to position_ids, its _version, starts): one entry


def cached_segment_starts(position_ids: torch.Tensor | None, q_len: int, kv_len: int) -> list[int] | None:
    """``segment_starts``, computed once per position tensor: every layer of a forward gets the same tensor,
    and finding the starts reads it back to the host (a GPU sync per layer otherwise)."""
    if position_ids is None or q_len != kv_len:
        return segment_starts(position_ids, q_len, kv_len)
    ref, version, starts = _last_segments
    if ref is not None and ref() is position_ids and version == position_ids._version:
        return starts
    starts = segment_starts(position_ids, q_len, kv_len)
    _last_segments[:] = [weakref.ref(position_ids), position_ids._version, starts]
    return starts


@lru_cache(maxsize=1)
def torch_varlen():
    """torch's public ``varlen_attn`` (torch.nn.attention.varlen) and its keyword names, or None before it existed."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def packed_kernel(query: torch.Tensor, dropout: float = 0.0) -> str:
    """The kernel a packed row of this query runs: ``torch_varlen`` (one fused launch over all segments) on a
    CUDA GPU in fp16/bf16 with a head size flash attention takes, else ``sdpa_per_segment``."""
    head_dim = query.shape[-1]
    fused = (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0
             and head_dim % 8 == 0 and head_dim <= 256 and torch_varlen() is not None)
    return "torch_varlen" if fused else "sdpa_per_segment"


def autocast_inputs(query, key, value):
    """q, k, v in autocast's dtype when autocast is on, as sdpa would take them. With fp32 master weights the
    rotary embedding leaves q and k in fp32 (its cos/sin follow the fp32 residual stream) while v comes out of
    an autocast matmul in bf16; the fused varlen kernel takes one 16-bit dtype."""
    device = query.device.type
    if not torch.is_autocast_enabled(device):
        return query, key, value
    dtype = torch.get_autocast_dtype(device)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def varlen_forward(query, key, value, starts: list[int], scaling=None) -> torch.Tensor:
    """Causal attention within each segment through torch's ``varlen_attn``; (1, T, heads, dim) out."""
    varlen_attn, params = torch_varlen()
    total = query.shape[2]
    cu = torch.tensor(starts + [total], dtype=torch.int32, device=query.device)
    max_len = max(b - a for a, b in zip(starts, starts[1:] + [total]))
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (T, heads, dim)
    kwargs = {"scale": scaling}
    # torch 2.10 spelt causal as is_causal; 2.11+ as the window (-1, 0). enable_gqa arrived later than
    # varlen_attn itself: without it the key/value heads are repeated for the query heads.
    kwargs.update({"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)})
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kwargs).unsqueeze(0)


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, **kwargs):
    """Packed rows: one fused varlen kernel on GPU, else sdpa on each segment (causal inside it); plain sdpa
    when the row is not packed."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    starts = cached_segment_starts(position_ids, query.shape[2], key.shape[2]) if query.shape[0] == 1 else None
    if starts is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    query, key, value = autocast_inputs(query, key, value)
    if packed_kernel(query, dropout) == "torch_varlen":
        return varlen_forward(query, key, value, starts, scaling=scaling), None
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
    starts = cached_segment_starts(position_ids, query.shape[2], key.shape[2]) if query.shape[0] == 1 else None
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
