"""Per-base open-reading-frame features computed from the sequence (a gene-finder prior for ``cds``).

Gene finders (GeneMark, Glimmer, Prodigal; Hyatt et al., 2010) score open reading frames: a
protein-coding gene is a long stretch of codons without an in-frame stop. A per-base model
has to rediscover the genetic code's stops and count codons in 6 frames to see that; these
channels hand it the same prior, computed from the input ids alone (no annotation):

for each strand (plus: stops TAA / TAG / TGA; minus: their reverse complements TTA / CTA / TCA
read on the forward strand) and each of the 3 frames, at every base t (in the codon of that
frame that covers t):

- ``log1p(orf_len) / 8``: the stop-to-stop span (bases) of that frame around t;
- ``log1p(to_stop) / 8``: bases from t to the stop that would end a gene through t on that
  strand (downstream: the next stop to the right on plus, the previous one to the left on minus).

Spans are bounded by the window: an ORF running off the window edge is cut there (the CDS
predictor averages overlapping windows weighted towards their centres, so edges count little).
``N`` never forms a stop. 12 channels, ``(b, l) int64 ids -> (b, l, 12) float``.

Axis legend: b batch, l length, m codons of one frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

N_FEATURES = 12
_SCALE = 8.0  # log1p(3000) ~ 8: a long gene's span maps near 1
# codon code = 16 b0 + 4 b1 + b2 with A0 C1 G2 T3
_PLUS_STOPS = (48, 50, 56)  # TAA TAG TGA
_MINUS_STOPS = (60, 28, 52)  # TTA CTA TCA (reverse complements of TAA TAG TGA)


def _codons(ids: Tensor) -> tuple[Tensor, Tensor]:
    """``ids (b, l)`` -> codon codes ``(b, l - 2)`` at every position and a validity mask (no N / special)."""
    base = ids.long() - 7  # A0 C1 G2 T3, N 4, specials < 0
    ok = (base >= 0) & (base <= 3)
    base = base.clamp(0, 3)
    code = 16 * base[:, :-2] + 4 * base[:, 1:-1] + base[:, 2:]
    valid = ok[:, :-2] & ok[:, 1:-1] & ok[:, 2:]
    return code, valid


def _is_stop(code: Tensor, valid: Tensor, stops: tuple[int, ...]) -> Tensor:
    hit = torch.zeros_like(valid)
    for s in stops:
        hit |= code == s
    return hit & valid


def _frame_spans(stop: Tensor, inclusive_next: bool) -> tuple[Tensor, Tensor]:
    """``stop (b, m)`` bool codon flags of one frame -> (prev, next) stop codon index ``(b, m)`` around
    each codon. ``inclusive_next``: a stop codon counts as its own next (plus strand: the stop
    ends the gene) else as its own previous (minus strand). Missing = -1 / m (the window edge)."""
    b, m = stop.shape
    idx = torch.arange(m, device=stop.device).expand(b, m)
    prev_incl = torch.cummax(torch.where(stop, idx, torch.full_like(idx, -1)), 1).values
    rev = torch.where(stop, idx, torch.full_like(idx, m)).flip(1)
    next_incl = torch.cummin(rev, 1).values.flip(1)
    if inclusive_next:  # prev strictly before
        prev = torch.cat([torch.full_like(idx[:, :1], -1), prev_incl[:, :-1]], 1)
        return prev, next_incl
    nxt = torch.cat([next_incl[:, 1:], torch.full_like(idx[:, :1], m)], 1)  # next strictly after
    return prev_incl, nxt


@torch.no_grad()
def orf_features(ids: Tensor) -> Tensor:
    """``ids (b, l)`` -> ``(b, l, 12)`` float32: [plus frames 0-2, minus frames 0-2] x [span, to-stop]."""
    b, l = ids.shape
    out = torch.zeros(b, l, N_FEATURES, device=ids.device)
    if l < 3:
        return out
    code, valid = _codons(ids)  # (b, l - 2)
    t = torch.arange(l, device=ids.device)
    col = 0
    for stops, plus in ((_PLUS_STOPS, True), (_MINUS_STOPS, False)):
        flag = _is_stop(code, valid, stops)
        for f in range(3):
            sub = flag[:, f::3]  # (b, m)
            m = sub.shape[1]
            if m == 0:
                col += 2
                continue
            prev, nxt = _frame_spans(sub, inclusive_next=plus)
            k = torch.div(t - f, 3, rounding_mode="floor").clamp(0, m - 1)  # (l,) the codon covering t
            pv, nx = prev[:, k], nxt[:, k]  # (b, l)
            span = 3 * (nx - pv).float()
            if plus:
                to_stop = (f + 3 * nx).float() + 2 - t.float()  # through the stop codon's last base
            else:
                to_stop = t.float() - (f + 3 * pv).float()
            out[..., col] = torch.log1p(span) / _SCALE
            out[..., col + 1] = torch.log1p(to_stop.clamp(min=0)) / _SCALE
            col += 2
    return out
