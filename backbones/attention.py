"""Multi-head attention mixers: causal with a KV cache ("A") and bidirectional ("Abi").

Scaled dot-product attention (Vaswani et al., "Attention Is All You Need", 2017) with
rotary position embeddings (Su et al., "RoFormer: Enhanced Transformer with Rotary
Position Embedding", 2021), optional grouped key/value heads (Ainslie et al., "GQA",
2023) and an optional sliding window (Beltagy et al., "Longformer", 2020; Mistral 7B).
The causal mixer streams: its state is a KV cache, and for a sliding window only the
last ``window - 1`` keys are kept, so the state is bounded. The kernels are
``torch.nn.functional.scaled_dot_product_attention``; masked cases (padding, cache,
window) run in query blocks so the score matrix stays bounded (about 2^24 scores).

Causal vs bidirectional is a property of the *class*, so the capability flags read by
the conformance tests are always right: use symbol ``"A"`` (:class:`Attention`) for
causal attention and ``"Abi"`` (:class:`BidirectionalAttention`) for bidirectional.

Parameter layout follows ``mamba_ssm.modules.mha.MHA``: ``in_proj`` (fused q, k, v)
and ``out_proj``; rotary is the non-interleaved "rotate half" form.

Axis legend: b batch, l query length, s key length (cache + new), d model width,
h query heads, g key/value heads, p head dim.

KV-cache state (a dict; float tensors are float32, or float64 for a float64 input):

- ``k``, ``v``: (b, g, s, p) rotated keys and values. Valid entries of each row are
  right-aligned (padding columns, if any, come first).
- ``valid``: (b, s) bool, which cache columns hold a real token.
- ``kpos``: (b, s) long, absolute position of each cached key.
- ``pos``: (b,) long, number of tokens consumed per row (position of the next token).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, State, lengths_from_mask
from .registry import register_mixer

_BLOCK_ELEMS = 1 << 24  # masked attention runs in query blocks once b * h * l * s exceeds this

__all__ = ["Attention", "BidirectionalAttention", "apply_rope", "attention_reference"]


def apply_rope(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """Rotate ``x`` (b, h, l, p) by its absolute positions ``pos`` (b, l) ("rotate half")."""
    p = x.shape[-1]
    half = p // 2
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, device=x.device, dtype=cdt) / half))  # (p/2,)
    ang = pos.to(cdt)[:, None, :, None] * inv_freq  # (b, 1, l, p/2)
    cos, sin = ang.cos(), ang.sin()
    xf = x.to(cdt)
    x1, x2 = xf[..., :half], xf[..., half : 2 * half]
    rot = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    if 2 * half < p:  # odd head dim: last channel passes through
        rot = torch.cat([rot, xf[..., 2 * half :]], dim=-1)
    return rot.to(x.dtype)


class _AttentionBase(Backbone):
    """Shared implementation; subclasses fix ``causal`` (and with it the flags)."""

    causal: ClassVar[bool] = True
    test_kwargs: ClassVar[dict[str, Any]] = {"n_heads": 4, "n_kv_heads": 2}

    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        head_dim: int | None = None,
        n_kv_heads: int | None = None,
        window: int | None = None,
        rope: bool = True,
        rope_theta: float = 10000.0,
        bias: bool = False,
        out_bias: bool = False,
        q_chunk: int = 1024,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if n_heads is None:
            head_dim = head_dim or min(64, d_model)
            n_heads = max(1, d_model // head_dim)
        head_dim = head_dim or d_model // n_heads
        n_kv_heads = n_kv_heads or n_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 (or None for full attention), got {window}")
        self.d_model, self.n_heads, self.head_dim, self.n_kv_heads = d_model, n_heads, head_dim, n_kv_heads
        self.window, self.rope, self.rope_theta, self.q_chunk = window, rope, rope_theta, q_chunk
        fk = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias=bias, **fk)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=out_bias, **fk)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, causal={self.causal}, window={self.window}, rope={self.rope}"
        )

    # ------------------------------------------------------------------ helpers
    def _qkv(self, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, l, _ = x.shape
        h, g, p = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.in_proj(x)  # (b, l, (h + 2g) p)
        q, k, v = qkv.split([h * p, g * p, g * p], dim=-1)
        q = q.view(b, l, h, p).transpose(1, 2)  # (b, h, l, p)
        k = k.view(b, l, g, p).transpose(1, 2)  # (b, g, l, p)
        v = v.view(b, l, g, p).transpose(1, 2)
        if self.rope:
            q = apply_rope(q, pos, self.rope_theta)
            k = apply_rope(k, pos, self.rope_theta)
        return q, k, v

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        qpos: Tensor,
        kpos: Tensor,
        kvalid: Tensor | None,
        qvalid: Tensor | None,
        offset: int,
    ) -> Tensor:
        """Attention of queries q (b, h, l, p) over keys k, v (b, g, s, p).

        Query i sits at key column ``offset + i``; ``kvalid`` None means every key is
        valid. A padded query (``qvalid`` False) may attend to its own column, so no
        score row is empty (its output is ignored by callers).
        """
        b, h, l, p = q.shape
        s = k.shape[2]
        if l == 1 and self.causal:  # decode: one query, plain matmuls beat SDPA kernels here
            return self._attend_one(q, k, v, qpos, kpos, kvalid, qvalid)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)  # (b, h, s, p)
            v = v.repeat_interleave(rep, dim=1)
        causal, w = self.causal, self.window
        plain = kvalid is None and qvalid is None and (w is None or w >= s + l)
        if plain and (not causal or (offset == 0 and l == s)):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if b * h * l * s <= _BLOCK_ELEMS:
            qc = l  # one block
        elif w is not None:
            qc = max(1, min(self.q_chunk, l))  # keys per block are bounded by qc + w
        else:  # bound the (b, h, qc, s) score block
            qc = max(1, min(self.q_chunk, l, _BLOCK_ELEMS // (b * h * s)))
        out = []
        cols = torch.arange(s, device=q.device)
        for i0 in range(0, l, qc):
            i1 = min(l, i0 + qc)
            # key columns that any query of this block may need
            ks, ke = 0, s
            if causal:
                ke = offset + i1
            if w is not None:
                ks = max(0, offset + i0 - w + 1)
                if not causal:
                    ke = min(s, offset + i1 + w - 1)
            d = qpos[:, i0:i1, None] - kpos[:, None, ks:ke]  # (b, lq, lk) position distance
            allowed = torch.ones_like(d, dtype=torch.bool)
            if kvalid is not None:
                allowed = allowed & kvalid[:, None, ks:ke]
            if causal:
                allowed = allowed & (d >= 0)
            if w is not None:
                allowed = allowed & ((d < w) if causal else (d.abs() < w))
            if qvalid is not None:
                own = cols[None, ks:ke] == (offset + torch.arange(i0, i1, device=q.device))[:, None]  # (lq, lk)
                allowed = allowed | (own[None] & ~qvalid[:, i0:i1, None])
            out.append(
                F.scaled_dot_product_attention(
                    q[:, :, i0:i1], k[:, :, ks:ke], v[:, :, ks:ke], attn_mask=allowed[:, None]
                )
            )
        return out[0] if len(out) == 1 else torch.cat(out, dim=2)

    def _attend_one(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        qpos: Tensor,
        kpos: Tensor,
        kvalid: Tensor | None,
        qvalid: Tensor | None,
    ) -> Tensor:
        """One causal query q (b, h, 1, p) over keys (b, g, s, p), GQA without copying keys."""
        b, h, _, p = q.shape
        g = k.shape[1]
        qg = q.view(b, g, h // g, p)  # (b, g, r, p): the r query heads sharing a key head
        sdt = torch.promote_types(q.dtype, torch.float32)
        scores = (qg @ k.transpose(-1, -2)).to(sdt) * (p**-0.5)  # (b, g, r, s)
        allowed = kpos <= qpos[:, :1]  # (b, s)
        if kvalid is not None:
            allowed = allowed & kvalid
        if self.window is not None:
            allowed = allowed & (qpos[:, :1] - kpos < self.window)
        if qvalid is not None:  # a padded query may see its own (last) column
            allowed = allowed.clone()
            allowed[:, -1] |= ~qvalid[:, 0]
        scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        return (probs @ v).view(b, h, 1, p)  # (b, h, 1, p)

    def _out(self, o: Tensor) -> Tensor:
        b, h, l, p = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(b, l, h * p))  # (b, l, d)


@register_mixer("A")
class Attention(_AttentionBase):
    """Causal multi-head attention with RoPE, GQA, optional sliding window and KV cache.

    ``forward(x, state)`` continues from a KV cache (chunked prefill equals one full
    forward); ``step`` decodes one token. With ``window=W`` each token sees itself and
    the ``W - 1`` tokens before it, and the cache keeps only those.
    """

    causal = True
    is_causal = True
    supports_step = True
    supports_state = True

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """An empty KV cache for ``batch_size`` streams."""
        device = device if device is not None else self.in_proj.weight.device
        sd = torch.float64 if dtype == torch.float64 else torch.float32
        g, p = self.n_kv_heads, self.head_dim
        return {
            "k": torch.zeros(batch_size, g, 0, p, device=device, dtype=sd),
            "v": torch.zeros(batch_size, g, 0, p, device=device, dtype=sd),
            "valid": torch.zeros(batch_size, 0, device=device, dtype=torch.bool),
            "kpos": torch.zeros(batch_size, 0, device=device, dtype=torch.long),
            "pos": torch.zeros(batch_size, device=device, dtype=torch.long),
        }

    def forward(  # type: ignore[override]
        self, x: Tensor, state: State = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x (b, l, d), optional KV cache ``state`` and right-padded ``mask`` (b, l)."""
        b, l, _ = x.shape
        if state is None:
            state = self.init_state(b, device=x.device, dtype=x.dtype)
        sd = state["k"].dtype
        lengths = lengths_from_mask(mask, b, l, x.device)  # (b,)
        if mask is not None and bool(mask.all()):
            mask = None
        s0 = state["k"].shape[2]
        qpos = state["pos"][:, None] + torch.arange(l, device=x.device)  # (b, l)
        q, k, v = self._qkv(x, qpos)
        k_all = torch.cat([state["k"].to(k.dtype), k], dim=2)  # (b, g, s0 + l, p)
        v_all = torch.cat([state["v"].to(v.dtype), v], dim=2)
        new_valid = mask if mask is not None else torch.ones(b, l, dtype=torch.bool, device=x.device)
        valid_all = torch.cat([state["valid"], new_valid], dim=1)  # (b, s0 + l)
        kpos_all = torch.cat([state["kpos"], qpos], dim=1)
        all_valid = bool(valid_all.all())
        o = self._attend(q, k_all, v_all, qpos, kpos_all, None if all_valid else valid_all, mask, s0)
        y = self._out(o)

        # ---- new cache: right-align each row's valid keys, then drop unneeded columns
        if mask is not None:
            order = torch.sort(valid_all.to(torch.int8), dim=1, stable=True).indices  # invalid first
            valid_all = valid_all.gather(1, order)
            kpos_all = kpos_all.gather(1, order)
            idx = order[:, None, :, None].expand_as(k_all)
            k_all, v_all = k_all.gather(2, idx), v_all.gather(2, idx)
        keep = int(valid_all.sum(1).max()) if not all_valid else valid_all.shape[1]
        if self.window is not None:
            keep = min(keep, self.window - 1)
        s = valid_all.shape[1]

        def tail(t: Tensor, dim: int) -> Tensor:  # last ``keep`` columns, not pinning the rest
            return t if keep == s else t.narrow(dim, s - keep, keep).clone()

        new_state = {
            "k": tail(k_all, 2).to(sd),
            "v": tail(v_all, 2).to(sd),
            "valid": tail(valid_all, 1),
            "kpos": tail(kpos_all, 1),
            "pos": state["pos"] + lengths,
        }
        return y, new_state


