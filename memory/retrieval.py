"""Block retrieval memory: past tokens in blocks with representative keys, exact top-k.

Xiao et al., "InfLLM: Training-Free Long-Context Extrapolation for LLMs with an
Efficient Context Memory" (2024), and Wu et al., "Memorizing Transformers" (ICLR 2022).
Past tokens are stored as (key, value) pairs grouped into blocks of ``block_size``
consecutive tokens; each block gets one *representative key*. When a segment reads,
every block is scored by its representative against the segment's queries (the maximum
over query tokens, so one question token among many filler tokens is enough to fetch a
block), the ``top_k`` blocks are selected exactly (no approximate index), and each query
attends over the tokens of the selected blocks plus a learned null slot, with the block
score added to the logits (this is also what makes representatives trainable). The
representative is a salience-weighted mean of the block's keys (a learned scalar
salience per token, softmax within the block), a differentiable stand-in for InfLLM's
"tokens that received the most attention". Storage is capped at ``max_blocks``: beyond
it the least recently retrieved block is evicted (InfLLM's LRU cache policy), so memory
stays flat on unbounded streams. With ``local=True`` each query also attends over the
tokens not yet in a block and over its own segment up to itself (InfLLM's local window),
so one attention covers near and far context alike: a model trained on short inputs
reads a retrieved needle with the same weights it uses on a needle in its own segment.
Reading starts as a no-op (zero-initialised output projection).

When autograd is off, blocks are written into pre-grown buffers in place (the incoming
state object is consumed, like a KV cache); with autograd on, writes are out of place.

Axis legend: b batch, n segment tokens, t tokens per block, c stored blocks,
r retrieved blocks, k key width, d model width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import GatedCrossAttention, MemoryState, StreamMemory

_FREE = -(1 << 60)


@dataclass
class RetrievalState(MemoryState):
    keys: Tensor | None = None  # (b, c, t, k) stored keys (c = buffer capacity)
    values: Tensor | None = None  # (b, c, t, d) stored values
    reps: Tensor | None = None  # (b, c, k) representative key per block
    valid: Tensor | None = None  # (b, c) bool: slot holds a block
    last_used: Tensor | None = None  # (b, c) long: segment index of last retrieval (LRU)
    start: Tensor | None = None  # (b, c) long: stream position of the block's first token
    pend_k: Tensor | None = None  # (b, t, k) tokens of the block being filled
    pend_v: Tensor | None = None  # (b, t, d)
    pend_s: Tensor | None = None  # (b, t) salience logits of the pending tokens
    pend_n: Tensor | None = None  # (b,) long: pending tokens per row
    tokens: Tensor | None = None  # (b,) long: valid tokens written per row


class BlockRetrieval(StreamMemory):
    """InfLLM-style block memory with exact top-k retrieval and an LRU cap."""

    name = "retrieval"
    state_cls = RetrievalState

    def __init__(
        self,
        d_model: int,
        block_size: int = 64,
        top_k: int = 4,
        d_key: int | None = None,
        max_blocks: int | None = 1024,
        local: bool = False,
    ) -> None:
        super().__init__(d_model)
        if block_size < 1 or top_k < 1:
            raise ValueError(f"block_size and top_k must be >= 1, got {block_size}, {top_k}")
        if max_blocks is not None and max_blocks < top_k:
            raise ValueError(f"max_blocks ({max_blocks}) must be >= top_k ({top_k})")
        self.block_size, self.top_k, self.max_blocks = block_size, top_k, max_blocks
        self.local = local
        self.query_chunk = 32  # queries per gather when blocks are selected per query
        self.d_key = d_key or d_model
        self.attn = GatedCrossAttention(d_model, self.d_key, 1)
        self.salience = nn.Linear(d_model, 1)
        nn.init.zeros_(self.salience.weight)
        nn.init.zeros_(self.salience.bias)

    def config(self) -> dict[str, Any]:
        return {
            "d_model": self.d_model,
            "block_size": self.block_size,
            "top_k": self.top_k,
            "d_key": self.d_key,
            "max_blocks": self.max_blocks,
            "local": self.local,
        }

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> RetrievalState:
        dev = device if device is not None else self.attn.gate.device
        b, t, k, d, dt = batch_size, self.block_size, self.d_key, self.d_model, dtype or torch.float32
        return RetrievalState(
            keys=torch.zeros(b, 0, t, k, device=dev, dtype=dt),
            values=torch.zeros(b, 0, t, d, device=dev, dtype=dt),
            reps=torch.zeros(b, 0, k, device=dev, dtype=dt),
            valid=torch.zeros(b, 0, dtype=torch.bool, device=dev),
            last_used=torch.zeros(b, 0, dtype=torch.long, device=dev),
            start=torch.zeros(b, 0, dtype=torch.long, device=dev),
            pend_k=torch.zeros(b, t, k, device=dev, dtype=dt),
            pend_v=torch.zeros(b, t, d, device=dev, dtype=dt),
            pend_s=torch.zeros(b, t, device=dev, dtype=dt),
            pend_n=torch.zeros(b, dtype=torch.long, device=dev),
            tokens=torch.zeros(b, dtype=torch.long, device=dev),
        )

    def num_blocks(self, state: RetrievalState) -> Tensor:
        """Stored blocks per row (B,)."""
        return state.valid.long().sum(-1)

    # ------------------------------------------------------------------------ read
    def _scores(self, state: RetrievalState, q: Tensor) -> Tensor:
        """Block scores (b, n, c): each query against each representative, -inf for empty slots."""
        s = torch.einsum("bnk,bck->bnc", q, state.reps.to(q.dtype)) * self.d_key**-0.5
        return s.masked_fill(~state.valid[:, None, :], float("-inf"))

    def _select(self, state: RetrievalState, q: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Exact top-k blocks for every query: indices (b, n, r), validity (b, n, r), scores (b, n, r)."""
        s = self._scores(state, q)  # (b, n, c)
        r = min(self.top_k, s.shape[-1])
        top, idx = s.topk(r, dim=-1)  # (b, n, r) exact
        ok = torch.isfinite(top)
        if mask is not None:
            ok = ok & mask.bool()[..., None]
        return idx, ok, torch.where(ok, top, torch.zeros_like(top))

    def read(self, state: RetrievalState, query: Tensor, *, mask: Tensor | None = None) -> Tensor:
        return self._read(state, query, mask)[0]

    def _read(self, state: RetrievalState, query: Tensor, mask: Tensor | None,
              kv: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Every query attends over *its own* top-k blocks (block score added to the logits),
        the pending past tokens not yet in a block and, with ``local``, its own segment up to
        itself. When every stored block fits in ``top_k`` all queries share them (no gather)."""
        b, n, _ = query.shape
        has_blocks = state.valid.shape[1] > 0 and bool(state.valid.any())
        if not has_blocks and not self.local:
            return torch.zeros_like(query), None, None
        t = self.block_size
        q = self.attn.queries(query)  # (b, n, k)
        loc_k = loc_v = loc_m = None
        if self.local:
            pend_ok = torch.arange(t, device=query.device)[None, :] < state.pend_n[:, None]  # (b, t)
            k_seg, v_seg = kv if kv is not None else self.attn.keys_values(query)  # (b, n, k), (b, n, d)
            qvalid = torch.ones(b, n, dtype=torch.bool, device=query.device) if mask is None else mask.bool()
            causal = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
            loc_k = torch.cat([state.pend_k.to(query.dtype), k_seg], 1)  # (b, t+n, k)
            loc_v = torch.cat([state.pend_v.to(query.dtype), v_seg], 1)  # (b, t+n, d)
            loc_m = torch.cat([pend_ok[:, None, :].expand(b, n, t), causal[None] & qvalid[:, None, :]], -1)  # (b, n, t+n)
        if not has_blocks:
            return self.attn.attend(query, loc_k, loc_v, loc_m), None, None
        n_blocks = int(state.valid.sum(-1).max())
        if n_blocks <= self.top_k:  # every block is retrieved: shared keys, per-query block bias
            s = self._scores(state, q)  # (b, n, c)
            c = s.shape[-1]
            kk = state.keys.reshape(b, c * t, -1).to(query.dtype)
            vv = state.values.reshape(b, c * t, -1).to(query.dtype)
            m_blk = state.valid[:, None, :, None].expand(b, n, c, t).reshape(b, n, c * t)
            bias = torch.where(m_blk, s[..., None].expand(b, n, c, t).reshape(b, n, c * t), torch.zeros(()))
            idx = torch.arange(c, device=query.device)[None, :].expand(b, c)  # (b, c) all slots
            ok = state.valid
            if loc_k is not None:
                kk, vv = torch.cat([kk, loc_k], 1), torch.cat([vv, loc_v], 1)
                m_blk = torch.cat([m_blk, loc_m], -1)
                bias = torch.cat([bias, bias.new_zeros(b, n, loc_k.shape[1])], -1)
            return self.attn.attend(query, kk, vv, m_blk, bias=bias), idx, ok
        idx, ok, top = self._select(state, q, mask)  # (b, n, r) each
        r = idx.shape[-1]
        outs = []
        for a in range(0, n, self.query_chunk):  # bound the (queries x retrieved tokens) gather
            e = min(a + self.query_chunk, n)
            ii, okc, tc = idx[:, a:e], ok[:, a:e], top[:, a:e]  # (b, c_, r)
            rows = torch.arange(b, device=query.device)[:, None, None]
            kk = state.keys[rows, ii].reshape(b, e - a, r * t, -1).to(query.dtype)  # (b, c_, r*t, k)
            vv = state.values[rows, ii].reshape(b, e - a, r * t, -1).to(query.dtype)  # (b, c_, r*t, d)
            mm = okc[..., None].expand(-1, -1, r, t).reshape(b, e - a, r * t)
            bb = tc[..., None].expand(-1, -1, r, t).reshape(b, e - a, r * t)
            if loc_k is not None:
                L = loc_k.shape[1]
                kk = torch.cat([kk, loc_k[:, None].expand(b, e - a, L, -1)], 2)
                vv = torch.cat([vv, loc_v[:, None].expand(b, e - a, L, -1)], 2)
                mm = torch.cat([mm, loc_m[:, a:e]], -1)
                bb = torch.cat([bb, bb.new_zeros(b, e - a, L)], -1)
            outs.append(self.attn.attend_per_query(query[:, a:e], kk, vv, mm, bias=bb))
        return torch.cat(outs, 1), idx.reshape(b, n * r), ok.reshape(b, n * r)

    # ----------------------------------------------------------------------- write
    def forward(  # type: ignore[override]
        self, segment: Tensor, state: RetrievalState, *, positions=None, frame_ids=None, mask: Tensor | None = None
    ) -> tuple[Tensor, RetrievalState]:
        self._check_input(segment, mask)
        kv = self.attn.keys_values(segment)  # (b, n, k), (b, n, d): read locally, then written
        read, idx, ok = self._read(state, segment, mask, kv)
        if idx is not None:
            state = self._touch(state, idx, ok)
        return segment + read, self._write_kv(state, segment, kv, mask)

    def _touch(self, state: RetrievalState, idx: Tensor, ok: Tensor) -> RetrievalState:
        """Mark retrieved blocks as used now (LRU bookkeeping; counters only)."""
        now = torch.full_like(idx, state.segments + 1)
        cur = state.last_used.gather(1, idx)
        lu = state.last_used.scatter(1, idx, torch.where(ok, now, cur))
        return _replace(state, last_used=lu)

    def write(
        self,
        state: RetrievalState,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        frame_ids: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> RetrievalState:
        return self._write_kv(state, x, self.attn.keys_values(x), mask)

    def _write_kv(self, state: RetrievalState, x: Tensor, kv: tuple[Tensor, Tensor], mask: Tensor | None) -> RetrievalState:
        """:meth:`write` with the keys and values of ``x`` already projected."""
        b, n, _ = x.shape
        k, v = kv  # (b, n, k), (b, n, d)
        s = self.salience(x).squeeze(-1)  # (b, n)
        uniform = (mask is None or bool(mask.all())) and bool((state.pend_n == state.pend_n[0]).all())
        uniform = uniform and bool((state.valid.sum(-1) == state.valid[:1].sum(-1)).all()) if b > 0 else uniform
        if uniform:
            return self._write_rows(state, k, v, s, n)
        # rows differ (padding): write each row on its own, then re-stack (rare path)
        rows = []
        for i in range(b):
            li = n if mask is None else int(mask[i].sum())
            st_i = _row(state, i)
            rows.append(self._write_rows(st_i, k[i : i + 1, :li], v[i : i + 1, :li], s[i : i + 1, :li], li))
        return _stack_rows(rows)

    def _write_rows(self, st: RetrievalState, k: Tensor, v: Tensor, s: Tensor, n: int) -> RetrievalState:
        """Write ``n`` tokens to every row (rows share pending count and block count)."""
        b, t = k.shape[0], self.block_size
        p = int(st.pend_n[0]) if b else 0
        ck = torch.cat([st.pend_k[:, :p].to(k.dtype), k], 1)  # (b, p+n, k)
        cv = torch.cat([st.pend_v[:, :p].to(v.dtype), v], 1)
        cs = torch.cat([st.pend_s[:, :p].to(s.dtype), s], 1)
        nfull = (p + n) // t
        rest = p + n - nfull * t
        first = st.tokens - p  # stream position of the first pending token
        pend_k = torch.cat([ck[:, nfull * t :], ck.new_zeros(b, t - rest, ck.shape[-1])], 1)
        pend_v = torch.cat([cv[:, nfull * t :], cv.new_zeros(b, t - rest, cv.shape[-1])], 1)
        pend_s = torch.cat([cs[:, nfull * t :], cs.new_zeros(b, t - rest)], 1)
        st = _replace(
            st,
            pend_k=pend_k,
            pend_v=pend_v,
            pend_s=pend_s,
            pend_n=torch.full_like(st.pend_n, rest),
            tokens=st.tokens + n,
            segments=st.segments + 1,
        )
        if nfull == 0:
            return st
        bk = ck[:, : nfull * t].view(b, nfull, t, -1)  # (b, f, t, k) new blocks
        bv = cv[:, : nfull * t].view(b, nfull, t, -1)
        w = torch.softmax(cs[:, : nfull * t].view(b, nfull, t).float(), -1).to(bk.dtype)  # (b, f, t)
        reps = (w[..., None] * bk).sum(2)  # (b, f, k) salience-weighted representative
        starts = first[:, None] + torch.arange(nfull, device=k.device)[None, :] * t  # (b, f)
        return self._insert(st, bk, bv, reps, starts)

    def _insert(self, st: RetrievalState, bk: Tensor, bv: Tensor, reps: Tensor, starts: Tensor) -> RetrievalState:
        """Put ``f`` new blocks into free slots, evicting least-recently-used ones past the cap."""
        b, f = reps.shape[:2]
        if self.max_blocks is not None and f > self.max_blocks:  # keep only the newest
            bk, bv, reps, starts = bk[:, -self.max_blocks :], bv[:, -self.max_blocks :], reps[:, -self.max_blocks :], starts[:, -self.max_blocks :]
            f = self.max_blocks
        cap = st.valid.shape[1]
        count = int(st.valid.sum(-1).max()) if b else 0
        need = count + f
        if need > cap and (self.max_blocks is None or cap < self.max_blocks):
            new_cap = max(need, 2 * cap, 8)
            if self.max_blocks is not None:
                new_cap = min(new_cap, self.max_blocks)
            st = _grow(st, new_cap)
            cap = new_cap
        # slot choice: free slots first (lowest index), then least recently used, oldest
        slot_score = torch.where(
            st.valid,
            st.last_used * (1 << 40) + st.start,
            torch.full_like(st.start, _FREE) + torch.arange(cap, device=st.start.device)[None, :],
        )
        slots = (-slot_score).topk(f, dim=-1).indices  # (b, f)
        inplace = not torch.is_grad_enabled() or not (bk.requires_grad or st.keys.requires_grad)
        now = torch.full_like(starts, st.segments)

        def put(buf: Tensor, val: Tensor) -> Tensor:
            idx = slots.view(b, f, *([1] * (buf.dim() - 2))).expand(b, f, *buf.shape[2:])
            val = val.to(buf.dtype)
            return buf.scatter_(1, idx, val) if inplace else buf.scatter(1, idx, val)

        return _replace(
            st,
            keys=put(st.keys, bk),
            values=put(st.values, bv),
            reps=put(st.reps, reps),
            valid=put(st.valid, torch.ones(b, f, dtype=torch.bool, device=slots.device)),
            last_used=put(st.last_used, now),
            start=put(st.start, starts),
        )


def _replace(st: RetrievalState, **kw: Any) -> RetrievalState:
    import dataclasses

    return dataclasses.replace(st, **kw)


def _grow(st: RetrievalState, cap: int) -> RetrievalState:
    """Reallocate the block buffers with capacity ``cap`` (existing blocks keep their slots)."""
    old = st.valid.shape[1]

    def pad(t: Tensor) -> Tensor:
        extra = t.new_zeros((t.shape[0], cap - old) + tuple(t.shape[2:]))
        return torch.cat([t, extra], 1)

    return _replace(
        st,
        keys=pad(st.keys),
        values=pad(st.values),
        reps=pad(st.reps),
        valid=pad(st.valid),
        last_used=pad(st.last_used),
        start=pad(st.start),
    )


_BLOCK_FIELDS = ("keys", "values", "reps", "valid", "last_used", "start")
_ROW_FIELDS = _BLOCK_FIELDS + ("pend_k", "pend_v", "pend_s", "pend_n", "tokens")


def _row(st: RetrievalState, i: int) -> RetrievalState:
    return _replace(st, **{f: getattr(st, f)[i : i + 1] for f in _ROW_FIELDS})


def _stack_rows(rows: list[RetrievalState]) -> RetrievalState:
    """Stack per-row states, compacting each row's blocks to the front and padding capacity."""
    comp = []
    for r in rows:
        keep = r.valid[0].nonzero().squeeze(-1)
        comp.append(_replace(r, **{f: getattr(r, f)[:, keep] for f in _BLOCK_FIELDS}))
    cap = max(r.valid.shape[1] for r in comp)
    comp = [_grow(r, cap) if r.valid.shape[1] < cap else r for r in comp]
    out = {f: torch.cat([getattr(r, f) for r in comp], 0) for f in _ROW_FIELDS}
    return _replace(comp[0], **out)
