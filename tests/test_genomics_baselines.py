"""Genomics baselines (pipelines/genomics/baselines.py): k-mer species LR, Prodigal, k-mer CDS, Markov LM."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from longstream.pipelines.genomics import baselines as B
from longstream.pipelines.genomics import genes as G
from longstream.pipelines.genomics.splits import SPECIES, TEST_STRAINS

_COMP = str.maketrans("ACGT", "TGCA")


def _rand(rng: np.random.Generator, n: int, p=(0.25, 0.25, 0.25, 0.25)) -> str:
    return "".join(rng.choice(list("ACGT"), n, p=list(p)))


def test_kmer_features_hand_example():
    f = B.kmer_features(["AAAAC", "GGNCC"], k=4)
    assert f.shape == (2, 257)
    # AAAA (id 0) and AAAC (id 1), each 1/2; GC of AAAAC = 1/5
    assert f[0, 0] == pytest.approx(0.5) and f[0, 1] == pytest.approx(0.5) and f[0, -1] == pytest.approx(0.2)
    # no valid 4-mer across the N; GC over ACGT bases only: 4/4
    assert f[1, :-1].sum() == 0 and f[1, -1] == pytest.approx(1.0)


def _fake_genomes(rng: np.random.Generator, n: int = 6000) -> dict:
    """Four 'species' with different base compositions, three strains each (the last one held out)."""
    comps = [(0.4, 0.1, 0.1, 0.4), (0.1, 0.4, 0.4, 0.1), (0.25, 0.25, 0.25, 0.25), (0.4, 0.4, 0.1, 0.1)]
    out = {}
    for sp, p in zip(SPECIES, comps):
        out[sp] = {f"s{i}": [_rand(rng, n, p)] for i in range(2)}
        out[sp][TEST_STRAINS[sp]] = [_rand(rng, n, p)]
    return out


def test_train_windows_use_only_training_strains_and_skip_n():
    rng = np.random.default_rng(0)
    g = _fake_genomes(rng)
    sp0 = SPECIES[0]
    g[sp0]["s0"] = ["N" * 6000]  # all-N chromosome: never drawn
    w = B.train_windows(g, 200, per_species=20, seed=1)
    assert len(w) == 80
    assert all(strain != TEST_STRAINS[SPECIES[si]] for si, strain, _, _ in w)
    assert not any(si == 0 and strain == "s0" for si, strain, _, _ in w)
    seqs, y = B.window_seqs(g, w, 200)
    assert {len(s) for s in seqs} == {200} and np.bincount(y).tolist() == [20] * 4
    assert B.train_windows(g, 200, per_species=20, seed=1) == w  # seeded


def test_kmer_species_separates_compositions():
    rng = np.random.default_rng(0)
    g = _fake_genomes(rng)
    xs, ys = B.window_seqs(g, B.train_windows(g, 256, per_species=25), 256)
    clf = B.KmerSpecies(C=0.05).fit(xs, ys)
    test = [(si, TEST_STRAINS[sp], 0, s) for si, sp in enumerate(SPECIES) for s in range(0, 5000, 500)]
    es, ey = B.window_seqs(g, test, 256)
    assert (clf.predict(es) == ey).mean() >= 0.95
    assert clf.predict_proba(es).shape == (len(test), 4)


_SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")]


def _coding_genome(rng: np.random.Generator, n_genes: int = 12):
    """Genes with a strong codon bias (a few codons) on both strands between random spacers."""
    biased = _SENSE[:8]
    seq, labels = "", []
    for i in range(n_genes):
        spacer = _rand(rng, 150)
        gene = "ATG" + "".join(rng.choice(biased, 100)) + "TAA"
        strand = 1 if i % 2 == 0 else -1
        if strand < 0:
            gene = gene.translate(_COMP)[::-1]
        labels += [0] * len(spacer) + [1 if strand > 0 else 2] * len(gene)
        seq += spacer + gene
    return seq, np.array(labels, dtype=np.uint8)


def test_kmer_cds_learns_strand_of_biased_codons():
    rng = np.random.default_rng(0)
    tr_seq, tr_lab = _coding_genome(rng)
    te_seq, te_lab = _coding_genome(rng)
    m = B.KmerCDS(half_window=30, max_iter=20).fit(tr_seq, tr_lab, n_samples=2000)
    p = m.predict_proba(te_seq, chunk=1000)
    assert p.shape == (len(te_seq), 3) and np.allclose(p.sum(1), 1)
    assert G.base_metrics(te_lab, p.argmax(1))["strand_mcc"] > 0.6


def test_codon_window_features_phase():
    codes = B._codes("ATGATGATG")
    f = B.codon_window_features(codes, np.array([0]), half_window=6)
    atg = 0 * 16 + 3 * 4 + 2
    tga = 3 * 16 + 2 * 4 + 0
    # window [-6, 6): codons start at 0..5 (ATG TGA GAT ATG TGA GAT); ATG at phase 0, TGA at 1
    assert f[0, atg] == pytest.approx(2 / 6) and f[0, 64 + tga] == pytest.approx(2 / 6)
    assert f[0, 64 + atg] == 0.0 and f[0, tga] == 0.0


def test_markov_lm_bits():
    rng = np.random.default_rng(0)
    periodic = "ACGTTGCA" * 500
    lm = B.MarkovLM(k=4).fit([periodic], both_strands=False)
    bits, n = lm.bits(periodic, slice(100, 600))
    assert n == 500 and bits / n < 0.05
    rnd = _rand(rng, 20000)
    lm2 = B.MarkovLM(k=2).fit([rnd])
    b2, n2 = lm2.bits(_rand(rng, 5000), slice(10, 5000))
    assert 1.95 < b2 / n2 < 2.05
    with pytest.raises(ValueError, match="no full context"):
        lm.bits(periodic, slice(2, 10))


def _lambda() -> Path:
    return Path(os.environ.get("LONGSTREAM_DATA", "../shared/data")) / "genomics/lambda_virus.fa.gz"


def test_prodigal_on_phage_lambda():
    pytest.importorskip("pyrodigal")
    if not _lambda().exists():
        pytest.skip(f"{_lambda()} not present")
    with gzip.open(_lambda(), "rt") as fh:
        seq = "".join(line.strip() for line in fh if not line.startswith(">")).upper()
    comp, part = B.prodigal_genes(seq, meta=True)
    assert len(comp) >= 50  # lambda has ~70 annotated genes
    rc = lambda s: s.translate(_COMP)[::-1]  # noqa: E731
    for g in comp:
        stop = seq[g.end - 3 : g.end] if g.strand > 0 else rc(seq[g.start : g.start + 3])
        assert stop in G.STOP_CODONS and (g.end - g.start) % 3 == 0
    with pytest.raises(ValueError, match="train_seq"):
        B.prodigal_genes(seq)
