"""Non-neural baselines for the genomics tasks, scored on the same splits as the models.

- **Species** (:class:`KmerSpecies`): multinomial logistic regression (scikit-learn) on the
  256 4-mer frequencies of a window plus its GC content, standardised; trained on windows of
  the same length drawn at random from the *training* strains (:func:`train_windows`) and
  scored on ``splits.eval_windows`` of the held-out strains. k-mer profiles are the classic
  alignment-free species signal (Karlin & Burge, 1995).
- **CDS, Prodigal** (:func:`prodigal_genes`): the field's standard bacterial gene finder
  (Hyatt et al., 2010, through ``pyrodigal``, Larralde 2022), in *single* mode with its model
  trained by ``GeneFinder().train`` on the training 70% of the genome (the same bases the
  segmentation model learns from), then run on the test region; its gene calls become
  per-base labels with :func:`genes.genes_to_labels`. ``meta=True`` uses Prodigal's
  pre-trained metagenomic profiles instead (no training).
- **CDS, k-mer** (:class:`KmerCDS`): a per-base classifier (histogram gradient boosting) on
  phase-resolved codon counts in a window around each base: for every base ``i`` and phase
  ``r = (j - i) mod 3``, the counts of the 64 codons starting at ``j`` in ``[i - w, i + w)``
  (192 features, both strands implicitly: a minus-strand codon is the reverse complement
  of a forward trinucleotide in the same phase), evaluated on every third base. Its probabilities can be decoded into genes
  with ``genes.decode_genes`` like a model's.

- **DNA LM, Markov** (:class:`MarkovLM`): an order-``k`` Markov chain (counts of (k+1)-mers
  on the training strains, both strands, additive smoothing): the bits per base a model with
  a fixed ``k``-base context gets on the same target bases, whatever the window length.

Sequences are upper- or lower-case strings; non-ACGT bases are skipped in every count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .genes import Gene
from .splits import MAX_N_FRACTION, SPECIES, TEST_STRAINS

__all__ = ["KmerCDS", "KmerSpecies", "MarkovLM", "kmer_features", "prodigal_genes", "train_windows", "window_seqs"]

_CODE = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate("ACGT"):
    _CODE[ord(_c)] = _CODE[ord(_c.lower())] = _i


def _codes(seq: str) -> np.ndarray:
    """(L,) int64 codes 0..3 for ACGT, -1 for anything else."""
    return _CODE[np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)]


def _kmer_ids(codes: np.ndarray, k: int) -> np.ndarray:
    """(L - k + 1,) id of the k-mer starting at each position, -1 where it holds a non-ACGT base."""
    n = codes.size - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    ids = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for j in range(k):
        c = codes[j : j + n]
        ids = ids * 4 + np.maximum(c, 0)
        bad |= c < 0
    ids[bad] = -1
    return ids


# ----------------------------------------------------------------------------- species
def kmer_features(seqs: Sequence[str], k: int = 4) -> np.ndarray:
    """(N, 4**k + 1) float64: k-mer frequencies (sum 1 over valid k-mers) and GC fraction."""
    out = np.zeros((len(seqs), 4**k + 1))
    for r, s in enumerate(seqs):
        codes = _codes(s)
        ids = _kmer_ids(codes, k)
        ids = ids[ids >= 0]
        if ids.size:
            out[r, :-1] = np.bincount(ids, minlength=4**k) / ids.size
        valid = codes >= 0
        out[r, -1] = float(((codes == 1) | (codes == 2)).sum() / max(int(valid.sum()), 1))
    return out


def train_windows(genomes: dict[str, dict[str, list[str]]], length: int, per_species: int = 512, seed: int = 0
                  ) -> list[tuple[int, str, int, int]]:
    """Random training windows ``(species_idx, strain, chrom_idx, start)`` from the TRAINING strains.

    ``per_species`` windows per species, drawn uniformly over its training chromosomes
    (weighted by length; windows may overlap), those with more than 10% non-ACGT bases
    redrawn. The tuple layout is ``splits.eval_windows``'.
    """
    rng = np.random.default_rng(seed)
    out = []
    for si, sp in enumerate(SPECIES):
        chroms = [(strain, ci, seq) for strain, cs in genomes[sp].items() if strain != TEST_STRAINS[sp]
                  for ci, seq in enumerate(cs) if len(seq) >= length]  # fmt: skip
        if not chroms:
            raise ValueError(f"no training chromosome of {sp} is >= {length} bases")
        w = np.array([len(c[2]) - length + 1 for c in chroms], dtype=np.float64)
        got = 0
        for _ in range(per_species * 20):
            strain, ci, seq = chroms[int(rng.choice(len(chroms), p=w / w.sum()))]
            start = int(rng.integers(0, len(seq) - length + 1))
            win = seq[start : start + length]
            if (length - sum(win.count(b) for b in "ACGT")) <= MAX_N_FRACTION * length:
                out.append((si, strain, ci, start))
                got += 1
                if got == per_species:
                    break
    return out


def window_seqs(genomes: dict[str, dict[str, list[str]]], windows, length: int) -> tuple[list[str], np.ndarray]:
    """The windows' sequences and their species labels (N,)."""
    seqs = [genomes[SPECIES[si]][strain][ci][s : s + length] for si, strain, ci, s in windows]
    return seqs, np.array([w[0] for w in windows], dtype=np.int64)


