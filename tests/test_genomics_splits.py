"""pipelines/genomics/splits: held-out strains, evaluation windows, LM points, CDS labels (real data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from longstream.pipelines.common import UserError
from longstream.pipelines.genomics import splits as S


@pytest.fixture(scope="module")
def test_genomes():
    return S.species_genomes(os.environ["LONGSTREAM_DATA"], split="test")


@pytest.fixture(scope="module")
def mtb():
    from longstream.pipelines.genomics.formats import read_genbank

    return read_genbank(Path(os.environ["LONGSTREAM_DATA"]) / "genomics" / "mtb" / "NC_000962.3.gb")


def test_test_strains_are_the_alphabetically_last_files(data_root):
    base = S.bacteria_dir(data_root)
    assert base == S.bacteria_dir(base) == S.bacteria_dir(base.parent) == S.bacteria_dir(None)
    for sp in S.SPECIES:
        names = sorted(p.name.removesuffix(".fasta.gz") for p in (base / sp).glob("*.fasta.gz"))
        assert names[-1] == S.TEST_STRAINS[sp] and len(names) >= 2
    with pytest.raises(UserError, match="no folders E.Coli"):
        S.bacteria_dir(data_root / "timeseries")


def test_species_genomes_test_split(test_genomes):
    assert list(test_genomes) == list(S.SPECIES)
    assert {sp: list(st) for sp, st in test_genomes.items()} == {sp: [S.TEST_STRAINS[sp]] for sp in S.SPECIES}
    lengths = {sp: [len(c) for c in st[S.TEST_STRAINS[sp]]] for sp, st in test_genomes.items()}
    assert lengths == {"E.Coli": [4_639_675], "H.Pylori": [1_658_051], "S.Aureus": [2_872_769],
                       "V.Cholerae": [3_024_078, 1_111_222]}
    assert test_genomes["E.Coli"]["MG1655-K12"][0].isupper()
    train, test = S.split_strains(test_genomes)
    assert all(not st for st in train.values()) and test == test_genomes


@pytest.mark.parametrize("length", [1024, 65536])
def test_eval_windows(test_genomes, length):
    w = S.eval_windows(test_genomes, length)
    assert w == S.eval_windows(test_genomes, length) and w != S.eval_windows(test_genomes, length, seed=1)
    per = np.bincount([x[0] for x in w], minlength=4)
    if length == 1024:
        assert per.tolist() == [64] * 4
    else:  # fewer fit: H. pylori's 1.66 Mbp holds 25 windows of 64K, S. aureus 43, V. cholerae 46 + 16
        assert per.tolist() == [64, 25, 43, 62]
    for si, strain, ci, start in w:
        sp = S.SPECIES[si]
        assert strain == S.TEST_STRAINS[sp]
        chrom = test_genomes[sp][strain][ci]
        win = chrom[start:start + length]
        assert len(win) == length and sum(win.count(b) for b in "ACGT") >= 0.9 * length
    for si in range(4):  # non-overlapping and spread along the genome
        mine = sorted((ci, s) for x, _, ci, s in w if x == si)
        assert all(a[0] != b[0] or b[1] - a[1] >= length for a, b in zip(mine, mine[1:]))
    assert {ci for si, _, ci, _ in w if si == 3} == {0, 1}


def test_lm_eval_points_share_targets_across_contexts(test_genomes):
    pts = S.lm_eval_points(test_genomes, n=16)
    assert pts == S.lm_eval_points(test_genomes, n=16) and len(pts) == 64
    assert np.bincount([p[0] for p in pts]).tolist() == [16] * 4
    for si, strain, ci, p in pts:
        chrom = test_genomes[S.SPECIES[si]][strain][ci]
        assert max(S.LM_CONTEXTS) <= p <= len(chrom)
        assert set(chrom[p - S.LM_TARGET:p]) <= set("ACGT")
    ends = sorted((si, ci, p) for si, _, ci, p in pts)
    assert all(a[:2] != b[:2] or b[2] - a[2] >= S.LM_TARGET for a, b in zip(ends, ends[1:]))
    with pytest.raises(ValueError, match="longer than the shortest context"):
        S.lm_eval_points(test_genomes, contexts=(256, 1024))


def test_cds_labels_and_split(mtb):
    lab = S.cds_labels(mtb)
    assert lab.dtype == np.uint8 and lab.shape == (4_411_532,)
    counts = np.bincount(lab, minlength=3)
    assert counts.sum() == len(mtb) and 0.85 < (counts[1] + counts[2]) / len(mtb) < 0.95  # H37Rv is ~90% coding
    g = mtb.cds[0]  # dnaA, plus strand
    assert (lab[g.start:g.end] == 1).all()
    minus = next(c for c in mtb.cds if c.strand == -1)
    assert (lab[minus.start:minus.end] != 1).any()
    # a base in a plus and a minus CDS takes the longer gene's label
    plus_cov = np.zeros(len(mtb), bool)
    minus_cov = np.zeros(len(mtb), bool)
    for c in mtb.cds:
        (plus_cov if c.strand == 1 else minus_cov)[c.start:c.end] = True
    assert (lab[plus_cov & ~minus_cov] == 1).all() and (lab[minus_cov & ~plus_cov] == 2).all()
    assert (lab[~plus_cov & ~minus_cov] == 0).all()
    both = np.flatnonzero(plus_cov & minus_cov)
    assert both.size > 0
    b = int(both[0])
    longest = max((c for c in mtb.cds if c.start <= b < c.end), key=lambda c: c.length)
    assert lab[b] == (1 if longest.strand == 1 else 2)
    (a, s), (s2, e) = S.cds_split(mtb)
    assert (a, s2, e) == (0, s, len(mtb)) and s == int(0.7 * len(mtb)) == 3_088_072
    test, train = S.test_genes(mtb), S.train_genes(mtb)
    assert all(s <= c.start and c.end <= e for c in test) and all(c.end <= s for c in train)
    assert len(test) + len(train) < len(mtb.cds) <= len(test) + len(train) + 5  # a few straddle the split
    assert len(test) == 1136