@register_mixer("Abi")
class BidirectionalAttention(_AttentionBase):
    """Bidirectional (non-causal) multi-head attention; padding keys are masked.

    With ``window=W`` each token sees the tokens within distance ``W - 1`` on both
    sides. Not streamable: no state, no ``step``.
    """

    causal = False
    is_causal = False
    supports_step = False
    supports_state = False

    def forward(  # type: ignore[override]
        self, x: Tensor, state: State = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x (b, l, d), right-padded ``mask`` (b, l) -> (y (b, l, d), None)."""
        if state is not None:
            raise ValueError("BidirectionalAttention ('Abi') is not streamable; call it with state=None")
        b, l, _ = x.shape
        if mask is not None:
            lengths_from_mask(mask, b, l, x.device)  # shape check
            if bool(mask.all()):
                mask = None
        pos = torch.arange(l, device=x.device).expand(b, l)  # (b, l)
        q, k, v = self._qkv(x, pos)
        o = self._attend(q, k, v, pos, pos, mask, mask, 0)
        return self._out(o), None

    def init_state(self, batch_size: int, **_: Any) -> State:
        raise NotImplementedError("BidirectionalAttention ('Abi') has no streaming state")


def attention_reference(layer: _AttentionBase, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Float64 reference of ``layer`` on x (b, l, d): explicit masked softmax, no cache.

    Independent of the SDPA / query-block path; used by the conformance tests.
    """
    with torch.no_grad():
        f64 = torch.float64
        b, l, _ = x.shape
        h, g, p = layer.n_heads, layer.n_kv_heads, layer.head_dim
        wb = layer.in_proj.bias.double() if layer.in_proj.bias is not None else None
        qkv = F.linear(x.double(), layer.in_proj.weight.double(), wb)
        q, k, v = qkv.split([h * p, g * p, g * p], dim=-1)
        q = q.view(b, l, h, p).transpose(1, 2)  # (b, h, l, p)
        k = k.view(b, l, g, p).transpose(1, 2).repeat_interleave(h // g, dim=1)  # (b, h, l, p)
        v = v.view(b, l, g, p).transpose(1, 2).repeat_interleave(h // g, dim=1)
        pos = torch.arange(l, device=x.device).expand(b, l)
        if layer.rope:
            q, k = apply_rope(q, pos, layer.rope_theta), apply_rope(k, pos, layer.rope_theta)
        i = torch.arange(l, device=x.device)
        d = i[:, None] - i[None, :]  # (l query, l key) distance
        allowed = torch.ones(l, l, dtype=torch.bool, device=x.device)
        if layer.causal:
            allowed &= d >= 0
        if layer.window is not None:
            allowed &= (d < layer.window) if layer.causal else (d.abs() < layer.window)
        allowed = allowed.expand(b, l, l)
        if mask is not None:
            allowed = (allowed & mask[:, None, :]) | torch.eye(l, dtype=torch.bool, device=x.device)
        scores = (q @ k.transpose(-1, -2)) / (p**0.5)  # (b, h, l, l)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        o = torch.softmax(scores, dim=-1).to(f64) @ v  # (b, h, l, p)
        o = o.transpose(1, 2).reshape(b, l, h * p)
        ob = layer.out_proj.bias.double() if layer.out_proj.bias is not None else None
        return F.linear(o, layer.out_proj.weight.double(), ob)


_AttentionBase.reference = staticmethod(attention_reference)  # type: ignore[attr-defined]
