"""ORF-aware decoding of per-base coding probabilities into gene calls, and the CDS metrics.

A per-base segmentation model (or a baseline) outputs ``probs (L, 3)``: non-coding, plus-strand
CDS, minus-strand CDS. A gene is more than a run of coding bases: it is an open reading frame
that begins with a start codon (ATG / GTG / TTG, the bacterial translation table 11 starts
that cover >99% of annotated genes) and ends with the first in-frame stop (TAA / TAG / TGA).
:func:`decode_genes` enumerates every such ORF on both strands and scores it against the track,
as gene finders such as Prodigal (Hyatt et al., 2010) score ORFs against their coding model:

- for each stop codon, the candidate starts are the in-frame start codons after the previous
  in-frame stop; the score of ``[a, stop]`` is ``sum(p_strand - threshold)`` over its bases,
  so the chosen start is the one that maximises it (upstream bases that look non-coding cost,
  coding ones gain);
- an ORF is kept if it is at least ``min_length`` bases and its mean coding probability on its
  strand is at least ``threshold``;
- every (start, stop) pair with a positive score minus ``gene_penalty`` is a candidate, and
  the calls are the set of candidates with the largest total score in which neighbours
  overlap by at most ``max_overlap`` bases (weighted interval scheduling, a dynamic programme
  like Prodigal's gene chaining). Bacterial genes overlap by a few bases (``ATGA``
  stop/start overlaps). The per-gene penalty stops the programme from splitting one gene
  into overlapping pieces to count the overlap twice (an overlap gains at most
  ``max_overlap * (1 - threshold)``); choosing the start that maximises the total, rather
  than each ORF's own best start, keeps an operon's genes apart when the track is coding
  across both.

Defaults (``max_overlap`` 30, ``gene_penalty`` 25) were chosen by decoding the TRUE labels of
the M. tuberculosis test region (``tests/test_genes.py``): 93% of its annotated genes are
recovered exactly (start and stop), 98% by stop; penalty 0 gives 81% / 99% with 20% more
calls, and 60 bases of overlap 87%.

ORFs that run off either end of the sequence (no start or no stop inside it) are not called.

Coordinates: 0-based, half-open ``[start, end)`` on the forward strand, the stop codon included
(as in GenBank CDS features), ``strand`` +1 / -1. For a minus-strand gene the stop codon is at
``[start, start + 3)`` and the start codon at ``[end - 3, end)``.

Metrics (the genomics spec, issue 13): gene level, a predicted gene matches a true one exactly
when ``(start, end, strand)`` are equal, and "stop-only" when the stop coordinate and strand are
equal; sensitivity = matched true genes / true genes, precision = matched predictions /
predictions. Per base: binary MCC (CDS vs not), 3-class (strand-aware) MCC and macro-F1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..common.metrics import macro_f1, mcc

__all__ = [
    "Gene",
    "base_metrics",
    "decode_genes",
    "find_orfs",
    "frame_scores_from_probs",
    "collapse_frames",
    "decode_model_track",
    "gene_metrics",
    "genes_to_labels",
    "labels_to_probs",
]

START_CODONS = ("ATG", "GTG", "TTG")
STOP_CODONS = ("TAA", "TAG", "TGA")
_CODE = np.full(256, 4, dtype=np.int64)  # A C G T -> 0..3, anything else -> 4 (breaks codons)
for _i, _c in enumerate("ACGT"):
    _CODE[ord(_c)] = _CODE[ord(_c.lower())] = _i
_COMP = np.array([3, 2, 1, 0, 4], dtype=np.int64)


@dataclass(frozen=True, order=True)
class Gene:
    """A CDS on the forward-strand axis: ``[start, end)`` 0-based, stop codon included."""

    start: int
    end: int
    strand: int  # +1 / -1
    score: float = 0.0

    @property
    def stop(self) -> int:
        """The coordinate that identifies the stop codon: ``end`` (+) or ``start`` (-)."""
        return self.end if self.strand > 0 else self.start

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.start, self.end, self.strand)


def _codes(seq: str | bytes | np.ndarray) -> np.ndarray:
    """Sequence -> int codes 0..3 (ACGT), 4 for anything else; (L,)."""
    if isinstance(seq, str):
        seq = seq.encode("ascii", "replace")
    if isinstance(seq, bytes | bytearray):
        return _CODE[np.frombuffer(seq, dtype=np.uint8)]
    arr = np.asarray(seq)
    if arr.dtype == np.uint8:  # ASCII bytes (token ids or codes must come as a signed integer array)
        return _CODE[arr]
    if arr.dtype.kind == "i" and (arr.size == 0 or (arr.min() >= 0 and arr.max() <= 4)):
        return arr.astype(np.int64, copy=False)  # already codes 0..4
    raise TypeError(f"sequence must be str, bytes or a uint8 array, got {arr.dtype}")


def _codon_ids(codes: np.ndarray) -> np.ndarray:
    """Codon starting at each position as 0..63, -1 where it holds a non-ACGT base; (L,)."""
    n = codes.size
    out = np.full(n, -1, dtype=np.int64)
    if n < 3:
        return out
    a, b, c = codes[:-2], codes[1:-1], codes[2:]
    ok = (a < 4) & (b < 4) & (c < 4)
    out[: n - 2] = np.where(ok, a * 16 + b * 4 + c, -1)
    return out


def _ids(codons: tuple[str, ...]) -> np.ndarray:
    return np.array([_CODE[ord(s[0])] * 16 + _CODE[ord(s[1])] * 4 + _CODE[ord(s[2])] for s in codons])


_START_IDS, _STOP_IDS = _ids(START_CODONS), _ids(STOP_CODONS)


def _orfs_forward(codes: np.ndarray, min_length: int) -> list[tuple[np.ndarray, int]]:
    """Forward-strand ORFs: ``[(candidate_starts, stop_pos)]``; the gene is ``[a, stop_pos + 3)``.

    Candidates are in-frame start codons after the previous in-frame stop (or the sequence
    start), at least ``min_length`` bases before the stop's end. A non-ACGT codon breaks the frame
    like a stop (no ORF spans it).
    """
    cod = _codon_ids(codes)
    is_stop = np.isin(cod, _STOP_IDS)
    is_start = np.isin(cod, _START_IDS)
    breaks = is_stop | (cod < 0)
    out: list[tuple[np.ndarray, int]] = []
    n = codes.size
    for frame in range(3):
        pos = np.arange(frame, n - 2, 3)
        if pos.size == 0:
            continue
        brk = pos[breaks[pos]]
        starts = pos[is_start[pos]]
        prev = frame - 3
        for b in brk:
            if is_stop[b]:
                lo = np.searchsorted(starts, prev + 3)
                hi = np.searchsorted(starts, b + 3 - min_length, side="right")
                if hi > lo:
                    out.append((starts[lo:hi], int(b)))
            prev = int(b)
    return out


def find_orfs(seq: str | bytes | np.ndarray, min_length: int = 90) -> list[Gene]:
    """Every longest ORF (first in-frame start after the previous stop .. stop) on both strands."""
    codes = _codes(seq)
    n = codes.size
    genes = [Gene(int(c[0]), s + 3, +1) for c, s in _orfs_forward(codes, min_length)]
    rc = _COMP[codes[::-1]]
    genes += [Gene(n - (s + 3), n - int(c[0]), -1) for c, s in _orfs_forward(rc, min_length)]
    return sorted(genes)


def decode_genes(
    probs: np.ndarray,
    seq: str | bytes | np.ndarray,
    *,
    threshold: float = 0.5,
    min_length: int = 90,
    max_overlap: int = 30,
    gene_penalty: float = 25.0,
    track_weight: float = 1.0,
    frame_scores: np.ndarray | None = None,
    start_scores: np.ndarray | None = None,
    start_weight: float = 0.0,
) -> list[Gene]:
    """Gene calls from per-base probabilities ``probs (L, 3)`` [non-coding, plus, minus] of ``seq``.

    See the module docstring for the rule. Returns genes sorted by start; ``score`` is the ORF's
    ``track_weight * sum(p_strand - threshold) - gene_penalty``, plus, when given (the
    :class:`.coding_prior.CodingPrior` terms), ``sum(frame_scores[strand, frame])`` over the ORF's
    bases and ``start_weight * start_scores[strand, start]``. Both are on each strand's own 5'->3'
    axis: ``frame_scores (2, 3, L)`` [plus, minus] x frame (frame ``f`` = codon position 0 at
    ``i % 3 == f``), ``start_scores (2, L)``; index 1 is the reverse complement's axis.
    ``max_overlap`` must be below ``min_length`` (else a short ORF could be called inside a longer
    one that shares its stop); a ``ValueError`` says so.
    """
    p = np.asarray(probs, dtype=np.float64)
    codes = _codes(seq)
    n = codes.size
    if p.shape != (n, 3):
        raise ValueError(f"probs must be (L={n}, 3), got {p.shape}")
    if max_overlap >= min_length:
        # a short gene could then sit inside a longer one (same stop, a later start) and be called too
        raise ValueError(f"max_overlap ({max_overlap}) must be below min_length ({min_length})")
    if frame_scores is not None and np.shape(frame_scores) != (2, 3, n):
        raise ValueError(f"frame_scores must be (2, 3, L={n}), got {np.shape(frame_scores)}")
    if start_scores is not None and np.shape(start_scores) != (2, n):
        raise ValueError(f"start_scores must be (2, L={n}), got {np.shape(start_scores)}")
    penalty = float(gene_penalty)
    starts_l, ends_l, strands_l, scores_l = [], [], [], []
    for si, strand in enumerate((+1, -1)):
        track = p[:, 1] if strand > 0 else p[::-1, 2]
        c = codes if strand > 0 else _COMP[codes[::-1]]
        base = track_weight * (track - threshold)
        if frame_scores is None:
            cums = [np.concatenate([[0.0], np.cumsum(base)])] * 3  # (L+1,), the same for every frame
        else:
            cums = [np.concatenate([[0.0], np.cumsum(base + frame_scores[si, f])]) for f in range(3)]
        for starts, stop in _orfs_forward(c, min_length):
            end = stop + 3
            cum = cums[stop % 3]
            score = cum[end] - cum[starts] - penalty  # (n_starts,) one candidate gene per start codon
            if start_scores is not None and start_weight:
                score = score + start_weight * start_scores[si][starts]
            keep = score > 0  # the ORF's total score (track, frame and start terms, minus the penalty) is positive
            if not keep.any():
                continue
            a = starts[keep]
            if strand > 0:
                starts_l.append(a), ends_l.append(np.full(a.size, end))
            else:
                starts_l.append(n - end + 0 * a), ends_l.append(n - a)
            strands_l.append(np.full(a.size, strand)), scores_l.append(score[keep])
    if not starts_l:
        return []
    s, e = np.concatenate(starts_l), np.concatenate(ends_l)
    st, w = np.concatenate(strands_l), np.concatenate(scores_l)
    return _best_set(s, e, st, w, max_overlap)


def frame_scores_from_probs(probs7: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``(2, 3, L)`` per-frame scores for :func:`decode_genes` from 7-class codon-position
    probabilities ``(L, 7)`` [non-coding, plus x codon position 0..2, minus x 0..2]: in frame ``f``
    of a strand (its own 5'->3' axis), base ``i`` scores ``p(strand, codon position (i - f) % 3) -
    threshold``, so an ORF collects the model's belief in exactly its reading frame."""
    p = np.asarray(probs7, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 7:
        raise ValueError(f"probs7 must be (L, 7), got {p.shape}")
    n = p.shape[0]
    out = np.empty((2, 3, n))
    i = np.arange(n)
    for si, cols in ((0, p[:, 1:4]), (1, p[::-1, 4:7])):  # the minus strand on its own axis
        for f in range(3):
            out[si, f] = cols[i, (i - f) % 3] - threshold
    return out


def collapse_frames(probs: np.ndarray) -> np.ndarray:
    """``(L, 7)`` codon-position probabilities -> ``(L, 3)`` [non-coding, plus, minus]; ``(L, 3)`` as is."""
    p = np.asarray(probs)
    if p.shape[1] == 3:
        return p
    return np.stack([p[:, 0], p[:, 1:4].sum(1), p[:, 4:7].sum(1)], 1)


def decode_model_track(probs: np.ndarray, seq: str | bytes | np.ndarray) -> list[Gene]:
    """:func:`decode_genes` of a model's own probabilities: ``(L, 3)`` strand track as it is, or
    ``(L, 7)`` codon-position probabilities frame by frame (:func:`frame_scores_from_probs`)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[1] == 7:
        return decode_genes(collapse_frames(p), seq, track_weight=0.0, frame_scores=frame_scores_from_probs(p))
    return decode_genes(p, seq)


def _best_set(s: np.ndarray, e: np.ndarray, st: np.ndarray, w: np.ndarray, max_overlap: int) -> list[Gene]:
    """Weighted interval scheduling: the set of candidates (N,) with the largest total score in
    which consecutive genes overlap by at most ``max_overlap`` bases (dynamic programming over
    candidates sorted by end, as Prodigal's gene-chaining DP; O(N log N))."""
    order = np.lexsort((s, e))
    s, e, st, w = s[order], e[order], st[order], w[order]
    prev = np.searchsorted(e, s + max_overlap, side="right") - 1  # last j with e_j <= s_i + overlap
    prev = np.minimum(prev, np.arange(s.size) - 1)
    best = np.zeros(s.size + 1)  # best[i + 1] = optimum over the first i + 1 candidates
    take = np.zeros(s.size, dtype=bool)
    for i in range(s.size):
        with_i = w[i] + best[prev[i] + 1]
        take[i] = with_i > best[i]
        best[i + 1] = with_i if take[i] else best[i]
    out: list[Gene] = []
    i = s.size - 1
    while i >= 0:
        if take[i]:
            out.append(Gene(int(s[i]), int(e[i]), int(st[i]), float(w[i])))
            i = prev[i]
        else:
            i -= 1
    return sorted(out)


def genes_to_labels(genes: Any, length: int) -> np.ndarray:
    """Per-base labels (L,) uint8: 0 non-coding, 1 plus CDS, 2 minus CDS.

    A base inside genes of both strands gets the label of the longer gene, the plus strand on
    equal lengths (the rule of ``splits.cds_labels``): genes are painted shortest first.
    """
    lab = np.zeros(length, dtype=np.uint8)
    items = _as_keys(genes)
    for s, e, st in sorted(items, key=lambda t: (t[1] - t[0], t[2] > 0)):
        lab[max(s, 0) : min(e, length)] = 1 if st > 0 else 2
    return lab


def labels_to_probs(labels: np.ndarray) -> np.ndarray:
    """One-hot (L, 3) float probabilities from labels (L,) in {0, 1, 2}."""
    lab = np.asarray(labels, dtype=np.int64)
    return np.eye(3, dtype=np.float64)[lab]


def _key(g: Any) -> tuple[int, int, int]:
    """``(start, end, strand)`` of a :class:`Gene`, a ``Feature``-like object or a tuple."""
    if hasattr(g, "start"):
        return (int(g.start), int(g.end), int(g.strand))
    return (int(g[0]), int(g[1]), int(g[2]))


def _as_keys(genes: Any) -> list[tuple[int, int, int]]:
    return [_key(g) for g in genes]


def gene_metrics(pred: Any, true: Any) -> dict[str, Any]:
    """Gene-level sensitivity / precision, exact (start, end, strand) and stop-only (stop, strand).

    ``pred`` and ``true``: lists of :class:`Gene` or ``(start, end, strand)`` (``Feature``-like
    objects with those attributes also work). A metric with an empty denominator is 0.0.
    """
    p, t = _as_keys(pred), _as_keys(true)

    def stop(k: tuple[int, int, int]) -> tuple[int, int]:
        return (k[1] if k[2] > 0 else k[0], k[2])

    def sens_prec(key) -> tuple[float, float]:
        tk, pk = {key(k) for k in t}, {key(k) for k in p}
        sens = sum(key(k) in pk for k in t) / len(t) if t else 0.0
        prec = sum(key(k) in tk for k in p) / len(p) if p else 0.0
        return float(sens), float(prec)

    se, pe = sens_prec(lambda k: k)
    ss, ps = sens_prec(stop)
    f1 = lambda a, b: 0.0 if a + b == 0 else 2 * a * b / (a + b)  # noqa: E731
    return {"n_true": len(t), "n_pred": len(p),
            "exact_sensitivity": se, "exact_precision": pe, "exact_f1": float(f1(se, pe)),
            "stop_sensitivity": ss, "stop_precision": ps, "stop_f1": float(f1(ss, ps))}  # fmt: skip


def base_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Per-base binary MCC (CDS vs not), 3-class strand-aware MCC and 3-class macro-F1."""
    t = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(y_pred).reshape(-1).astype(np.int64)
    return {"binary_mcc": mcc(t > 0, p > 0), "strand_mcc": mcc(t, p),
            "macro_f1": macro_f1(t, p, labels=(0, 1, 2))}  # fmt: skip