class KmerSpecies:
    """4-mer + GC logistic regression species classifier (see the module docstring)."""

    def __init__(self, k: int = 4, C: float = 1.0, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.k = k
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))

    def fit(self, seqs: Sequence[str], labels: np.ndarray) -> KmerSpecies:
        self.model.fit(kmer_features(seqs, self.k), np.asarray(labels))
        return self

    def predict_proba(self, seqs: Sequence[str]) -> np.ndarray:
        """(N, n_species) probabilities in the classes' order (``SPECIES`` when all were seen)."""
        return self.model.predict_proba(kmer_features(seqs, self.k))

    def predict(self, seqs: Sequence[str]) -> np.ndarray:
        return self.model.predict(kmer_features(seqs, self.k))


# ----------------------------------------------------------------------------- CDS: Prodigal
def prodigal_genes(test_seq: str, train_seq: str | None = None, *, meta: bool = False,
                   closed: bool = False) -> tuple[list[Gene], list[Gene]]:
    """Prodigal's gene calls on ``test_seq``: ``(complete, partial)`` :class:`Gene` lists.

    ``train_seq`` trains single mode (``GeneFinder().train``, translation table 11); with
    ``meta=True`` it is ignored and the metagenomic profiles are used. ``partial`` holds the
    genes Prodigal lets run off an edge of ``test_seq`` (``closed=False``, its default): they
    belong in per-base labels but cannot match a complete annotated gene.
    """
    import pyrodigal

    if meta:
        finder = pyrodigal.GeneFinder(meta=True, closed=closed)
    else:
        if not train_seq:
            raise ValueError("single-mode Prodigal needs train_seq (or meta=True)")
        finder = pyrodigal.GeneFinder(closed=closed)
        finder.train(train_seq.upper())
    complete, partial = [], []
    for g in finder.find_genes(test_seq.upper()):
        gene = Gene(int(g.begin) - 1, int(g.end), int(g.strand), float(g.score))
        (partial if (g.partial_begin or g.partial_end) else complete).append(gene)
    return complete, partial


