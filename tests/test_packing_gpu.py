"""flash-attention varlen over packed segments (GPU only; skipped without CUDA and flash-attn)."""

from __future__ import annotations

import pytest
import torch

from tailorkit.train.attention import flash_attn_available, packed_flash_forward

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not flash_attn_available(), reason="needs a CUDA GPU and the flash-attn package"),
]


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2


def test_flash_varlen_matches_causal_sdpa_per_segment():
    torch.manual_seed(0)
    lengths = [5, 17, 9]
    total, heads, kv_heads, dim = sum(lengths), 4, 2, 32
    dev, dtype = "cuda", torch.bfloat16
    q = torch.randn(1, heads, total, dim, device=dev, dtype=dtype)
    k = torch.randn(1, kv_heads, total, dim, device=dev, dtype=dtype)
    v = torch.randn(1, kv_heads, total, dim, device=dev, dtype=dtype)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).to(dev)
    out, _ = packed_flash_forward(_Module(), q, k, v, None, scaling=dim ** -0.5, position_ids=position_ids)
    refs, start = [], 0
    for n in lengths:
        sl = slice(start, start + n)
        kk = k[:, :, sl].repeat_interleave(2, dim=1)
        vv = v[:, :, sl].repeat_interleave(2, dim=1)
        ref = torch.nn.functional.scaled_dot_product_attention(q[:, :, sl].float(), kk.float(), vv.float(),
                                                               is_causal=True, scale=dim ** -0.5)
        refs.append(ref.transpose(1, 2))
        start += n
    ref = torch.cat(refs, dim=1)
    assert out.shape == ref.shape
    assert (out.float() - ref).abs().max().item() < 2e-2
