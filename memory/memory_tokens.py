"""Memory tokens: the Recurrent Memory Transformer (RMT).

Bulatov, Kuratov & Burtsev, "Recurrent Memory Transformer" (NeurIPS 2022). A segment
is processed together with ``m`` memory tokens: *read* tokens prepended to the segment
carry what earlier segments wrote, and *write* tokens appended after it collect, through
the backbone, what this segment wants to pass on; their outputs become the next
segment's memory. Gradients flow from later segments into earlier ones through the
memory (bounded by the stream runner's truncation). The wrapped backbone is run on
``[read; segment; write]`` of length ``m + n + m``; with a causal backbone the read tokens
can influence every segment token and the write tokens can see all of them, which is the
decoder-only variant of RMT. Read tokens are ``read_init + gate * memory`` with a
zero-initialised gate, so at initialisation the memory carries nothing across segments.
By default the backbone's own state is *not* carried (classic RMT: memory tokens are the
only path between segments); ``carry_backbone_state=True`` threads it as well.

Axis legend: b batch, n segment tokens, m memory tokens, d model width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import MemoryState, StreamMemory, backbone_identity


@dataclass
class MemoryTokensState(MemoryState):
    memory: Tensor | None = None  # (b, m, d) output of the last write tokens
    backbone: Any = None  # backbone state when carried, else None


class MemoryTokens(StreamMemory):
    """RMT memory tokens around a wrapped backbone (``wraps_backbone``)."""

    name = "memory_tokens"
    wraps_backbone = True
    state_cls = MemoryTokensState

    def __init__(
        self,
        d_model: int,
        backbone: nn.Module | None = None,
        num_tokens: int = 8,
        carry_backbone_state: bool = False,
    ) -> None:
        super().__init__(d_model)
        if backbone is None:
            raise TypeError("memory_tokens needs a backbone: create_memory('memory_tokens', backbone=...)")
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.backbone = backbone
        self.num_tokens = num_tokens
        self.carry_backbone_state = carry_backbone_state
        self.read_init = nn.Parameter(torch.randn(num_tokens, d_model) * 0.02)  # (m, d)
        self.write_init = nn.Parameter(torch.randn(num_tokens, d_model) * 0.02)  # (m, d)
        self.gate = nn.Parameter(torch.zeros(d_model))  # zero-init read gate
        self.mem_norm = nn.LayerNorm(d_model, elementwise_affine=False)

    def config(self) -> dict[str, Any]:
        bb = backbone_identity(self.backbone)
        return {
            "d_model": self.d_model,
            "num_tokens": self.num_tokens,
            "carry_backbone_state": self.carry_backbone_state,
            "backbone": bb,
        }

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MemoryTokensState:
        dev = device if device is not None else self.read_init.device
        mem = torch.zeros(batch_size, self.num_tokens, self.d_model, device=dev, dtype=dtype or torch.float32)
        bstate = self.backbone.init_state(batch_size, device=dev) if self.carry_backbone_state else None
        return MemoryTokensState(memory=mem, backbone=bstate)

    def _run(self, segment: Tensor, state: MemoryTokensState, mask: Tensor | None) -> tuple[Tensor, Tensor, Any]:
        b, n, d = segment.shape
        m = self.num_tokens
        read = self.read_init[None] + self.gate * state.memory  # (b, m, d)
        write = self.write_init[None].expand(b, m, d)
        x = torch.cat([read.to(segment.dtype), segment, write.to(segment.dtype)], 1)  # (b, m+n+m, d)
        if mask is not None and not bool(mask.all()):
            # padded rows: move each row's write tokens right after its last valid token
            # by running the backbone row-by-row (rare path; keeps semantics exact).
            ys, mems, sts = [], [], []
            for i in range(b):
                li = int(mask[i].sum())
                xi = torch.cat([read[i : i + 1], segment[i : i + 1, :li], write[i : i + 1]], 1)
                si = _row_state(state.backbone, i) if self.carry_backbone_state else None
                yi, sti = self.backbone(xi, si)
                pad = segment.new_zeros(1, n - li, d)
                ys.append(torch.cat([yi[:, m : m + li], pad], 1))
                mems.append(yi[:, m + li :])
                sts.append(sti)
            y = torch.cat(ys, 0)
            new_mem = torch.cat(mems, 0)
            bstate = _cat_states(sts) if self.carry_backbone_state else None
            return y, new_mem, bstate
        out, bstate = self.backbone(x, state.backbone if self.carry_backbone_state else None)
        return out[:, m : m + n], out[:, m + n :], (bstate if self.carry_backbone_state else None)

    def forward(  # type: ignore[override]
        self, segment: Tensor, state: MemoryTokensState, *, positions=None, frame_ids=None, mask: Tensor | None = None
    ) -> tuple[Tensor, MemoryTokensState]:
        self._check_input(segment, mask)
        y, new_mem, bstate = self._run(segment, state, mask)
        new_mem = self.mem_norm(new_mem.float())  # (b, m, d) keep the recurrent memory bounded
        return y, MemoryTokensState(segments=state.segments + 1, memory=new_mem, backbone=bstate)

    def write(self, state: MemoryTokensState, x: Tensor, *, positions=None, frame_ids=None, mask=None):
        return self.forward(x, state, mask=mask)[1]

    def read(self, state: MemoryTokensState, query: Tensor, *, mask: Tensor | None = None) -> Tensor:
        y, _, _ = self._run(query, state, mask)
        return y - query


def _row_state(state: Any, i: int) -> Any:
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t[i : i + 1] if isinstance(t, Tensor) else t, state)


def _cat_states(states: list[Any]) -> Any:
    from torch.utils._pytree import tree_flatten, tree_unflatten

    flat = [tree_flatten(s) for s in states]
    spec = flat[0][1]
    leaves = [torch.cat([f[0][j] for f in flat], 0) if isinstance(flat[0][0][j], Tensor) else flat[0][0][j] for j in range(len(flat[0][0]))]
    return tree_unflatten(leaves, spec)
