"""The genomics tasks' splits: one definition shared by the model, the baselines and the benchmark.

Issue 13's protocol, fixed here so every number is measured on the same bases:

- **Species** (4 classes, :data:`SPECIES` order): each species' alphabetically last FASTA file
  is its held-out test strain (:data:`TEST_STRAINS`), never seen in training; the other
  strains train. :func:`eval_windows` picks the test windows.
- **DNA language model**: trained on the training strains; bits per base on the four test
  strains at contexts 1K-64K (:data:`LM_CONTEXTS`) on the *same* target bases:
  :func:`lm_eval_points` gives end positions ``p``; for a context ``C`` the model reads
  ``genome[p - C, p)`` and the loss counts only its last :data:`LM_TARGET` (512) bases, so a
  longer context only adds history (HyenaDNA, Nguyen et al. 2023, Fig. 1's protocol).
- **Coding sequences** on M. tuberculosis H37Rv (NC_000962.3): per-base labels from the
  GenBank CDS (:func:`cds_labels`), train on ``[0, 0.7 L)``, test on ``[0.7 L, L)``.

All windows are chosen by deterministic, evenly spaced selection with a seeded phase, so
the list depends only on the genomes, the lengths and ``seed``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from longstream.pipelines.common import UserError

from .formats import Feature, GenBankRecord, read_fasta

__all__ = [
    "SPECIES",
    "TEST_STRAINS",
    "MAX_N_FRACTION",
    "LM_CONTEXTS",
    "LM_TARGET",
    "CDS_TRAIN_FRACTION",
    "bacteria_dir",
    "species_genomes",
    "split_strains",
    "eval_windows",
    "lm_eval_points",
    "cds_labels",
    "cds_frame_labels",
    "cds_split",
    "train_genes",
    "test_genes",
]

SPECIES = ("E.Coli", "H.Pylori", "S.Aureus", "V.Cholerae")
#: The alphabetically last file per species, held out (checked against the files on load).
TEST_STRAINS = {"E.Coli": "MG1655-K12", "H.Pylori": "SJM180", "S.Aureus": "USA300_FPR3757", "V.Cholerae": "O395"}
#: A window with more than this fraction of non-ACGT bases is skipped.
MAX_N_FRACTION = 0.10
LM_CONTEXTS = (1024, 4096, 16384, 65536)
LM_TARGET = 512
CDS_TRAIN_FRACTION = 0.7

_SUFFIXES = (".fasta.gz", ".fa.gz", ".fna.gz", ".fasta", ".fa", ".fna")
_ACGT = np.zeros(256, dtype=bool)
_ACGT[[ord(c) for c in "ACGT"]] = True


def bacteria_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding one sub-folder per species. ``root`` may be that folder, the data
    root (``<root>/genomics/bacteria``) or ``None`` (the registered dataset ``bacteria-genomes``)."""
    if root is None:
        from longstream.pipelines.datasets import dataset_path

        return dataset_path("bacteria-genomes")
    r = Path(root).expanduser()
    for cand in (r, r / "bacteria", r / "genomics" / "bacteria"):
        if all((cand / s).is_dir() for s in SPECIES):
            return cand
    raise UserError(f"{root}: no folders {', '.join(SPECIES)} found in it (nor in bacteria/ or "
                    "genomics/bacteria/ under it); point it at the bacteria-genomes dataset "
                    "(`longstream data path bacteria-genomes`)")


