"""Masked pooling and the task heads every pipeline puts on top of a backbone.

A backbone maps ``(B, L, D) -> (B, L, D)``; a pipeline then needs either one vector per
sequence (species / digit / video classification, regression) or one prediction per
token (genome annotation, CTC over audio frames, frame labels). Variable-length batches
are right-padded and carry a ``mask`` (B, L) bool, ``True`` for valid tokens (the
convention of ``longstream.memory``); ``mask=None`` means every position is valid.

Padding never influences a result: pooled vectors are computed with padded positions
replaced by zeros (so even NaN / inf in padding cannot leak), attention pooling gives
them zero weight, and per-token heads fill padded positions with ``pad_fill``. A row with
no valid token pools to a zero vector (mean / max / last / attention), never NaN.

Pooling (``pool=``): ``mean`` (average of valid tokens), ``max`` (elementwise max over
valid tokens), ``last`` (the last valid position: the summary of a causal backbone; works
with right padding and with any mask), ``cls`` (the token at ``cls_index``: 0 for a
prepended ``[CLS]``, ``l // 2`` style middle tokens via an index tensor), ``attention``
(a learned query, masked softmax over the tokens; Ilse et al., 2018 style pooling).

Axis legend: b batch, l length, d model width, c classes / outputs, h heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError

__all__ = [
    "POOLS",
    "AttentionPool",
    "MaskedPool",
    "RegressionHead",
    "SequenceClassifier",
    "TokenClassifier",
    "ctc_greedy_decode",
    "masked_max",
    "masked_mean",
    "pool_cls",
    "pool_last",
]

POOLS = ("mean", "max", "last", "cls", "attention")


def _valid(x: Tensor, mask: Tensor | None) -> Tensor:
    """(b, l) bool validity, all True when ``mask`` is None; checks the shape."""
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match tokens {tuple(x.shape[:2])}")
    return mask.to(torch.bool)


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the valid tokens of ``x`` (B, L, D) -> (B, D); empty rows give zeros."""
    m = _valid(x, mask)
    s = x.masked_fill(~m[..., None], 0.0).sum(1)  # (b, d)
    n = m.sum(1, keepdim=True).clamp_min(1).to(s.dtype)  # (b, 1)
    return s / n


