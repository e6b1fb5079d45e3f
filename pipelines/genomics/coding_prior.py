"""A supervised gene-finder prior for ORF decoding: a 3-periodic Markov coding model and a
start-site model, both fitted on the annotated training region.

Gene finders score an open reading frame with a frame-aware model of coding sequence
(GeneMark: Borodovsky & McIninch, 1993; Prodigal: Hyatt et al., 2010) and choose its start
with a model of the bases around start codons. :class:`CodingPrior` is that pair, trained with
supervision from the annotation of the training region (Prodigal trains itself, unsupervised,
on the genome it is given):

- **coding model**: an order-``k`` Markov chain whose transition table depends on the codon
  position (0, 1, 2) of the predicted base, counted over the training genes on their own strand;
  the background is an order-``k`` chain over the training region's non-coding bases (both
  strands). :meth:`CodingPrior.frame_tracks` gives, for each of the 3 frames of a sequence
  read 5'->3', the per-base log-likelihood ratio (nats) coding-in-this-frame vs background;
  an ORF's coding score is the sum of its frame's track over its bases.
- **start model**: logistic regression (scikit-learn, its weights kept as arrays) on the one-hot bases from
  ``start_upstream`` bases before a start codon to ``start_downstream`` after it (the codon
  itself included), fitted on every in-frame start codon of each training gene's ORF (the
  annotated start positive, the others negative); :meth:`CodingPrior.start_scores` is the
  log-odds minus the training prior, so an average candidate scores 0.

:meth:`CodingPrior.decode` passes both to :func:`.genes.decode_genes`: an ORF ``[a, stop]``
scores ``sum(coding LLR + coding_bias over [a, stop]) + start_weight * start(a) - gene_penalty``
(plus the optional model terms, see :meth:`CodingPrior.decode`). Defaults (order 5, start
weight 2, bias 0.07 nats per base, penalty 20, overlap 60, model weight 0.25) were chosen on a
validation split: prior (and model) fitted on ``[0, 0.55 L)`` of M. tuberculosis, decoded on
``[0.55 L, 0.7 L)``, never on the test region (README, Results).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import genes as G

__all__ = ["CodingPrior"]


def _kmer_ids(codes: np.ndarray, k: int) -> np.ndarray:
    """Id of the ``k + 1`` bases ending at each position (base 4), -1 where one is not ACGT or i < k."""
    n = codes.size
    out = np.full(n, -1, dtype=np.int64)
    if n <= k:
        return out
    ok = np.ones(n - k, dtype=bool)
    v = np.zeros(n - k, dtype=np.int64)
    for j in range(k + 1):
        seg = codes[j : n - k + j]
        ok &= seg < 4
        v = v * 4 + np.minimum(seg, 3)
    out[k:] = np.where(ok, v, -1)
    return out


def _log_cond(counts: np.ndarray, pseudo: float) -> np.ndarray:
    """``log P(base | context)`` from counts ``(..., 4**(k+1))`` (last base fastest), additive smoothing."""
    c = counts.reshape(counts.shape[:-1] + (-1, 4)) + pseudo
    return np.log(c / c.sum(-1, keepdims=True)).reshape(counts.shape)


def _one_hot_around(codes: np.ndarray, pos: np.ndarray, up: int, down: int) -> np.ndarray:
    """One-hot ``(n, (up + 3 + down) * 4)`` of the bases ``pos - up .. pos + 3 + down``; N / outside -> 0."""
    offs = np.arange(-up, 3 + down)
    idx = pos[:, None] + offs[None, :]
    inside = (idx >= 0) & (idx < codes.size)
    b = np.where(inside, codes[np.clip(idx, 0, max(codes.size - 1, 0))], 4)
    oh = np.zeros((pos.size, offs.size, 4), dtype=np.float32)
    r, k = np.nonzero(b < 4)
    oh[r, k, b[r, k]] = 1.0
    return oh.reshape(pos.size, -1)


def _strand_view(codes: np.ndarray, strand: int) -> np.ndarray:
    return codes if strand > 0 else G._COMP[codes[::-1]]


class CodingPrior:
    """Frame-aware coding model + start-site model (module docstring); ``fit`` then ``decode``."""

    def __init__(self, order: int = 5, pseudo: float = 0.5, start_upstream: int = 20, start_downstream: int = 9,
                 start_C: float = 0.1, seed: int = 0) -> None:
        if order < 0 or order > 8:
            raise ValueError(f"order must be in 0..8, got {order}")
        self.order, self.pseudo = int(order), float(pseudo)
        self.up, self.down, self.C, self.seed = int(start_upstream), int(start_downstream), float(start_C), seed
        self.llr: np.ndarray | None = None  # (3, 4**(order+1)) coding-in-phase vs background, nats
        self.start_coef: np.ndarray | None = None  # ((up + 3 + down) * 4,) logistic-regression weights
        self.start_intercept = 0.0
        self.start_prior = 0.0
        self.n_genes = 0

    @classmethod
    def from_features(cls, feats: Any) -> CodingPrior:
        """The prior held by a model's :class:`.prior_features.PriorFeatures` buffers (a checkpoint
        trained with ``--model.prior_features`` carries it, so it decodes any sequence)."""
        prior = cls(order=feats.order, start_upstream=feats.up, start_downstream=feats.down)
        prior.llr = feats.llr.detach().cpu().double().numpy().copy()
        prior.start_coef = feats.start_w.detach().cpu().double().numpy().T.reshape(-1).copy()
        prior.start_intercept, prior.start_prior = float(feats.start_b), 0.0
        return prior

    @classmethod
    def fit_region(cls, record: Any, split: int) -> CodingPrior:
        """Fitted on the training region ``record.sequence[:split]`` and the single-part CDS of
        ``record.cds`` inside it (the rule every caller uses: training, evaluation, benchmark)."""
        genes = [g for g in record.cds if g.start >= 0 and g.end <= split and len(g.parts or ((g.start, g.end),)) == 1]
        return cls().fit(record.sequence[:split].upper(), genes)

    # ------------------------------------------------------------------ fit
    def fit(self, seq: str | bytes | np.ndarray, genes: Sequence[Any]) -> CodingPrior:
        """Fit on ``seq`` (the training region) and its CDS ``genes`` (``(start, end, strand)`` in
        ``seq`` coordinates, stop codon included, as :class:`.genes.Gene`); bases outside every
        gene are the background. Pseudogenes (a ``pseudo`` attribute) and lengths that are not a
        whole number of codons are skipped."""
        codes = G._codes(seq)
        n, k = codes.size, self.order
        keys = [G._key(g) for g in genes if not getattr(g, "pseudo", False)]
        # whole codons only: a pseudogene or a length off the codon grid would corrupt the phase counts
        keys = [t for t in keys if 0 <= t[0] and t[1] <= n and t[1] - t[0] >= 6 and (t[1] - t[0]) % 3 == 0]
        if not keys:
            raise ValueError("CodingPrior.fit: no genes inside the sequence")
        cod = np.zeros((3, 4 ** (k + 1)))
        cover = np.zeros(n, dtype=bool)
        views = {s: (_strand_view(codes, s), _kmer_ids(_strand_view(codes, s), k)) for s in (1, -1)}
        for s, e, st in keys:
            cover[s:e] = True
            a, b = (s, e) if st > 0 else (n - e, n - s)  # the gene on its own strand's axis
            h = views[st][1][a + k : b]
            ph = np.arange(k, b - a) % 3
            m = h >= 0
            np.add.at(cod, (ph[m], h[m]), 1.0)
        bg = np.zeros(4 ** (k + 1))
        idx = np.nonzero(~cover)[0]
        for st, rev in ((1, idx), (-1, n - 1 - idx)):
            h = views[st][1][rev]
            np.add.at(bg, h[h >= 0], 1.0)
        self.llr = _log_cond(cod, self.pseudo) - _log_cond(bg, self.pseudo)[None]
        self._fit_starts(views, keys, n)
        self.n_genes = len(keys)
        return self

    def _fit_starts(self, views: dict, keys: list[tuple[int, int, int]], n: int) -> None:
        from sklearn.linear_model import LogisticRegression

        X, y = [], []
        for st in (1, -1):
            c = views[st][0]
            truth = {}
            for s, e, g_st in keys:
                if g_st == st:
                    a, b = (s, e) if st > 0 else (n - e, n - s)
                    truth[b - 3] = a  # stop codon position -> annotated start, on this strand's axis
            for starts, stop in G._orfs_forward(c, 90):
                a = truth.get(int(stop))
                if a is not None and np.any(starts == a):
                    X.append(_one_hot_around(c, starts, self.up, self.down))
                    y.append(starts == a)
        if not X or not np.concatenate(y).any():
            raise ValueError("CodingPrior.fit: no annotated start codon found in the genes' ORFs")
        Xa, ya = np.concatenate(X), np.concatenate(y)
        lr = LogisticRegression(C=self.C, max_iter=1000, random_state=self.seed).fit(Xa, ya)
        self.start_coef = lr.coef_.ravel().astype(np.float64)
        self.start_intercept = float(lr.intercept_[0])
        p = float(ya.mean())
        self.start_prior = float(np.log(p / (1 - p))) if 0 < p < 1 else 0.0

    # ------------------------------------------------------------------ score
    def _check(self) -> None:
        if self.llr is None or self.start_coef is None:
            raise RuntimeError("CodingPrior: call fit() first")

    def frame_tracks(self, codes: np.ndarray) -> np.ndarray:
        """``(3, L)`` per-base coding LLR of ``codes`` (read 5'->3') for frames 0, 1, 2: frame ``f``
        puts codon position 0 at the bases ``i`` with ``i % 3 == f``."""
        self._check()
        h = _kmer_ids(codes, self.order)
        n = codes.size
        out = np.zeros((3, n))
        valid = h >= 0
        hv = np.maximum(h, 0)
        for f in range(3):
            ph = (np.arange(n) - f) % 3
            out[f] = np.where(valid, self.llr[ph, hv], 0.0)
        return out

    def start_scores(self, codes: np.ndarray) -> np.ndarray:
        """``(L,)`` start-site log-odds at every start codon of ``codes`` (read 5'->3'), 0 elsewhere."""
        self._check()
        pos = np.nonzero(np.isin(G._codon_ids(codes), G._START_IDS))[0]
        out = np.zeros(codes.size)
        if pos.size:
            x = _one_hot_around(codes, pos, self.up, self.down).astype(np.float64)
            out[pos] = x @ self.start_coef + self.start_intercept - self.start_prior
        return out

    def decode(self, seq: str | bytes | np.ndarray, probs: np.ndarray | None = None, *, track_weight: float = 0.0,
               start_weight: float = 2.0, gene_penalty: float = 20.0, coding_bias: float = 0.07,
               max_overlap: int = 60, min_length: int = 90, model_frames: np.ndarray | None = None,
               model_weight: float = 0.25) -> list[G.Gene]:
        """Gene calls on ``seq`` from the prior, plus optionally a per-base model: its strand track
        ``probs (L, 3)`` as ``track_weight * (p_strand - 0.5)``, and/or its per-frame scores
        ``model_frames (2, 3, L)`` (:func:`.genes.frame_scores_from_probs`) times ``model_weight``;
        see :func:`.genes.decode_genes`. ``coding_bias`` (nats per base) is added to every frame: it
        favours the longer of two starts and, with ``gene_penalty``, sets how long and how coding-like
        an ORF must be to be called."""
        codes = G._codes(seq)
        frames = np.stack([self.frame_tracks(_strand_view(codes, s)) for s in (1, -1)]) + float(coding_bias)
        if model_frames is not None:
            frames = frames + model_weight * np.asarray(model_frames, dtype=np.float64)
        starts = np.stack([self.start_scores(_strand_view(codes, s)) for s in (1, -1)])
        if probs is None:
            probs, track_weight = np.zeros((codes.size, 3)), 0.0
        return G.decode_genes(probs, codes, track_weight=track_weight, frame_scores=frames,
                              start_scores=starts, start_weight=start_weight, gene_penalty=gene_penalty,
                              max_overlap=max_overlap, min_length=min_length)
