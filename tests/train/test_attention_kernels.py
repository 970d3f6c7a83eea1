"""Which kernel a packed row takes (one fused varlen launch on GPU, exact per-segment sdpa elsewhere), and the
segment cache that keeps every layer from reading the positions back to the host."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tailorkit.train import attention
from tailorkit.train.attention import (autocast_inputs, cached_segment_starts, packed_kernel, segment_starts,
                                       torch_varlen)


def fake_query(*, cuda=True, dtype=torch.bfloat16, head_dim=64):
    return SimpleNamespace(is_cuda=cuda, dtype=dtype, shape=(1, 4, 32, head_dim))


def test_packed_rows_take_torch_varlen_on_a_gpu_in_half_precision_only():
    assert torch_varlen() is not None  # our pinned torch has torch.nn.attention.varlen
    assert packed_kernel(fake_query()) == "torch_varlen"
    assert packed_kernel(fake_query(dtype=torch.float16)) == "torch_varlen"
    assert packed_kernel(fake_query(cuda=False)) == "sdpa_per_segment"
    assert packed_kernel(fake_query(dtype=torch.float32)) == "sdpa_per_segment"  # fp32 parity stays exact
    assert packed_kernel(fake_query(head_dim=12)) == "sdpa_per_segment"  # flash takes multiples of 8
    assert packed_kernel(fake_query(), dropout=0.1) == "sdpa_per_segment"  # varlen_attn has no dropout
    assert packed_kernel(torch.zeros(1, 2, 8, 16)) == "sdpa_per_segment"


def test_under_autocast_mixed_q_k_v_take_its_dtype():
    """fp32 masters under bf16 autocast: rotary leaves q, k in fp32, v is bf16; the kernel gets one dtype."""
    q, k, v = torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8, dtype=torch.bfloat16)
    assert [t.dtype for t in autocast_inputs(q, k, v)] == [torch.float32, torch.float32, torch.bfloat16]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert {t.dtype for t in autocast_inputs(q, k, v)} == {torch.bfloat16}


def test_without_torch_varlen_packed_rows_run_per_segment(monkeypatch):
    monkeypatch.setattr(attention, "torch_varlen", lambda: None)
    assert packed_kernel(fake_query()) == "sdpa_per_segment"


def test_segment_starts_are_cached_per_position_tensor():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    first = cached_segment_starts(pos, 9, 9)
    assert first == segment_starts(pos, 9, 9) == [0, 3, 5]
    assert cached_segment_starts(pos, 9, 9) is first  # the same tensor: no second read-back
    pos[0, 5:] = torch.arange(2, 6)  # changed in place (the second sample now runs on): recomputed
    assert cached_segment_starts(pos, 9, 9) == [0, 3]
    other = torch.tensor([[0, 1, 0, 1]])
    assert cached_segment_starts(other, 4, 4) == [0, 2]
    assert cached_segment_starts(other, 1, 4) is None  # decoding one token against a cache: not a packed row


@pytest.mark.gpu
def test_varlen_forward_matches_causal_sdpa_per_segment_in_bf16():
    """torch's varlen kernel over the segments of a packed row == causal sdpa on each segment alone (fp32)."""
    torch.manual_seed(0)
    lengths, heads, kv_heads, dim = [5, 17, 9, 33], 4, 2, 64
    total = sum(lengths)
    q = torch.randn(1, heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    out = attention.varlen_forward(q, k, v, starts, scaling=dim ** -0.5)
    refs = []
    for a, n in zip(starts, lengths):
        sl = slice(a, a + n)
        kk, vv = (t[:, :, sl].float().repeat_interleave(2, dim=1) for t in (k, v))
        refs.append(torch.nn.functional.scaled_dot_product_attention(q[:, :, sl].float(), kk, vv, is_causal=True,
                                                                     scale=dim ** -0.5).transpose(1, 2))
    ref = torch.cat(refs, dim=1)
    assert out.shape == ref.shape == (1, total, heads, dim)
    assert (out.float() - ref).abs().max().item() < 2e-2
    out.float().sum().backward()  # the kernel has a backward (training)
    assert q.grad is not None and torch.isfinite(q.grad).all()
