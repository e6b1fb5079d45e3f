"""Attention mixers: reference parity, KV cache, sliding window, padding, query blocks."""

from __future__ import annotations

import pytest
import torch

import longstream.backbones.attention as attn_mod
from longstream.backbones import Attention, BidirectionalAttention, create_backbone
from longstream.backbones.attention import apply_rope, attention_reference

D = 16


def close(a, b, atol=2e-5, rtol=1e-4):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


VARIANTS = [
    dict(),
    dict(n_heads=4, n_kv_heads=2),
    dict(n_heads=4, n_kv_heads=1, window=3),
    dict(n_heads=2, rope=False, bias=True, out_bias=True),
    dict(n_heads=4, head_dim=6, window=1),
]


@pytest.mark.parametrize("cls", [Attention, BidirectionalAttention])
@pytest.mark.parametrize("kw", VARIANTS, ids=str)
@torch.no_grad()
def test_matches_reference(cls, kw):
    layer = cls(D, **kw)
    x = torch.randn(2, 9, D)
    close(layer(x)[0].double(), attention_reference(layer, x.double()), atol=1e-5, rtol=1e-4)
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    y = layer(x, mask=mask)[0].double()
    ref = attention_reference(layer, x.double(), mask=mask)
    close(y[0], ref[0], atol=1e-5, rtol=1e-4)
    close(y[1, :5], ref[1, :5], atol=1e-5, rtol=1e-4)


def test_flags_are_per_class():
    assert Attention.is_causal and Attention.supports_step and Attention.supports_state
    bi = BidirectionalAttention
    assert not bi.is_causal and not bi.supports_step and not bi.supports_state
    assert create_backbone("test_attention_bi").is_causal is False
    with pytest.raises(TypeError):
        Attention(D, causal=False)  # bidirectional is its own symbol ("Abi")


@pytest.mark.parametrize("kw", [dict(window=3), dict(), dict(n_heads=4, n_kv_heads=2, window=5)], ids=str)
@pytest.mark.parametrize("cls", [Attention, BidirectionalAttention])
@torch.no_grad()
def test_query_blocks_equal_one_block(monkeypatch, cls, kw):
    layer = cls(D, **kw)
    x = torch.randn(2, 13, D)
    mask = torch.tensor([[True] * 13, [True] * 8 + [False] * 5])
    y_one, _ = layer(x, mask=mask)
    monkeypatch.setattr(attn_mod, "_BLOCK_ELEMS", 0)
    layer.q_chunk = 4
    y_blk, _ = layer(x, mask=mask)
    close(y_blk[0], y_one[0])
    close(y_blk[1, :8], y_one[1, :8])
    if cls is Attention:  # also a chunk continued from a cache
        _, st = layer(x[:, :6])
        close(layer(x[:, 6:], st)[0], layer(x)[0][:, 6:])


@torch.no_grad()
def test_sliding_window_cache_is_bounded():
    w = 4
    layer = Attention(D, n_heads=4, window=w)
    x = torch.randn(1, 40, D)
    y_full, st = layer(x[:, :20])
    assert st["k"].shape[2] == w - 1 and st["kpos"][0].tolist() == [17, 18, 19]
    ys = [y_full]
    for t in range(20, 40):
        y_t, st = layer.step(x[:, t], st)
        assert st["k"].shape[2] <= w - 1
        ys.append(y_t[:, None])
    close(torch.cat(ys, 1), layer(x)[0])
    # full attention grows its cache; the window one stays put
    _, st_full = Attention(D, n_heads=4)(x)
    assert st_full["k"].shape[2] == 40


@torch.no_grad()
def test_padded_prefill_right_aligns_cache():
    layer = Attention(D, n_heads=2)
    x = torch.randn(3, 7, D)
    lengths = torch.tensor([7, 3, 1])
    mask = torch.arange(7)[None] < lengths[:, None]
    _, st = layer(x, mask=mask)
    assert st["pos"].tolist() == [7, 3, 1]
    assert st["valid"].sum(1).tolist() == [7, 3, 1]
    for b, n in enumerate(lengths.tolist()):  # valid entries at the right end, positions in order
        assert st["valid"][b, 7 - n :].all() and st["kpos"][b, 7 - n :].tolist() == list(range(n))
    # a second padded chunk continues each row from its own position
    x2 = torch.randn(3, 4, D)
    mask2 = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    y2, st2 = layer(x2, st, mask=mask2)
    assert st2["pos"].tolist() == [11, 5, 2]
    for b, (n1, n2) in enumerate([(7, 4), (3, 2), (1, 1)]):
        seq = torch.cat([x[b : b + 1, :n1], x2[b : b + 1, :n2]], 1)
        close(y2[b, :n2], layer(seq)[0][0, n1:])


@torch.no_grad()
def test_rope_depends_on_relative_position_only():
    q = torch.randn(1, 1, 1, 8, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 8, dtype=torch.float64)
    def dot(pq, pk):
        a = apply_rope(q, torch.tensor([[pq]]), 10000.0)
        b = apply_rope(k, torch.tensor([[pk]]), 10000.0)
        return (a * b).sum()
    close(dot(5, 2), dot(105, 102), atol=1e-10, rtol=1e-10)
    assert not torch.allclose(dot(5, 2), dot(5, 3))


def test_bidirectional_rejects_state_and_bad_args():
    layer = BidirectionalAttention(D)
    with pytest.raises(ValueError, match="not streamable"):
        layer(torch.randn(1, 3, D), state={})
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        Attention(D, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="window"):
        Attention(D, window=0)
    with pytest.raises(ValueError, match="mask must have shape"):
        Attention(D)(torch.randn(2, 3, D), mask=torch.ones(2, 4, dtype=torch.bool))


@torch.no_grad()
def test_bfloat16_model_keeps_float32_cache():
    layer = Attention(D, n_heads=2).to(torch.bfloat16)
    x = torch.randn(2, 5, D, dtype=torch.bfloat16)
    y, st = layer(x)
    assert y.dtype == torch.bfloat16 and st["k"].dtype == torch.float32
    y_t, st = layer.step(x[:, 0], st)
    assert y_t.dtype == torch.bfloat16 and st["k"].shape[2] == 6