def _strain_files(species_dir: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(species_dir.iterdir(), key=lambda q: q.name):
        suf = next((s for s in _SUFFIXES if p.name.endswith(s)), None)
        if suf and p.is_file():
            out[p.name[: -len(suf)]] = p
    return out


def species_genomes(root: str | os.PathLike | None = None, split: str | None = None
                    ) -> dict[str, dict[str, list[str]]]:
    """``{species: {strain: [chromosome sequences, upper case]}}`` in :data:`SPECIES` order,
    strains sorted by name. ``split="train"`` / ``"test"`` loads only those strains."""
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    base = bacteria_dir(root)
    out: dict[str, dict[str, list[str]]] = {}
    for sp in SPECIES:
        files = _strain_files(base / sp)
        if not files or list(files)[-1] != TEST_STRAINS[sp]:
            raise UserError(f"{base / sp}: expected the strains of the bacteria-genomes dataset with "
                            f"{TEST_STRAINS[sp]} last (found: {', '.join(files) or 'no FASTA files'}); "
                            "verify it with `longstream data verify bacteria-genomes`")
        out[sp] = {}
        for strain, path in files.items():
            is_test = strain == TEST_STRAINS[sp]
            if split is None or (split == "test") == is_test:
                out[sp][strain] = [s.upper() for s in read_fasta(path).values()]
    return out


def split_strains(genomes: dict[str, dict[str, list[str]]]
                  ) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, list[str]]]]:
    """``(train, test)``: the same mapping split by :data:`TEST_STRAINS`."""
    train = {sp: {k: v for k, v in st.items() if k != TEST_STRAINS[sp]} for sp, st in genomes.items()}
    test = {sp: {k: v for k, v in st.items() if k == TEST_STRAINS[sp]} for sp, st in genomes.items()}
    return train, test


def _not_acgt_cumsum(seq: str) -> np.ndarray:
    """(l + 1,) int64: number of non-ACGT bases in ``seq[:i]``."""
    bad = ~_ACGT[np.frombuffer(seq.upper().encode("ascii"), dtype=np.uint8)]
    return np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])


def _evenly(cands: list, k: int) -> list:
    if len(cands) <= k:
        return list(cands)
    return [cands[i] for i in np.linspace(0, len(cands) - 1, k).round().astype(int)]


def _test_chroms(genomes: dict[str, dict[str, list[str]]], sp: str) -> list[str]:
    strain = TEST_STRAINS[sp]
    if sp not in genomes or strain not in genomes[sp]:
        raise ValueError(f"genomes lacks the test strain {sp}/{strain}; load them with species_genomes()")
    return genomes[sp][strain]


def eval_windows(genomes: dict[str, dict[str, list[str]]], length: int, per_species: int = 64, seed: int = 0
                 ) -> list[tuple[int, str, int, int]]:
    """Test windows ``(species_idx, strain, chrom_idx, start)`` of ``length`` bases.

    Per test strain, each chromosome is tiled by non-overlapping windows (a seeded random
    phase in the slack at the end); windows with more than 10% non-ACGT bases are dropped and
    ``per_species`` are taken evenly spaced along the genome (all of them when fewer fit, e.g.
    25 windows of 64K in H. pylori's 1.6 Mbp). The same list feeds the model and the baselines.
    """
    if length <= 0 or per_species <= 0:
        raise ValueError("length and per_species must be positive")
    rng = np.random.default_rng(seed)
    out = []
    for si, sp in enumerate(SPECIES):
        cands = []
        for ci, chrom in enumerate(_test_chroms(genomes, sp)):
            n = len(chrom) // length
            if n == 0:
                continue
            offset = int(rng.integers(0, len(chrom) - n * length + 1))
            bad = _not_acgt_cumsum(chrom)
            starts = offset + length * np.arange(n)
            keep = (bad[starts + length] - bad[starts]) <= MAX_N_FRACTION * length
            cands += [(ci, int(s)) for s in starts[keep]]
        out += [(si, TEST_STRAINS[sp], ci, s) for ci, s in _evenly(cands, per_species)]
    return out