def masked_max(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Elementwise max over the valid tokens (B, L, D) -> (B, D); empty rows give zeros."""
    m = _valid(x, mask)
    y = x.masked_fill(~m[..., None], float("-inf")).amax(1)  # (b, d)
    return y.masked_fill(~m.any(1, keepdim=True), 0.0)


def pool_last(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """The token at the last valid position of each row (B, L, D) -> (B, D); empty rows give zeros."""
    m = _valid(x, mask)
    pos = torch.arange(1, x.shape[1] + 1, device=x.device)  # (l,) 1-based
    idx = (m.long() * pos).argmax(1)  # (b,) last True position (0 when none)
    y = x[torch.arange(x.shape[0], device=x.device), idx]  # (b, d)
    return y.masked_fill(~m.any(1, keepdim=True), 0.0)


def pool_cls(x: Tensor, index: int | Tensor = 0) -> Tensor:
    """The token at ``index`` (an int, negative allowed, or a (B,) long tensor) -> (B, D)."""
    if isinstance(index, int):
        return x[:, index]
    return x[torch.arange(x.shape[0], device=x.device), index.to(x.device).long()]


class AttentionPool(nn.Module):
    """Learned-query attention pooling: ``softmax_masked(k(x) . q / sqrt(d/h))`` weights over tokens.

    ``n_heads`` queries each pool ``d_model / n_heads`` channels of the values (the
    tokens themselves), so the output width is ``d_model``. The query starts at zero, so
    at initialisation the pool is the masked mean.
    """

    def __init__(self, d_model: int, n_heads: int = 1) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.query = nn.Parameter(torch.zeros(n_heads, d_model // n_heads))

    def weights(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention weights (B, H, L); zero on padding and on rows without valid tokens."""
        b, l, d = x.shape
        m = _valid(x, mask)
        xs = x.masked_fill(~m[..., None], 0.0)
        k = self.key(xs).view(b, l, self.n_heads, d // self.n_heads)  # (b, l, h, d/h)
        scores = torch.einsum("blhe,he->bhl", k, self.query) / math.sqrt(d // self.n_heads)
        scores = scores.masked_fill(~m[:, None, :], float("-inf"))
        w = torch.softmax(scores, -1)  # (b, h, l)
        return torch.where(m[:, None, :], w, torch.zeros_like(w))  # empty rows: NaN -> 0

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, l, d = x.shape
        m = _valid(x, mask)
        v = x.masked_fill(~m[..., None], 0.0).view(b, l, self.n_heads, d // self.n_heads)
        w = self.weights(x, m)  # (b, h, l)
        return torch.einsum("bhl,blhe->bhe", w, v).reshape(b, d)


class MaskedPool(nn.Module):
    """``(B, L, D)`` tokens + optional mask -> ``(B, D)`` with one of :data:`POOLS`."""

    def __init__(self, pool: str = "mean", d_model: int | None = None, *, cls_index: int = 0,
                 n_heads: int = 1) -> None:
        super().__init__()
        if pool not in POOLS:
            raise UserError(f"unknown pooling {pool!r}; use one of {', '.join(POOLS)} (e.g. --model.pool mean)")
        if pool == "attention" and d_model is None:
            raise ValueError("attention pooling needs d_model")
        self.pool, self.cls_index = pool, cls_index
        self.attn = AttentionPool(d_model, n_heads) if pool == "attention" else None

    def forward(self, x: Tensor, mask: Tensor | None = None, *, cls_index: int | Tensor | None = None) -> Tensor:
        if self.pool == "mean":
            return masked_mean(x, mask)
        if self.pool == "max":
            return masked_max(x, mask)
        if self.pool == "last":
            return pool_last(x, mask)
        if self.pool == "cls":
            return pool_cls(x, self.cls_index if cls_index is None else cls_index)
        return self.attn(x, mask)  # type: ignore[misc]

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}" + (f", cls_index={self.cls_index}" if self.pool == "cls" else "")


def _mlp(d_in: int, d_out: int, hidden: int, dropout: float) -> nn.Module:
    """A linear layer (``hidden=0``) or ``Linear -> GELU -> Dropout -> Linear``."""
    if hidden <= 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class SequenceClassifier(nn.Module):
    """Pool the tokens, then dropout and a linear layer or small MLP: (B, L, D) -> (B, C) logits.

    Submodules: ``pool`` (:class:`MaskedPool`), ``dropout``, ``mlp`` (``nn.Linear`` when
    ``hidden=0``, else ``Sequential(Linear, GELU, Dropout, Linear)``).
    """

    def __init__(self, d_model: int, n_classes: int, *, pool: str = "mean", hidden: int = 0,
                 dropout: float = 0.0, cls_index: int = 0, n_heads: int = 1) -> None:
        super().__init__()
        self.pool = MaskedPool(pool, d_model, cls_index=cls_index, n_heads=n_heads)
        self.dropout = nn.Dropout(dropout)
        self.mlp = _mlp(d_model, n_classes, hidden, dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, **pool_kw) -> Tensor:
        return self.mlp(self.dropout(self.pool(x, mask, **pool_kw)))


class RegressionHead(SequenceClassifier):
    """Pool + linear / MLP -> (B, n_outputs) real values (same structure as :class:`SequenceClassifier`)."""

    def __init__(self, d_model: int, n_outputs: int = 1, **kw) -> None:
        super().__init__(d_model, n_outputs, **kw)


class TokenClassifier(nn.Module):
    """Per-token logits (B, L, D) -> (B, L, C): genome annotation, frame labels, CTC.

    For CTC pass ``blank`` (the blank class id, usually 0); ``n_classes`` counts it. Padded
    positions (``mask`` False) are filled with ``pad_fill`` so nothing downstream depends on
    padded inputs. :meth:`loss` is the masked cross-entropy for frame labels
    (``ignore_index`` labels are skipped too); :meth:`ctc_loss` the CTC loss.
    """

    def __init__(self, d_model: int, n_classes: int, *, hidden: int = 0, dropout: float = 0.0,
                 blank: int | None = None, pad_fill: float = 0.0) -> None:
        super().__init__()
        if blank is not None and not 0 <= blank < n_classes:
            raise ValueError(f"blank={blank} is not a class id in 0..{n_classes - 1}")
        self.n_classes, self.blank, self.pad_fill = n_classes, blank, pad_fill
        self.dropout = nn.Dropout(dropout)
        self.mlp = _mlp(d_model, n_classes, hidden, dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        y = self.mlp(self.dropout(x))  # (b, l, c)
        if mask is None:
            return y
        return y.masked_fill(~_valid(x, mask)[..., None], self.pad_fill)

    @staticmethod
    def loss(logits: Tensor, labels: Tensor, mask: Tensor | None = None, ignore_index: int = -100) -> Tensor:
        """Mean cross-entropy over valid, labelled tokens (0 when there are none)."""
        labels = labels.long()
        if mask is not None:
            labels = labels.masked_fill(~mask.to(torch.bool), ignore_index)
        keep = labels != ignore_index
        if not keep.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits[keep], labels[keep])

    def ctc_loss(self, logits: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """CTC loss of (B, L, C) logits with per-row input ``lengths`` (``blank`` must be set).

        ``targets`` (B, S) padded label ids, ``target_lengths`` (B,). Mean over the batch of
        the per-row loss divided by its target length (PyTorch's ``reduction="mean"``).
        """
        if self.blank is None:
            raise ValueError("ctc_loss needs TokenClassifier(blank=...)")
        logp = torch.log_softmax(logits.float(), -1).transpose(0, 1)  # (l, b, c)
        return F.ctc_loss(logp, targets, lengths, target_lengths, blank=self.blank, zero_infinity=True)


def ctc_greedy_decode(logits: Tensor, lengths: Tensor | None = None, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks; one list per row."""
    best = logits.argmax(-1)  # (b, l)
    out = []
    for i in range(best.shape[0]):
        n = best.shape[1] if lengths is None else int(lengths[i])
        seq, prev = [], None
        for t in best[i, :n].tolist():
            if t != prev and t != blank:
                seq.append(t)
            prev = t
        out.append(seq)
    return out