# ----------------------------------------------------------------------------- CDS: k-mer per base
def codon_window_features(codes: np.ndarray, positions: np.ndarray, half_window: int) -> np.ndarray:
    """(N, 192) float32: per base ``i`` in ``positions``, counts of codon ``c`` starting at
    ``j in [i - w, i + w)`` with phase ``(j - i) mod 3``, divided by the window's codon count."""
    cod = _kmer_ids(codes, 3)  # (L - 2,)
    cod = np.concatenate([cod, np.full(2, -1)])  # (L,)
    offs = np.arange(-half_window, half_window)  # (2w,)
    phase = np.mod(offs, 3) * 64  # (2w,)
    out = np.zeros((positions.size, 192), dtype=np.float32)
    n = codes.size
    chunk = max(1, (1 << 22) // offs.size)
    for a in range(0, positions.size, chunk):
        pos = positions[a : a + chunk]  # (b,)
        j = pos[:, None] + offs[None, :]  # (b, 2w)
        c = np.where((j >= 0) & (j < n), cod[np.clip(j, 0, n - 1)], -1)
        idx = np.arange(pos.size)[:, None] * 192 + phase[None, :] + c
        counts = np.bincount(idx[c >= 0], minlength=pos.size * 192).reshape(pos.size, 192)
        out[a : a + pos.size] = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return out


class KmerCDS:
    """Per-base 3-class CDS classifier on phase-resolved codon counts (module docstring)."""

    def __init__(self, half_window: int = 96, max_iter: int = 100, stride: int = 3, seed: int = 0) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.half_window, self.stride = half_window, stride
        self.model = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=0.1, random_state=seed)

    def fit(self, seq: str, labels: np.ndarray, n_samples: int = 200_000, seed: int = 0) -> KmerCDS:
        """Train on ``n_samples`` random bases of ``seq`` with their ``labels`` (L,) in {0, 1, 2}."""
        rng = np.random.default_rng(seed)
        pos = np.sort(rng.choice(len(seq), size=min(n_samples, len(seq)), replace=False))
        x = codon_window_features(_codes(seq), pos, self.half_window)
        self.model.fit(x, np.asarray(labels)[pos])
        return self

    def predict_proba(self, seq: str, chunk: int = 100_000) -> np.ndarray:
        """(L, 3) probabilities [non-coding, plus, minus] for every base of ``seq``.

        The classifier runs on every ``stride``-th base (the window moves by ``stride`` of its
        ``2 * half_window`` bases); each base takes the prediction of the run that covers it
        (``i // stride``), which makes prediction ``stride`` times cheaper.
        """
        codes = _codes(seq)
        grid = np.arange(0, codes.size, self.stride) + self.stride // 2
        grid = np.minimum(grid, codes.size - 1)
        sub = np.zeros((grid.size, 3))
        cls = list(self.model.classes_)
        for a in range(0, grid.size, chunk):
            pos = grid[a : a + chunk]
            p = self.model.predict_proba(codon_window_features(codes, pos, self.half_window))
            for k, c in enumerate(cls):
                sub[a : a + pos.size, int(c)] = p[:, k]
        return sub[np.arange(codes.size) // self.stride]


# ----------------------------------------------------------------------------- DNA LM: Markov chain
_RC_CODE = np.array([3, 2, 1, 0], dtype=np.int64)


class MarkovLM:
    """Order-``k`` Markov chain next-base model with additive smoothing ``alpha``."""

    def __init__(self, k: int = 10, alpha: float = 0.5) -> None:
        self.k, self.alpha = k, alpha
        self.counts = np.zeros((4**k, 4), dtype=np.float64)  # (contexts, next base)

    def fit(self, seqs: Sequence[str], both_strands: bool = True) -> MarkovLM:
        flat = np.zeros(4 ** (self.k + 1), dtype=np.float64)
        for s in seqs:
            codes = _codes(s)
            variants = [codes]
            if both_strands:
                rc = np.where(codes >= 0, _RC_CODE[np.maximum(codes, 0)], -1)[::-1]
                variants.append(np.ascontiguousarray(rc))
            for c in variants:
                ids = _kmer_ids(c, self.k + 1)
                flat += np.bincount(ids[ids >= 0], minlength=flat.size)
        self.counts = flat.reshape(4**self.k, 4)
        return self

    def bits(self, seq: str, targets: slice) -> tuple[float, int]:
        """``(total bits, n scored)`` of the bases ``seq[targets]`` given their ``k`` predecessors
        (bases whose context or value holds a non-ACGT base are not scored)."""
        codes = _codes(seq)
        lo, hi = targets.start, targets.stop
        if lo < self.k:
            raise ValueError(f"targets start at {lo} < k = {self.k}: no full context")
        ids = _kmer_ids(codes[lo - self.k : hi], self.k + 1)  # (hi - lo,)
        ok = ids >= 0
        ctx, nxt = ids[ok] // 4, ids[ok] % 4
        c = self.counts[ctx]
        p = (c[np.arange(ctx.size), nxt] + self.alpha) / (c.sum(1) + 4 * self.alpha)
        return float(-np.log2(p).sum()), int(ok.sum())
