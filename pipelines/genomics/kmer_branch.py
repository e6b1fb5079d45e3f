"""A k-mer composition branch for the species head (``--model.kmer_k K``).

Oligonucleotide composition (tetranucleotide frequencies above all) is the classic genomic
signature of a bacterial species: it is what the k-mer logistic-regression baseline of
``benchmarks/genomics.py`` reads, and it is stable across strains, which a small sequence
model trained on a few strains does not learn on its own. The branch counts the strand-symmetric
k-mers of the whole window (a k-mer and its reverse complement share a count, so a window and its
reverse complement get the same features), turns them into log-frequencies with a pseudocount,
normalises them per window (LayerNorm) and adds a linear read-out of them to the backbone head's
logits: ``logits = head(pooled backbone outputs) + W · norm(log f)``. Both parts are trained
together with the one cross-entropy loss.

Counts add up over chunks, so the streamed evaluation of a long window counts each chunk
together with the k - 1 bases before it and stays exact (``KmerCounter``).

Axes: b batch, l length, f = 4**k k-mer codes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longstream.encoders.dna import BASE_IDS
from longstream.pipelines.common import UserError

__all__ = ["KmerComposition", "kmer_counts", "KmerCounter"]


def _base_index(ids: Tensor) -> tuple[Tensor, Tensor]:
    """``(index in 0..3, valid)`` of token ids ``(b, l)``: A C G T -> 0 1 2 3; anything else is invalid."""
    idx = torch.full_like(ids, -1)
    for i, c in enumerate("ACGT"):
        idx = torch.where(ids == BASE_IDS[c], torch.full_like(ids, i), idx)
    return idx.clamp(min=0), idx >= 0


def _rc_codes(k: int) -> Tensor:
    """``(4**k,)``: the code of each k-mer's reverse complement (code = sum base_j * 4**(k-1-j), A=0 .. T=3)."""
    codes = torch.arange(4**k)
    digits = torch.stack([(codes // 4 ** (k - 1 - j)) % 4 for j in range(k)], 1)  # (f, k), first base first
    rc = (3 - digits).flip(1)
    return (rc * (4 ** torch.arange(k - 1, -1, -1))).sum(1)


def kmer_counts(ids: Tensor, k: int, mask: Tensor | None = None) -> Tensor:
    """Strand-symmetric k-mer counts ``(b, 4**k)`` float of token ids ``(b, l)``; k-mers touching an N,
    an ambiguous base or a masked (padding) position are not counted."""
    b, l = ids.shape
    out = torch.zeros(b, 4**k, dtype=torch.float32, device=ids.device)
    if l < k:
        return out
    idx, valid = _base_index(ids)
    if mask is not None:
        valid = valid & mask.bool()
    weights = 4 ** torch.arange(k - 1, -1, -1, device=ids.device)
    codes = (idx.unfold(1, k, 1) * weights).sum(-1)  # (b, l - k + 1)
    ok = valid.unfold(1, k, 1).all(-1).float()  # (b, l - k + 1)
    out.scatter_add_(1, codes, ok)
    return out + out[:, _rc_codes(k).to(ids.device)]


class KmerCounter:
    """Counts of a long window fed chunk by chunk: ``add(chunk)`` for each chunk in order, then ``counts``.
    Each chunk is counted with the k - 1 bases before it, so the total equals ``kmer_counts`` of the whole."""

    def __init__(self, k: int) -> None:
        self.k, self.counts, self._tail = k, None, None

    def add(self, ids: Tensor) -> None:
        x = ids if self._tail is None else torch.cat([self._tail, ids], 1)
        c = kmer_counts(x, self.k)
        self.counts = c if self.counts is None else self.counts + c
        self._tail = x[:, -(self.k - 1):] if self.k > 1 else x[:, :0]


class KmerComposition(nn.Module):
    """``counts (b, 4**k)`` -> logits ``(b, n_classes)``: LayerNorm over the log-frequencies, dropout
    (``model.dropout``, training only), then a linear map.

    With ``orders`` > 1 the branch also reads the (k-1)-mer, (k-2)-mer, ... frequencies, each got
    from the k-mer counts by summing over the last base (a window's last few shorter k-mers are
    not counted: negligible), each with its own LayerNorm, all concatenated before the linear map:
    short windows are better read from the fewer, less noisy short k-mers, long ones from the
    longer k-mers. The counts stay those of order k, so streaming and ``KmerCounter`` are unchanged."""

    def __init__(self, k: int, n_classes: int, dropout: float = 0.0, orders: int = 1) -> None:
        super().__init__()
        if not 1 <= k <= 6:
            raise UserError(f"--model.kmer_k {k}: use 1..6 (4**k features; 4 is the tetranucleotide signature), "
                            "or 0 for no k-mer branch")
        if not 1 <= orders <= k:
            raise UserError(f"--model.kmer_orders {orders}: use 1..{k} (orders k, k-1, ... read from --model.kmer_k {k})")
        self.k, self.orders = k, orders
        self.norm = nn.LayerNorm(4**k)
        self.lower = nn.ModuleList(nn.LayerNorm(4 ** (k - j)) for j in range(1, orders))  # orders k-1, k-2, ...
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(sum(4 ** (k - j) for j in range(orders)), n_classes)

    @staticmethod
    def _logf(counts: Tensor) -> Tensor:
        f = counts.shape[1]
        return torch.log((counts + 0.5) / (counts.sum(1, keepdim=True) + 0.5 * f))  # (b, f)

    def forward(self, counts: Tensor) -> Tensor:
        feats = [self.norm(self._logf(counts))]
        c = counts
        for norm in self.lower:
            c = c.view(c.shape[0], -1, 4).sum(-1)  # (b, 4**(k'-1)): sum over the last base
            feats.append(norm(self._logf(c)))
        return self.proj(self.dropout(torch.cat(feats, 1)))