def lm_eval_points(genomes: dict[str, dict[str, list[str]]], n: int = 16, seed: int = 0,
                   contexts: tuple[int, ...] = LM_CONTEXTS, target: int = LM_TARGET
                   ) -> list[tuple[int, str, int, int]]:
    """End positions ``(species_idx, strain, chrom_idx, p)``, ``n`` per test strain.

    For every context ``C`` in ``contexts`` the window is ``chrom[p - C, p)`` and only its last
    ``target`` bases are scored, so all contexts score the same bases: ``p >= max(contexts)``,
    the targets ``[p - target, p)`` do not overlap, hold only A/C/G/T, and the longest window
    has at most 10% non-ACGT bases. Points are evenly spaced with a seeded phase.
    """
    cmax = max(contexts)
    if target > min(contexts):
        raise ValueError(f"target {target} is longer than the shortest context {min(contexts)}")
    rng = np.random.default_rng(seed)
    out = []
    for si, sp in enumerate(SPECIES):
        cands = []
        for ci, chrom in enumerate(_test_chroms(genomes, sp)):
            m = (len(chrom) - cmax) // target  # target blocks that fit after the first cmax bases
            if m <= 0:
                continue
            offset = int(rng.integers(0, len(chrom) - cmax - m * target + 1))
            ends = cmax + offset + target * (1 + np.arange(m))
            bad = _not_acgt_cumsum(chrom)
            keep = (bad[ends] == bad[ends - target]) & (bad[ends] - bad[ends - cmax] <= MAX_N_FRACTION * cmax)
            cands += [(ci, int(p)) for p in ends[keep]]
        out += [(si, TEST_STRAINS[sp], ci, p) for ci, p in _evenly(cands, n)]
    return out


# ---------------------------------------------------------------- coding sequences (M. tuberculosis)


def cds_labels(record: GenBankRecord) -> np.ndarray:
    """Per-base labels (L,) uint8: 0 non-coding, 1 plus-strand CDS, 2 minus-strand CDS.

    A base inside CDS on both strands gets the label of the **longer** gene (on equal
    lengths, the plus strand): genes are painted from shortest to longest, so the longest
    gene covering a base paints it last. Every part of a joined CDS is painted.
    """
    labels = np.zeros(len(record.sequence), dtype=np.uint8)
    for g in sorted(record.cds, key=lambda f: (f.length, f.strand == 1, f.start)):
        for s, e in g.parts or ((g.start, g.end),):
            labels[s:e] = 1 if g.strand == 1 else 2
    return labels


def cds_frame_labels(record: GenBankRecord) -> np.ndarray:
    """Per-base labels (L,) uint8 with the codon position: 0 non-coding, ``1 + c`` a plus-strand CDS
    base at codon position c (0, 1, 2 from the gene's 5' end), ``4 + c`` a minus-strand one.

    The same painting rule as :func:`cds_labels` (the longest gene wins), so collapsing the
    codon positions (1..3 -> 1, 4..6 -> 2) gives exactly :func:`cds_labels`. A joined CDS counts
    codon positions along its spliced sequence.
    """
    labels = np.zeros(len(record.sequence), dtype=np.uint8)
    for g in sorted(record.cds, key=lambda f: (f.length, f.strand == 1, f.start)):
        parts = g.parts or ((g.start, g.end),)  # the parser's order is the gene's 5' -> 3' order
        done = 0
        for s, e in parts:
            i = np.arange(s, e)
            off = done + (i - s) if g.strand == 1 else done + (e - 1 - i)  # bases from the gene's 5' end
            labels[s:e] = (1 if g.strand == 1 else 4) + off % 3
            done += e - s
    return labels


def cds_split(record: GenBankRecord | int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((0, s), (s, L))`` with ``s = int(CDS_TRAIN_FRACTION * L)``: train and test regions."""
    L = record if isinstance(record, int) else len(record.sequence)
    s = int(CDS_TRAIN_FRACTION * L)
    return (0, s), (s, L)


def _inside(g: Feature, lo: int, hi: int) -> bool:
    return all(lo <= s and e <= hi for s, e in (g.parts or ((g.start, g.end),)))


def train_genes(record: GenBankRecord) -> list[Feature]:
    """CDS lying fully inside the training region ``[0, 0.7 L)``."""
    (lo, hi), _ = cds_split(record)
    return [g for g in record.cds if _inside(g, lo, hi)]


def test_genes(record: GenBankRecord) -> list[Feature]:
    """CDS lying fully inside the test region ``[0.7 L, L)`` (the gene-level metrics' truth)."""
    _, (lo, hi) = cds_split(record)
    return [g for g in record.cds if _inside(g, lo, hi)]


test_genes.__test__ = False  # not a pytest test, even when imported into a test module
