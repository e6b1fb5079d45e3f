"""The supervised gene-finder prior (pipelines/genomics/coding_prior.py): a 3-periodic Markov
coding model and a start-site model, fitted on annotated genes and used by the ORF decoder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from longstream.pipelines.genomics import genes as G
from longstream.pipelines.genomics.coding_prior import CodingPrior

_CODONS = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"]
_SENSE = [c for c in _CODONS if c not in G.STOP_CODONS]
_COMP = str.maketrans("ACGT", "TGCA")
_RBS = "AGGAGG"


def _rc(s: str) -> str:
    return s.translate(_COMP)[::-1]


def _genome(seed: int, n_genes: int = 60):
    """Random intergenic sequence and genes with a strong codon bias (a skewed codon table), an
    RBS 8 bases before the ATG, and decoy in-frame ATGs inside the gene; both strands."""
    w = np.random.default_rng(123).gamma(0.3, size=len(_SENSE))  # one codon table for every genome
    rng = np.random.default_rng(seed)
    w /= w.sum()
    parts, genes, pos = [], [], 0
    for i in range(n_genes):
        gap = "".join(rng.choice(list("ACGT"), int(rng.integers(60, 200))))
        body = list(rng.choice(_SENSE, int(rng.integers(80, 200)), p=w))
        for j in rng.choice(np.arange(3, len(body)), 2, replace=False):
            body[j] = "ATG"  # decoy starts downstream of the real one
        gene = "ATG" + "".join(body) + "TAA"
        up = _RBS + "".join(rng.choice(list("ACGT"), 8))
        parts.append(gap)
        pos += len(gap)
        if i % 3 == 2:  # a minus-strand gene: its RBS lies after it on the forward axis
            piece = _rc(up + gene)
            parts.append(piece)
            genes.append((pos, pos + len(gene), -1))
        else:
            piece = up + gene
            parts.append(piece)
            genes.append((pos + len(up), pos + len(piece), 1))
        pos += len(piece)
    parts.append("".join(rng.choice(list("ACGT"), 100)))
    return "".join(parts), genes


def test_frame_tracks_favour_the_true_frame_and_starts_the_annotated_atg():
    seq, genes = _genome(0)
    prior = CodingPrior(order=2).fit(seq, genes)
    codes = G._codes(seq)
    tr = prior.frame_tracks(codes)  # forward strand, 3 frames
    st = prior.start_scores(codes)
    assert tr.shape == (3, len(seq)) and st.shape == (len(seq),)
    for s, e, strand in genes:
        if strand < 0:
            continue
        f = s % 3
        sums = tr[:, s:e].sum(1)
        assert sums[f] > 0 and sums[f] > sums[(f + 1) % 3] + 20 and sums[f] > sums[(f + 2) % 3] + 20, (s, sums)
        decoys = [p for p in range(s + 3, e - 3, 3) if seq[p : p + 3] == "ATG"]
        assert decoys and all(st[s] > st[p] for p in decoys), (s, st[s], [st[p] for p in decoys])


def test_prior_decodes_held_out_synthetic_genes_exactly():
    train_seq, train_genes = _genome(1)
    test_seq, test_genes = _genome(2)
    calls = CodingPrior(order=2).fit(train_seq, train_genes).decode(test_seq)
    m = G.gene_metrics(calls, test_genes)
    assert m["exact_sensitivity"] >= 0.9 and m["exact_precision"] >= 0.9, m
    # the decoder without the prior (a flat track) calls nothing: the prior carries the signal
    assert G.decode_genes(np.zeros((len(test_seq), 3)), test_seq) == []


def test_decode_genes_checks_prior_shapes():
    seq = "ATG" + "GCT" * 40 + "TAA"
    p = np.zeros((len(seq), 3))
    with pytest.raises(ValueError, match="frame_scores"):
        G.decode_genes(p, seq, frame_scores=np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="start_scores"):
        G.decode_genes(p, seq, start_scores=np.zeros((3, len(seq))))
    # a plus-strand frame bonus on the gene's frame calls exactly that gene
    fs = np.zeros((2, 3, len(seq)))
    fs[0, 0] = 1.0
    calls = G.decode_genes(p, seq, track_weight=0.0, frame_scores=fs, gene_penalty=5.0)
    assert [g.key for g in calls] == [(0, len(seq), 1)]


def test_fit_rejects_empty_annotation():
    with pytest.raises(ValueError, match="no genes"):
        CodingPrior().fit("ACGT" * 100, [])
    with pytest.raises(RuntimeError, match="fit"):
        CodingPrior().frame_tracks(G._codes("ACGTACGT"))


def _mtb_gb() -> Path:
    return Path(os.environ.get("LONGSTREAM_DATA", "../shared/data")) / "genomics/mtb/NC_000962.3.gb"


def test_prior_on_mtb_validation_split():
    """The protocol that chose the defaults: fit on [0, 0.55 L) of M. tuberculosis, decode the
    validation region [0.55 L, 0.7 L) with the defaults (measured: strand MCC 0.896, binary 0.731,
    exact sensitivity 0.681, stop sensitivity 0.934). About 10 s."""
    if not _mtb_gb().exists():
        pytest.skip(f"{_mtb_gb()} not present")
    from longstream.pipelines.genomics import formats, splits

    rec = formats.read_genbank(_mtb_gb())
    L = len(rec.sequence)
    fit_hi, lo, hi = int(0.55 * L), int(0.55 * L), int(0.7 * L)
    train = [(g.start, g.end, g.strand) for g in rec.cds if g.end <= fit_hi and len(g.parts or ((0, 0),)) == 1]
    prior = CodingPrior().fit(rec.sequence[:fit_hi].upper(), train)
    calls = prior.decode(rec.sequence[lo:hi].upper())
    true = [(g.start - lo, g.end - lo, g.strand) for g in rec.cds if g.start >= lo and g.end <= hi]
    m = G.gene_metrics(calls, true)
    b = G.base_metrics(splits.cds_labels(rec)[lo:hi], G.genes_to_labels(calls, hi - lo))
    assert b["strand_mcc"] >= 0.885 and b["binary_mcc"] >= 0.715, b
    assert m["exact_sensitivity"] >= 0.66 and m["stop_sensitivity"] >= 0.92, m


def test_prior_features_match_the_numpy_prior():
    """The model's channels (prior_features.py, torch) equal the numpy prior's numbers: the
    coding LLR summed over +-60 bases in the frame that puts base t at codon position c, and the
    start log-odds at start codons, on both strands."""
    import torch

    from longstream.pipelines.genomics.data import encode
    from longstream.pipelines.genomics.prior_features import _LLR_SCALE, _START_SCALE, PriorFeatures

    seq, genes = _genome(3, n_genes=30)
    prior = CodingPrior(order=3).fit(seq, genes)
    feats = PriorFeatures(order=3)
    feats.load_prior(prior)
    w = seq[1000:1700] + "NNNN" + seq[1704:2500]  # an N run breaks k-mers and codons
    f = feats(torch.from_numpy(encode(w).astype(np.int64))[None])[0].numpy().astype(np.float64)
    n = len(w)
    assert f.shape == (n, 8)
    codes = G._codes(w)
    for strand, view in ((0, codes), (1, G._COMP[codes[::-1]])):
        tr, st = prior.frame_tracks(view), prior.start_scores(view)
        for t in (0, 5, 70, 400, 699, 702, 706, 777, 1200, n - 5, n - 1):  # edges and the N run included
            j = t if strand == 0 else n - 1 - t  # the base on this strand's axis
            for c in range(3):
                want = tr[(j - c) % 3, max(j - 60, 0) : j + 61].sum()
                assert f[t, 3 * strand + c] * _LLR_SCALE == pytest.approx(want, abs=1e-3)
        pos = np.nonzero(st)[0]
        fwd = pos if strand == 0 else n - 1 - pos
        assert pos.size > 5
        np.testing.assert_allclose(f[fwd, 6 + strand] * _START_SCALE, st[pos], atol=1e-4)
        # no other base carries a start score
        assert set(np.nonzero(f[:, 6 + strand])[0]) == set(fwd.tolist())
    with pytest.raises(ValueError, match="does not match"):
        PriorFeatures(order=5).load_prior(prior)


def test_cds_model_fits_the_prior_and_its_checkpoint_carries_it(tmp_path):
    """--model.prior_features: ``fit_prior`` loads the training region's prior into buffers, the
    channels move the logits, and a saved checkpoint restores the same buffers and outputs."""
    from types import SimpleNamespace

    import torch

    from longstream.pipelines.common import UserError
    from longstream.pipelines.genomics import config as C
    from longstream.pipelines.genomics import model as M
    from longstream.pipelines.genomics.data import encode

    seq, genes = _genome(4, n_genes=40)
    split = len(seq) // 2
    feats = [SimpleNamespace(start=s, end=e, strand=st, parts=None) for s, e, st in genes]
    data = SimpleNamespace(record=SimpleNamespace(sequence=seq, cds=feats), split=split)
    cfg = C.tiny_cds()
    cfg.model.prior_features = True
    torch.manual_seed(0)
    m = M.build_model(cfg).eval()
    x = torch.from_numpy(encode(seq[split : split + 600]).astype(np.int64))[None]
    before = m(x)
    m.fit_prior(data)
    assert m.prior.llr.abs().sum() > 0 and m.prior.start_w.abs().sum() > 0
    want = CodingPrior().fit(seq[:split], [g for g in genes if g[1] <= split])
    np.testing.assert_allclose(m.prior.llr.numpy(), want.llr, rtol=1e-5, atol=1e-5)
    after = m(x)
    assert not torch.allclose(before, after)
    m.save_pretrained(tmp_path / "ck")
    again = M.from_pretrained(tmp_path / "ck").eval()
    torch.testing.assert_close(again.prior.llr, m.prior.llr)
    torch.testing.assert_close(again(x), after)
    bad = C.tiny()
    bad.model.prior_features = True
    with pytest.raises(UserError, match="prior_features"):
        M.build_model(bad)


def _record(seq, genes):
    from types import SimpleNamespace

    feats = [SimpleNamespace(start=s, end=e, strand=st, parts=None, length=e - s) for s, e, st in genes]
    return SimpleNamespace(sequence=seq, cds=feats)


def test_frame_labels_collapse_to_strand_labels_and_follow_reverse_complement():
    from longstream.pipelines.genomics import splits
    from longstream.pipelines.genomics.data import rc_labels

    seq, genes = _genome(5, n_genes=12)
    fr = splits.cds_frame_labels(_record(seq, genes))
    st = splits.cds_labels(_record(seq, genes))
    np.testing.assert_array_equal(np.array([0, 1, 1, 1, 2, 2, 2])[fr], st)
    for s, e, strand in genes:  # codon position 0 at the gene's first base on its own strand
        first = s if strand > 0 else e - 1
        assert fr[first] == (1 if strand > 0 else 4) and fr[first + (1 if strand > 0 else -1)] == (2 if strand > 0 else 5)
    n = len(seq)
    rc_genes = [(n - e, n - s, -strand) for s, e, strand in genes]
    np.testing.assert_array_equal(rc_labels(fr, frames=True), splits.cds_frame_labels(_record(_rc(seq), rc_genes)))


def test_frame_scores_decode_true_codon_positions_into_the_genes():
    """Decoding one-hot codon-position labels frame by frame recovers every synthetic gene exactly,
    where the strand-only track cannot tell a gene from a same-strand ORF shifted by a frame."""
    from longstream.pipelines.genomics import splits

    seq, genes = _genome(6, n_genes=30)
    fr = splits.cds_frame_labels(_record(seq, genes))
    p7 = np.eye(7)[fr]
    fs = G.frame_scores_from_probs(p7)
    assert fs.shape == (2, 3, len(seq))
    p3 = np.stack([p7[:, 0], p7[:, 1:4].sum(1), p7[:, 4:].sum(1)], 1)
    calls = G.decode_genes(p3, seq, track_weight=0.0, frame_scores=fs, gene_penalty=5.0)
    m = G.gene_metrics(calls, genes)
    assert m["exact_sensitivity"] == 1.0 and m["exact_precision"] == 1.0, m
    with pytest.raises(ValueError, match=r"\(L, 7\)"):
        G.frame_scores_from_probs(p3)


def test_cds_batch_with_frames_is_the_strand_batch_refined():
    """--model.cds_frames trains on the same windows (and RC draws) with codon-position labels."""
    from longstream.pipelines.genomics import config as C
    from longstream.pipelines.genomics import data as D
    from longstream.pipelines.genomics import splits

    seq, genes = _genome(7, n_genes=20)
    rec = _record(seq, genes)
    data = D.CdsData(rec, D.encode(seq), splits.cds_labels(rec), len(seq) // 2, splits.cds_frame_labels(rec))
    cfg = C.tiny_cds()
    cfg.data.rc_prob = 0.5
    seen = set()
    for step in range(6):
        cfg.model.cds_frames = False
        x3, y3 = D.cds_batch(data, cfg, step)
        cfg.model.cds_frames = True
        x7, y7 = D.cds_batch(data, cfg, step)
        assert (x3 == x7).all()
        assert (torch_collapse(y7) == y3).all()
        seen |= set(y7.unique().tolist())
    assert seen == set(range(7)), seen  # every codon position on both strands occurs


def torch_collapse(y):
    import torch

    return torch.tensor([0, 1, 1, 1, 2, 2, 2])[y]


def test_prior_rebuilt_from_model_buffers_decodes_the_same_genes():
    from longstream.pipelines.genomics.prior_features import PriorFeatures

    train_seq, train_genes = _genome(8)
    test_seq, _ = _genome(9)
    prior = CodingPrior(order=3).fit(train_seq, train_genes)
    feats = PriorFeatures(order=3)
    feats.load_prior(prior)
    again = CodingPrior.from_features(feats)
    codes = G._codes(test_seq)
    np.testing.assert_allclose(again.start_scores(codes), prior.start_scores(codes), atol=1e-4)
    np.testing.assert_allclose(again.frame_tracks(codes), prior.frame_tracks(codes), atol=1e-5)
    assert [g.key for g in again.decode(test_seq)] == [g.key for g in prior.decode(test_seq)]


def test_decode_genes_refuses_an_overlap_that_allows_nested_calls():
    """With max_overlap >= min_length a short ORF sharing a longer one's stop could be called
    inside it (both counted): refused with one clear error."""
    seq = "ATG" + "GCT" * 40 + "TAA"
    with pytest.raises(ValueError, match="max_overlap"):
        G.decode_genes(np.zeros((len(seq), 3)), seq, min_length=60, max_overlap=60)


def test_frame_labels_of_a_joined_minus_strand_gene_count_along_the_spliced_sequence():
    """A minus-strand join lists its parts 5' -> 3' (the parser's order: the right part first);
    codon positions continue across the junction."""
    from types import SimpleNamespace

    from longstream.pipelines.genomics import splits

    g = SimpleNamespace(start=10, end=60, strand=-1, parts=((40, 60), (10, 20)), length=30)
    lab = splits.cds_frame_labels(SimpleNamespace(sequence="A" * 80, cds=[g]))
    assert lab[59] == 4 and lab[58] == 5 and lab[57] == 6  # the gene's first codon, read leftwards
    assert lab[40] == 4 + (19 % 3)  # the 20th base of the spliced gene
    assert lab[19] == 4 + (20 % 3) and lab[10] == 4 + (29 % 3)  # the second part continues the count
    assert (lab[20:40] == 0).all()  # the intron is not coding
