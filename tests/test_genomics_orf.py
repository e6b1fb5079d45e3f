"""ORF feature channels and the training augmentations of the genomics pipeline (gen-train)."""

from __future__ import annotations

import numpy as np
import torch

from longstream.encoders.dna import reverse_complement_ids
from longstream.pipelines.genomics import data as D
from longstream.pipelines.genomics.orf_features import N_FEATURES, orf_features


def _bases(f: torch.Tensor) -> np.ndarray:
    return np.round(np.expm1(f.numpy() * 8.0)).astype(int)


def test_plus_frame_spans_and_distance_to_stop():
    # frame 0 codons: CCA TGA AAC CCG GGT AAG -> TGA (a stop) at base 3
    ids = torch.from_numpy(D.encode("CCATGAAACCCGGGTAAGG").astype(np.int64))[None]
    f = orf_features(ids)  # (1, 19, 12)
    assert f.shape == (1, 19, N_FEATURES)
    v = _bases(f[0, :, :2])
    assert v[:6, 0].tolist() == [6] * 6  # window start .. end of the stop codon
    assert v[:6, 1].tolist() == [5, 4, 3, 2, 1, 0]  # bases to the stop codon's last base
    assert v[6:, 0].tolist() == [15] * 13  # after the stop: open to the window end


def test_minus_strand_stop_and_n_never_stops():
    # TTA at bases 2..4 is a minus-strand stop (TAA on the reverse strand) in frame 2
    ids = torch.from_numpy(D.encode("CCTTACCCGGGTTTCATGG").astype(np.int64))[None]
    v = _bases(orf_features(ids)[0, :, 10:12])  # minus strand, frame 2: span, to-stop
    assert v[2:8, 1].tolist() == [0, 1, 2, 3, 4, 5]  # distance back to the stop (gene runs leftwards)
    n = torch.from_numpy(D.encode("NNNNNNNNN").astype(np.int64))[None]
    assert torch.allclose(orf_features(n)[0, :, 0], orf_features(n)[0, :1, 0].expand(9))


def test_reverse_complement_swaps_strands():
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(7, 11, (2, 301)).astype(np.int64))
    f, g = orf_features(ids), orf_features(reverse_complement_ids(ids))
    # plus-strand spans of the input == minus-strand spans of its RC (some frame), read backwards
    plus = f[..., 0:6:2]
    minus_rc = g.flip(1)[..., 6:12:2]
    assert torch.allclose(plus.sort(-1).values, minus_rc.sort(-1).values)


def test_mutate_rate_and_keeps_n():
    r = np.random.default_rng(0)
    w = np.full(20000, 7, np.uint8)
    w[:100] = 11
    out = D.mutate(w, r, 0.2)
    assert (out[:100] == 11).all()
    changed = float((out[100:] != 7).mean())
    assert 0.13 < changed < 0.17  # 0.2 * 3/4 of the draws pick another base
    assert D.mutate(w, r, 0.0) is w
