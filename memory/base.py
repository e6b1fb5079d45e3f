"""The streaming-memory protocol shared by every module in ``memory/``.

A *memory* lets a model use context beyond the segment it is looking at. Following the
Recurrent Memory Transformer (Bulatov et al., 2022) and the streaming literature it
builds on (Transformer-XL, Compressive Transformers, StreamingLLM, InfLLM, MA-LMM), a long
input is cut into segments; each segment reads what the memory holds about the past and
then writes itself into it. Learned parameters (projections, gates, memory-token
embeddings) live in the ``nn.Module``; the *runtime* memory lives in an explicit state
object, a dataclass of tensors plus counters, passed in and returned by every call. The
module itself is therefore stateless between calls: the same module serves any number of
independent streams, a state can be detached (truncated BPTT), reset per row when a stream
ends, measured in bytes, and saved to / restored from a file that records the
configuration it belongs to (restoring into a module with another configuration is
refused with a message naming the differing fields).

Every reading path starts as a no-op: read results are added to the stream through a
zero-initialised output projection (then a per-channel gate), so adding a memory to a
model never changes its output at initialisation.

Axis legend (shape comments in ``memory/``): b batch, n tokens in the current segment,
d model width, m memory entries (slots, cached tokens, bank entries), k key width,
t tokens per retrieval block, c number of stored blocks, r retrieved blocks per query.

Inputs are ``(B, N, D)`` with optional ``positions`` (B, N) absolute token positions,
``frame_ids`` (B, N) frame / patch-group ids (frame streams) and ``mask`` (B, N) bool,
``True`` for valid tokens (padding on the right).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten, treespec_dumps, treespec_loads

from longstream.backbones.io import (
    CheckpointError,
    CheckpointNotFoundError,
    load_tensor_file,
    save_tensor_file,
)

__all__ = [
    "MemoryState",
    "StreamMemory",
    "MemoryStateError",
    "GatedCrossAttention",
    "keep_last_valid",
    "positions_from_mask",
]


class MemoryStateError(ValueError):
    """A saved memory state does not fit the module it is restored into."""


@dataclass
class MemoryState:
    """Base of every runtime memory state: a dataclass of tensors, pytrees and counters.

    Subclasses add fields. Tensor fields (and pytrees of tensors, e.g. a wrapped
    backbone's state) are moved, detached and saved by the generic helpers below; ``int``
    / ``float`` / ``str`` fields are counters stored in the saved metadata.
    """

    segments: int = 0  # segments written so far (python counter)

    # ----------------------------------------------------------------- generic helpers
    def map_tensors(self, fn: Any) -> MemoryState:
        """A copy with ``fn`` applied to every tensor (also inside pytree fields)."""
        changes = {}
        for f in dataclasses.fields(self):
            val = getattr(self, f.name)
            if isinstance(val, Tensor) or isinstance(val, (dict, list, tuple)):
                changes[f.name] = tree_map(lambda t: fn(t) if isinstance(t, Tensor) else t, val)
        return dataclasses.replace(self, **changes)

    def nbytes(self) -> int:
        """Bytes held by the tensors of this state."""
        total = 0
        for f in dataclasses.fields(self):
            leaves, _ = tree_flatten(getattr(self, f.name))
            total += sum(t.numel() * t.element_size() for t in leaves if isinstance(t, Tensor))
        return total


def positions_from_mask(mask: Tensor | None, start: Tensor, batch: int, n: int, device: torch.device) -> Tensor:
    """Absolute positions (B, N) of the tokens of a segment, continuing from ``start`` (B,).

    Padded tokens get the position of the last valid token before them (they are never
    written, so the value only has to be harmless).
    """
    if mask is None:
        return start[:, None] + torch.arange(n, device=device)[None, :]
    return start[:, None] + (mask.long().cumsum(-1) - 1).clamp_min(0)


def keep_last_valid(values: list[Tensor], valid: Tensor, keep: int) -> tuple[list[Tensor], Tensor]:
    """Per row, keep the last ``keep`` valid entries, right-aligned, in order.

    ``values``: tensors of shape (B, M, ...) sharing ``valid`` (B, M). Returns tensors of
    shape (B, keep, ...) and the new validity mask (B, keep); rows with fewer than
    ``keep`` valid entries are padded on the left with invalid zeros.
    """
    b, m = valid.shape
    rank = valid.long().cumsum(-1)  # (b, m) 1-based rank among valid entries
    total = rank[:, -1:]  # (b, 1)
    slot = keep - (total - rank) - 1  # (b, m) target slot, right-aligned
    ok = valid & (slot >= 0)
    slot = torch.where(ok, slot, torch.full_like(slot, keep))  # dummy column `keep`
    outs = []
    for v in values:
        shape = (b, keep + 1) + tuple(v.shape[2:])
        out = v.new_zeros(shape)
        idx = slot.view(b, m, *([1] * (v.dim() - 2))).expand_as(v)
        out = out.scatter(1, idx, v)
        outs.append(out[:, :keep])
    new_valid = torch.zeros(b, keep + 1, dtype=torch.bool, device=valid.device).scatter(1, slot, ok)
    return outs, new_valid[:, :keep]


class GatedCrossAttention(nn.Module):
    """Read head shared by the cache-style memories: queries from the stream, keys and
    values from memory entries, a learned always-valid null slot (so "nothing relevant"
    is expressible and an empty memory reads zeros), and a zero-initialised output
    projection (so the read is a no-op at initialisation) followed by a per-channel gate.

    Queries, keys and values are projected from RMS-normalised inputs (pre-norm, as in
    every attention block), so the read does not depend on the scale of the stream it reads.

    ``forward(x (B,N,D), mem (B,M,D), mem_mask (B,M) or (B,N,M)) -> x + gate * read``.
    """

    def __init__(self, d_model: int, d_key: int | None = None, n_heads: int = 1) -> None:
        super().__init__()
        d_key = d_key or d_model
        if d_key % n_heads:
            raise ValueError(f"d_key={d_key} must be divisible by n_heads={n_heads}")
        self.n_heads, self.d_key = n_heads, d_key
        from longstream.backbones.base import RMSNorm

        self.norm = RMSNorm(d_model)
        self.q = nn.Linear(d_model, d_key, bias=False)
        self.k = nn.Linear(d_model, d_key, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.null_k = nn.Parameter(torch.zeros(d_key))
        # reading starts as a no-op through the zero-initialised output projection; the
        # per-channel gate starts at 1. (A zero gate with a random projection is also a
        # no-op, but then the gate's gradient is the product of two random read-outs and
        # the read path stayed at chance for 500+ steps in pipelines/recall/diagnose.py;
        # a zero projection gets a full-rank gradient at step 1 and learns.)
        nn.init.zeros_(self.o.weight)
        self.gate = nn.Parameter(torch.ones(d_model))

    def queries(self, x: Tensor) -> Tensor:
        """Query projection of stream tokens (B, N, D) -> (B, N, K)."""
        return self.q(self.norm(x))

    def keys_values(self, mem: Tensor) -> tuple[Tensor, Tensor]:
        """Key (B, M, K) and value (B, M, D) projections of memory entries (B, M, D)."""
        m = self.norm(mem)
        return self.k(m), self.v(m)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor | None = None) -> Tensor:
        """Attention of queries ``x`` (B,N,D) over projected ``k`` (B,M,K), ``v`` (B,M,D).

        ``mask``: (B, M) or (B, N, M) bool, True = may attend; ``bias``: optional (B, N, M)
        float added to the attention logits. Returns the gated read (B, N, D).
        """
        b, n, _ = x.shape
        h, p = self.n_heads, self.d_key // self.n_heads
        q = self.queries(x).view(b, n, h, p).transpose(1, 2)  # (b, h, n, p)
        nk = self.null_k.view(1, 1, self.d_key).expand(b, 1, -1)
        kk = torch.cat([nk, k], 1).view(b, -1, h, p).transpose(1, 2)  # (b, h, 1+m, p)
        vv = torch.cat([v.new_zeros(b, 1, v.shape[-1]), v], 1)  # (b, 1+m, d)
        vv = vv.view(b, -1, h, vv.shape[-1] // h).transpose(1, 2)  # (b, h, 1+m, d/h)
        if mask.dim() == 2:
            mask = mask[:, None, :].expand(b, n, mask.shape[-1])
        full = torch.cat([mask.new_ones(b, n, 1), mask], -1)[:, None]  # (b, 1, n, 1+m)
        if bias is not None:
            fb = torch.cat([bias.new_zeros(b, n, 1), bias], -1)[:, None]  # (b, 1, n, 1+m)
            full = fb.masked_fill(~full, float("-inf")).to(q.dtype)
        out = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=full)
        out = out.transpose(1, 2).reshape(b, n, -1)  # (b, n, d)
        return self.gate * self.o(out)

    def attend_per_query(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor | None = None) -> Tensor:
        """Like :meth:`attend`, but every query has its own entries: ``k`` (B,N,M,K),
        ``v`` (B,N,M,D), ``mask`` / ``bias`` (B,N,M). Returns the gated read (B, N, D)."""
        b, n, m, _ = k.shape
        out = self.attend(
            x.reshape(b * n, 1, -1), k.reshape(b * n, m, -1), v.reshape(b * n, m, -1),
            mask.reshape(b * n, 1, m), None if bias is None else bias.reshape(b * n, 1, m),
        )
        return out.view(b, n, -1)

    def forward(self, x: Tensor, mem: Tensor, mem_mask: Tensor) -> Tensor:
        return x + self.attend(x, *self.keys_values(mem), mem_mask)


class StreamMemory(nn.Module):
    """Base class of every memory module (see the module docstring for the contract).

    Class attributes:

    - ``name``: registry name.
    - ``wraps_backbone``: True when the memory runs the backbone itself (carried state,
      memory tokens); the stream runner then calls only the memory. Otherwise the runner
      runs the backbone and passes its output through the memory.
    - ``segment_invariant``: True when splitting a stream into more segments does not
      change the outputs (tested).
    """

    name: ClassVar[str] = "base"
    wraps_backbone: ClassVar[bool] = False
    segment_invariant: ClassVar[bool] = False
    state_cls: ClassVar[type[MemoryState]] = MemoryState

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    # --------------------------------------------------------------- to implement
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able); saved with a state and checked on restore."""
        return {"d_model": self.d_model}

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MemoryState:
        """The empty memory for ``batch_size`` streams."""
        raise NotImplementedError

    def write(
        self,
        state: MemoryState,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        frame_ids: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> MemoryState:
        """Write segment ``x`` (B, N, D) into the memory; returns the new state."""
        raise NotImplementedError

    def read(self, state: MemoryState, query: Tensor, *, mask: Tensor | None = None) -> Tensor:
        """What the memory returns for ``query`` (B, N, D): the gated read, (B, N, D)."""
        raise NotImplementedError

    def forward(  # type: ignore[override]
        self,
        segment: Tensor,
        state: MemoryState,
        *,
        positions: Tensor | None = None,
        frame_ids: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, MemoryState]:
        """Read then write: ``segment + read(state, segment)``, then the updated state."""
        self._check_input(segment, mask)
        out = segment + self.read(state, segment, mask=mask)
        state = self.write(state, segment, positions=positions, frame_ids=frame_ids, mask=mask)
        return out, state

    # --------------------------------------------------------------- shared helpers
    def _check_input(self, x: Tensor, mask: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{self.name} memory expects (B, N, {self.d_model}) input, got {tuple(x.shape)}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")

    def reset(self, state: MemoryState, done_mask: Tensor) -> MemoryState:
        """Empty the rows of ``state`` whose stream ended (``done_mask`` (B,) bool True)."""
        b = done_mask.shape[0]
        leaves0 = next(t for t in tree_flatten(dataclasses.asdict(state))[0] if isinstance(t, Tensor))
        fresh = self.init_state(b, device=leaves0.device)
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(state):
            cur, new = getattr(state, f.name), getattr(fresh, f.name)
            if isinstance(cur, Tensor):
                changes[f.name] = _reset_rows(cur, new, done_mask, f.name)
            elif isinstance(cur, (dict, list, tuple)) and cur:
                changes[f.name] = _reset_tree(cur, new, done_mask, f.name)
        return dataclasses.replace(state, **changes)

    def detach(self, state: MemoryState) -> MemoryState:
        """Cut the autograd graph behind ``state`` (truncated back-propagation)."""
        return state.map_tensors(lambda t: t.detach())

    def state_nbytes(self, state: MemoryState) -> int:
        """Bytes held by ``state``."""
        return state.nbytes()

    # ----------------------------------------------------------------- save / restore
    def _identity(self) -> dict[str, Any]:
        return {"memory": self.name, "config": self.config()}

    def state_dict_of(self, state: MemoryState) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Flatten ``state`` into (tensors, metadata) for saving; see :meth:`save_state`."""
        tensors: dict[str, Tensor] = {}
        meta: dict[str, Any] = {"identity": self._identity(), "counters": {}, "trees": {}, "none": []}
        for f in dataclasses.fields(state):
            val = getattr(state, f.name)
            if isinstance(val, Tensor):
                tensors[f.name] = val.detach().contiguous().clone()
            elif val is None:
                meta["none"].append(f.name)
            elif isinstance(val, (int, float, str, bool)):
                meta["counters"][f.name] = val
            else:  # a pytree of tensors (e.g. a backbone state)
                spec, consts, tt = flatten_tree(val)
                meta["trees"][f.name] = {"spec": spec, "consts": consts}
                tensors.update({f"{f.name}.{i}": t for i, t in tt.items()})
        return tensors, {"longstream_memory": json.dumps(meta, sort_keys=True)}

    def state_from_dict(self, tensors: dict[str, Tensor], metadata: dict[str, str], *, source: str = "state") -> MemoryState:
        """Rebuild a state from :meth:`state_dict_of` output; refuses a foreign config."""
        if "longstream_memory" not in metadata:
            raise MemoryStateError(f"{source} is not a longstream memory state (no 'longstream_memory' metadata)")
        meta = json.loads(metadata["longstream_memory"])
        mine, theirs = self._identity(), meta["identity"]
        if mine != theirs:
            diff = _describe_diff(theirs, mine)
            raise MemoryStateError(
                f"{source} was saved by memory {theirs['memory']!r} with a different configuration "
                f"({diff}); restore it into a module built with the saved configuration "
                f"(create_memory({theirs['memory']!r}, **{theirs['config']}))"
            )
        kw: dict[str, Any] = dict(meta["counters"])
        for name in meta["none"]:
            kw[name] = None
        for f in dataclasses.fields(self.state_cls):
            if f.name in tensors:
                kw[f.name] = tensors[f.name]
            elif f.name in meta["trees"]:
                info = meta["trees"][f.name]
                kw[f.name] = unflatten_tree(info["spec"], info["consts"], tensors, f"{f.name}.")
        return self.state_cls(**kw)

    def save_state(self, state: MemoryState, path: str | os.PathLike) -> None:
        """Write ``state`` to one safetensors file, atomically and with an integrity digest.

        Written by :func:`longstream.backbones.io.save_tensor_file`: a single file (its JSON
        description in the safetensors header, see that module for why) that
        :meth:`load_state` verifies before use.
        """
        tensors, meta = self.state_dict_of(state)
        save_tensor_file(path, tensors, meta)

    def load_state(self, path: str | os.PathLike, *, device: torch.device | str | None = None) -> MemoryState:
        """Read a state written by :meth:`save_state` (digest verified); refuses one from another config."""
        tensors, meta = read_state_file(path, device=device, what="memory state")
        return self.state_from_dict(tensors, meta, source=f"memory state {os.fspath(path)!r}")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


def read_state_file(
    path: str | os.PathLike, *, device: torch.device | str | None = None, what: str = "state"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a state file, verified; a bad file is a :class:`MemoryStateError`."""
    try:
        return load_tensor_file(path, device=device or "cpu", what=what)
    except CheckpointNotFoundError:
        raise
    except CheckpointError as e:
        raise MemoryStateError(str(e)) from None


def flatten_tree(tree: Any) -> tuple[str, dict[str, Any], dict[int, Tensor]]:
    """Flatten a pytree for saving: (treespec json, non-tensor leaves by index, tensors by index)."""
    leaves, spec = tree_flatten(tree)
    consts: dict[str, Any] = {}
    tensors: dict[int, Tensor] = {}
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, Tensor):
            tensors[i] = leaf.detach().contiguous().clone()
        elif leaf is None or isinstance(leaf, (int, float, str, bool)):
            consts[str(i)] = leaf
        else:
            raise TypeError(f"cannot save a state leaf of type {type(leaf).__name__}")
    return treespec_dumps(spec), consts, tensors


def unflatten_tree(spec: str, consts: dict[str, Any], tensors: dict[str, Tensor], prefix: str) -> Any:
    """Inverse of :func:`flatten_tree` (tensors looked up as ``prefix + index``)."""
    ts = treespec_loads(spec)
    leaves = [consts[str(i)] if str(i) in consts else tensors[f"{prefix}{i}"] for i in range(ts.num_leaves)]
    return tree_unflatten(leaves, ts)


def backbone_identity(backbone: Any) -> Any:
    """A JSON-able description of a backbone's configuration (for state identity checks)."""
    if backbone is None:
        return None
    cfg = getattr(backbone, "cfg", None) or getattr(backbone, "config", None)
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return type(backbone).__name__


def _describe_diff(saved: dict[str, Any], mine: dict[str, Any]) -> str:
    if saved.get("memory") != mine.get("memory"):
        return f"memory type {saved.get('memory')!r} != {mine.get('memory')!r}"
    a, b = saved.get("config", {}), mine.get("config", {})
    parts = [f"{k}: saved {a.get(k)!r} vs module {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; ".join(parts) or "unknown difference"


def _reset_rows(cur: Tensor, new: Tensor, done: Tensor, name: str) -> Tensor:
    if cur.dim() == 0 or cur.shape[0] != done.shape[0]:
        return cur  # not batched
    if cur.shape == new.shape:
        sel = done.view(-1, *([1] * (cur.dim() - 1))).to(cur.device)
        return torch.where(sel, new.to(cur.dtype), cur)
    # variable-size buffers (caches that grew): rows that end are emptied by zeroing;
    # the module's own validity masks make zeroed entries invisible.
    sel = done.view(-1, *([1] * (cur.dim() - 1))).to(cur.device)
    return torch.where(sel, torch.zeros_like(cur), cur)


def _reset_tree(cur: Any, new: Any, done: Tensor, name: str) -> Any:
    cl, cspec = tree_flatten(cur)
    nl, nspec = tree_flatten(new)
    if cspec != nspec or any(
        isinstance(a, Tensor) and (not isinstance(b, Tensor) or a.shape != b.shape) for a, b in zip(cl, nl)
    ):
        if bool(done.all()):
            return new
        raise NotImplementedError(
            f"state field {name!r} has a variable-size structure (e.g. a grown KV cache) and cannot be "
            "reset row by row; reset all rows at once or use a fixed-size state"
        )
    return tree_unflatten([_reset_rows(a, b, done, name) if isinstance(a, Tensor) else a for a, b in zip(cl, nl)], cspec)


def _inv_sqrt(d: int) -> float:
    return 1.0 / math.sqrt(d)
