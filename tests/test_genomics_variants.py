"""``longstream genomics score-variants``: the two-strand LLR equals a brute-force window likelihood
difference, VCF / TSV outputs carry it, and bad VCFs exit 2 with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longstream.encoders.dna import DNATokenizer, reverse_complement
from longstream.pipelines.common import UserError
from longstream.pipelines.genomics import cli, variants
from longstream.pipelines.genomics import config as C
from longstream.pipelines.genomics.formats import FastaFile
from longstream.pipelines.genomics.model import build_model, from_pretrained

RNG = np.random.default_rng(1)
GENOME = {"chrA": "".join(RNG.choice(list("ACGT"), 400)), "chrB": "".join(RNG.choice(list("ACGT"), 90))}
HEADER = "##fileformat=VCFv4.2\n##contig=<ID=chrA,length=400>\n##contig=<ID=chrB,length=90>\n" \
         "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


def _other(b: str) -> str:
    return "ACGT".replace(b, "")[0]


def _records() -> list[str]:
    a, b = GENOME["chrA"], GENOME["chrB"]
    rows = [("chrA", 1, a[0], _other(a[0])), ("chrA", 150, a[149], _other(a[149])),
            ("chrA", 151, a[150:152], a[150]),  # deletion: skipped
            ("chrA", 200, a[199], ",".join("ACGT".replace(a[199], "")[:2])),  # multi-allelic SNVs: scored per ALT
            ("chrA", 300, a[299:301], _other(a[299]) + _other(a[300])),  # MNV
            ("chrA", 350, a[349], "<DEL>"),  # symbolic: skipped
            ("chrA", 400, a[399], _other(a[399])), ("chrB", 45, b[44], _other(b[44]))]
    return [f"{c}\t{p}\tv{i}\t{r}\t{x}\t.\tPASS\tDP=3" for i, (c, p, r, x) in enumerate(rows)]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    build_model(C.tiny_lm()).save_pretrained(root / "lm", preset="tiny-lm", metrics={})
    build_model(C.tiny()).save_pretrained(root / "species", preset="tiny", metrics={})
    return root


@pytest.fixture
def files(tmp_path):
    fa = tmp_path / "g.fa"
    fa.write_text("".join(f">{k}\n{v}\n" for k, v in GENOME.items()))
    vcf = tmp_path / "v.vcf"
    vcf.write_text(HEADER + "\n".join(_records()) + "\n")
    return fa, vcf


def _loglik(model, seq: str, first: int) -> float:
    """log P(seq[t] | seq[:t]) summed over t >= max(first, 1): the brute-force reference."""
    ids = torch.from_numpy(DNATokenizer().encode(seq).astype(np.int64))[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).double(), -1)[0]  # (w, v)
    return float(sum(logp[t - 1, ids[0, t]] for t in range(max(first, 1), ids.shape[1])))


def test_llr_equals_window_likelihood_difference(lm, files):
    model = from_pretrained(lm / "lm")
    fa_path, _ = files
    with FastaFile(fa_path) as fa:
        alleles = [variants.Allele("chrA", 149, GENOME["chrA"][149], "T" if GENOME["chrA"][149] != "T" else "A"),
                   variants.Allele("chrA", 0, GENOME["chrA"][0], _other(GENOME["chrA"][0])),  # window shifted inside
                   variants.Allele("chrB", 44, GENOME["chrB"][44], _other(GENOME["chrB"][44]))]  # contig < window
        fwd, rev = variants.llr_scores(model, fa, alleles, window=64)
    for a, f, r in zip(alleles, fwd, rev):
        L = len(GENOME[a.chrom])
        lo, hi = variants._window(a.start, 1, L, 64)
        ref = GENOME[a.chrom][lo:hi]
        v = a.start - lo
        alt = ref[:v] + a.alt + ref[v + 1 :]
        # the whole-window log-likelihoods (every term, not only those after the variant)
        want_f = _loglik(model, alt, 0) - _loglik(model, ref, 0)
        want_r = _loglik(model, reverse_complement(alt), 0) - _loglik(model, reverse_complement(ref), 0)
        assert f == pytest.approx(want_f, abs=1e-4) and r == pytest.approx(want_r, abs=1e-4)
        assert abs(f) > 1e-3 and abs(f - r) > 1e-5  # real, strand-specific numbers


def test_tsv_and_vcf_outputs(lm, files, tmp_path):
    fa, vcf = files
    tsv = tmp_path / "s.tsv"
    assert cli.main(["score-variants", "--vcf", str(vcf), "--fasta", str(fa), "--checkpoint", str(lm / "lm"),
                     "--out", str(tsv), "--window", "64", "--batch", "3", "--quiet"]) == 0
    lines = [x.split("\t") for x in tsv.read_text().splitlines()]
    assert tuple(lines[0]) == variants.TSV_COLUMNS
    rows = lines[1:]
    assert [r[2] for r in rows] == ["v0", "v1", "v2", "v3", "v3", "v4", "v5", "v6", "v7"]
    by = {(r[2], r[4]): r for r in rows}
    assert by[("v2", GENOME["chrA"][150])][7].startswith("indel") and by[("v2", GENOME["chrA"][150])][6] == ""
    assert by[("v5", "<DEL>")][7].startswith("symbolic") and rows[3][5] == "multi-allelic"
    for r in rows:
        if r[6]:
            assert float(r[6]) == pytest.approx((float(r[8]) + float(r[9])) / 2, abs=2e-5)
    # VCF out: the input copied with LS_SCORE (one per ALT) / LS_SKIP, scores equal the TSV's
    out = tmp_path / "s.vcf"
    assert cli.main(["score-variants", "--vcf", str(vcf), "--fasta", str(fa), "--checkpoint", str(lm / "lm"),
                     "--out", str(out), "--window", "64", "--quiet"]) == 0
    recs = [x.split("\t") for x in out.read_text().splitlines() if not x.startswith("#")]
    assert len(recs) == 8 and all(r[7].startswith("DP=3;") for r in recs)
    multi = dict(kv.split("=") for kv in recs[3][7].split(";"))["LS_SCORE"].split(",")
    assert [float(x) for x in multi] == pytest.approx([float(rows[3][6]), float(rows[4][6])], abs=1e-5)
    assert "LS_SKIP=indel" in recs[2][7] and "LS_SKIP=symbolic" in recs[5][7]
    assert '##INFO=<ID=LS_SCORE,Number=A,Type=Float' in out.read_text()


@pytest.mark.parametrize("case", ["ref_mismatch", "unknown_contig", "bad_pos", "not_vcf"])
@pytest.mark.parametrize("suffix", [".tsv", ".vcf"])
def test_bad_vcf_exit_2_nothing_written(lm, files, tmp_path, capsys, case, suffix):
    fa, _ = files
    recs = _records()
    if case == "ref_mismatch":
        c = recs[6].split("\t")
        c[3] = _other(c[3])
        recs[6] = "\t".join(c)
        text = HEADER + "\n".join(recs) + "\n"
    elif case == "unknown_contig":
        text = HEADER + "\n".join(recs + ["chrZ\t5\tz\tA\tC\t.\tPASS\t."]) + "\n"
    elif case == "bad_pos":
        text = HEADER + "\n".join(recs[:5] + [recs[5].replace("\t350\t", "\t3x0\t")]) + "\n"
    else:
        text = "chrA 1 x A C\n"
    vcf = tmp_path / "bad.vcf"
    vcf.write_text(text)
    out = tmp_path / f"out{suffix}"
    rc = cli.main(["score-variants", "--vcf", str(vcf), "--fasta", str(fa), "--checkpoint", str(lm / "lm"),
                   "--out", str(out), "--window", "32", "--batch", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: VCF") and "bad.vcf" in err[0]
    want = {"ref_mismatch": "line 11", "unknown_contig": "chrZ", "bad_pos": "'3x0'", "not_vcf": "line 1"}[case]
    assert want in err[0]
    assert not out.exists() and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_wrong_checkpoint_and_out(lm, files, tmp_path, capsys):
    fa, vcf = files
    base = ["score-variants", "--vcf", str(vcf), "--fasta", str(fa), "--quiet"]
    assert cli.main(base + ["--checkpoint", str(lm / "species"), "--out", str(tmp_path / "o.tsv")]) == 2
    assert "language model" in capsys.readouterr().err
    assert cli.main(base + ["--checkpoint", str(lm / "lm"), "--out", str(tmp_path / "o.csv")]) == 2
    assert "X.tsv" in capsys.readouterr().err
    assert not (tmp_path / "o.tsv").exists()


def test_edits_of_a_pasted_sequence(lm):
    model = from_pretrained(lm / "lm")
    seq = GENOME["chrA"][:120]
    edits = variants.parse_edits("10:A, 60:" + _other(seq[59]), seq)
    assert edits[1] == (59, seq[59], _other(seq[59]))
    got = variants.score_edits(model, seq, edits, window=64)
    fa = variants._SeqFasta(seq)
    fwd, rev = variants.llr_scores(model, fa, [variants.Allele("input", 59, seq[59], _other(seq[59]))], window=64)
    assert got[1]["score"] == pytest.approx(float(fwd[0] + rev[0]) / 2, abs=1e-6)
    for bad, msg in (("10", "POS:ALT"), ("0:A", "outside"), ("500:A", "outside"), ("5:AT", "one base")):
        with pytest.raises(UserError, match=msg):
            variants.parse_edits(bad, seq)

