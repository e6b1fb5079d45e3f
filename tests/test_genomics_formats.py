"""pipelines/genomics/formats: FASTA (plain / gzip / bgzip), GenBank, BED, VCF, the score writers.

Reading is tested on the real genomes in ``$LONGSTREAM_DATA/genomics``; the error cases on
small files written to ``tmp_path`` (a truncated .gz, a VCF whose REF disagrees with the FASTA, ...).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from longstream.pipelines.common import UserError
from longstream.pipelines.genomics import formats as F

LAMBDA = "gi|9626243|ref|NC_001416.1|"


@pytest.fixture(scope="module")
def lam() -> str:
    import os

    return F.read_fasta(Path(os.environ["LONGSTREAM_DATA"]) / "genomics" / "lambda_virus.fa.gz")[LAMBDA]


def _fasta_text(records: dict[str, str], width: int = 60) -> str:
    return "".join(f">{k} test\n" + "".join(v[i:i + width] + "\n" for i in range(0, len(v), width))
                   for k, v in records.items())


# ---------------------------------------------------------------- FASTA, real data


def test_read_fasta_real_gzip(data_root, lam):
    assert len(lam) == 48_502 and lam[:10] == "GGGCGGCGAC" and set(lam) == set("ACGT")
    fa = F.FastaFile(data_root / "genomics" / "mtb" / "NC_000962.3.fa.gz")
    assert fa.kind == "gzip" and fa.in_memory and fa.names == ["NC_000962.3"]
    assert fa.length("NC_000962.3") == 4_411_532
    assert fa.fetch("NC_000962.3", 0, 12) == "TTGACCGATGAC"  # dnaA starts with TTG in H37Rv


@pytest.mark.parametrize("kind", ["plain", "bgzip"])
def test_fasta_random_access_via_pyfaidx(tmp_path, lam, kind):
    text = _fasta_text({"lambda": lam, "rev": lam[::-1][:1000]})
    p = tmp_path / ("g.fa" if kind == "plain" else "g.fa.gz")
    if kind == "plain":
        p.write_text(text)
    else:
        from Bio import bgzf

        with bgzf.BgzfWriter(str(p), "wb") as w:
            w.write(text.encode())
    with F.FastaFile(p) as fa:
        assert fa.kind == kind and not fa.in_memory
        assert fa.names == ["lambda", "rev"] and fa.length("lambda") == 48_502 and fa.length("rev") == 1000
        rng = np.random.default_rng(0)
        for s in rng.integers(0, 48_000, 20):
            e = int(s) + int(rng.integers(0, 500))
            assert fa.fetch("lambda", int(s), e) == lam[s:e]
        assert fa.fetch("rev", 990) == lam[::-1][990:1000]
        assert fa.fetch("lambda", 5, 5) == ""
        with pytest.raises(UserError, match=r"outside record 'lambda' \(length 48,502\)"):
            fa.fetch("lambda", 48_000, 48_503)
        with pytest.raises(UserError, match="no record named 'chr1'.*lambda, rev"):
            fa.length("chr1")
    assert (tmp_path / (p.name + ".fai")).is_file()
    assert F.read_fasta(p) == {"lambda": lam, "rev": lam[::-1][:1000]}


def test_soft_mask_kept_and_uneven_lines_read_into_memory(tmp_path):
    p = tmp_path / "m.fa"
    p.write_text(">x\nACGTacgt\nNNac\nRYG\n>y desc\nGG\n")  # uneven widths: legal, not faidx-indexable
    with F.FastaFile(p) as fa:
        assert fa.in_memory and fa.fetch("x") == "ACGTacgtNNacRYG" and fa.fetch("y") == "GG"
    from longstream.encoders.dna import DNATokenizer

    assert DNATokenizer().soft_mask(F.read_fasta(p)["x"]).sum() == 6


# ---------------------------------------------------------------- FASTA, errors


def _gz(p: Path, data: bytes) -> Path:
    p.write_bytes(gzip.compress(data))
    return p


def test_fasta_errors_name_file_and_line(tmp_path):
    cases = {
        "bad.fa": (b">a\nACGT\nACXT\n", r"bad\.fa, line 3, column 3: invalid character 'X'"),
        "tab.fa": (b">a\nAC\tGT\n", r"line 2, column 3: invalid character '\\t'"),
        "dup.fa": (b">a\nAC\n>b\nGT\n>a x\nTT\n", r"line 5: duplicate record name 'a' \(first at line 1\)"),
        "nohead.fa": (b"ACGT\nACGT\n", r"line 1: not a FASTA file"),
        "noseq.fa": (b">a\n>b\nAC\n", r"line 1: record has no sequence"),
        "empty.fa": (b"", r"empty\.fa is empty"),
        "blank.fa": (b"\n\n", r"blank\.fa is empty"),
        "bin.fa": (b">a\nAC\x00\x01GT\n", r"bin\.fa is a binary file"),
        "latin.fa": (b">caf\xe9\nACGT\n", r"latin\.fa, line 1: not UTF-8"),
    }
    for name, (data, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(UserError, match=msg):
            F.read_fasta(p)
        with pytest.raises(UserError, match=msg):  # indexed or not, the same message
            with F.FastaFile(p) as fa:
                [fa.fetch(n) for n in fa.names]
    with pytest.raises(UserError, match=r"does not exist"):
        F.FastaFile(tmp_path / "missing.fa")
    with pytest.raises(UserError, match=r"is a directory"):
        F.read_fasta(tmp_path)


def test_truncated_and_corrupt_gzip(tmp_path, lam):
    whole = gzip.compress(_fasta_text({"lambda": lam}).encode())
    trunc = tmp_path / "t.fa.gz"
    trunc.write_bytes(whole[: len(whole) // 2])
    for reader in (F.read_fasta, F.FastaFile):
        with pytest.raises(UserError, match=r"t\.fa\.gz: the gzip stream is truncated after line \d+"):
            reader(trunc)
    bad = bytearray(whole)
    bad[len(bad) // 2: len(bad) // 2 + 64] = bytes(64)
    (tmp_path / "c.fa.gz").write_bytes(bytes(bad))
    with pytest.raises(UserError, match=r"c\.fa\.gz: the gzip stream is (corrupt|truncated)"):
        F.read_fasta(tmp_path / "c.fa.gz")
    with pytest.raises(UserError, match="empty after decompression"):
        F.read_fasta(_gz(tmp_path / "e.fa.gz", b""))
    with pytest.raises(UserError, match=r"line 2, column 1: invalid character '\*'"):
        F.read_fasta(_gz(tmp_path / "s.fa.gz", b">a\n*\n"))


# ---------------------------------------------------------------- GenBank


@pytest.fixture(scope="module")
def mtb():
    import os

    return F.read_genbank(Path(os.environ["LONGSTREAM_DATA"]) / "genomics" / "mtb" / "NC_000962.3.gb")


def test_read_genbank_real_mtb(mtb):
    rec = mtb  # annotation-only file: the sequence comes from the sibling NC_000962.3.fa.gz
    assert rec.name == "NC_000962.3" and len(rec) == 4_411_532 and len(rec.cds) == 3906
    assert rec.sequence[:12] == "TTGACCGATGAC" and set(rec.sequence) == set("ACGT")
    g = rec.cds[0]
    assert (g.start, g.end, g.strand, g.locus_tag, g.gene) == (0, 1524, 1, "Rv0001", "dnaA")
    strands = np.array([c.strand for c in rec.cds])
    assert set(strands.tolist()) == {1, -1} and 0.4 < (strands == 1).mean() < 0.6
    from longstream.encoders.dna import reverse_complement

    seq = rec.sequence
    starts = [seq[c.start:c.start + 3] if c.strand == 1 else reverse_complement(seq[c.end - 3:c.end]) for c in rec.cds]
    stops = [reverse_complement(seq[c.start:c.start + 3]) if c.strand == -1 else seq[c.end - 3:c.end] for c in rec.cds]
    # 0-based half-open coordinates and strands are right: genes start with a start codon, end with a stop
    assert np.mean([s in ("ATG", "GTG", "TTG") for s in starts]) > 0.97
    assert np.mean([s in ("TAA", "TAG", "TGA") for s in stops]) > 0.97
    assert sum(c.length % 3 != 0 for c in rec.cds) < 20


def _write_genbank(p: Path, seq: str | None) -> None:
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqFeature import CompoundLocation, FeatureLocation, SeqFeature
    from Bio.SeqRecord import SeqRecord

    r = SeqRecord(Seq(seq or "A" * 60), id="TOY.1", name="TOY", description="toy",
                  annotations={"molecule_type": "DNA"})
    r.features = [
        SeqFeature(FeatureLocation(3, 12, strand=1), type="CDS", qualifiers={"locus_tag": ["t1"], "product": ["p"]}),
        SeqFeature(FeatureLocation(20, 29, strand=-1), type="CDS", qualifiers={"locus_tag": ["t2"]}),
        SeqFeature(CompoundLocation([FeatureLocation(30, 36, 1), FeatureLocation(40, 46, 1)]), type="CDS"),
        SeqFeature(FeatureLocation(0, 60, strand=1), type="gene"),
    ]
    SeqIO.write(r, str(p), "genbank")
    if seq is None:  # annotation only: an empty ORIGIN section like the shipped NC_000962.3.gb
        text = p.read_text()
        p.write_text(text[: text.index("ORIGIN")] + "ORIGIN      \n//\n")


def test_read_genbank_features_and_errors(tmp_path):
    seq = "".join(np.random.default_rng(0).choice(list("ACGT"), 60))
    _write_genbank(tmp_path / "toy.gb", seq)
    rec = F.read_genbank(tmp_path / "toy.gb")
    assert rec.name == "TOY.1" and rec.sequence == seq
    assert [(c.start, c.end, c.strand, c.locus_tag) for c in rec.cds] == [(3, 12, 1, "t1"), (20, 29, -1, "t2"),
                                                                           (30, 46, 1, "")]
    assert rec.cds[2].parts == ((30, 36), (40, 46)) and rec.cds[2].length == 12 and rec.cds[0].product == "p"
    _write_genbank(tmp_path / "ann.gb", None)
    with pytest.raises(UserError, match=r"ann\.gb: record TOY\.1 has no sequence.*no FASTA ann\.fa"):
        F.read_genbank(tmp_path / "ann.gb")
    (tmp_path / "ann.fa").write_text(">TOY.1\n" + seq[:50] + "\n")
    with pytest.raises(UserError, match=r"60 bp \(LOCUS\) but FASTA .* is 50 bp"):
        F.read_genbank(tmp_path / "ann.gb")
    (tmp_path / "ann.fa").write_text(">TOY.1\n" + seq + "\n")
    assert F.read_genbank(tmp_path / "ann.gb").sequence == seq
    (tmp_path / "x.gb").write_text(">not genbank\nACGT\n")
    with pytest.raises(UserError, match=r"x\.gb, line 1: not a GenBank file"):
        F.read_genbank(tmp_path / "x.gb")


# ---------------------------------------------------------------- BED


def test_read_bed_and_errors(tmp_path, lam):
    fa_path = tmp_path / "g.fa"
    fa_path.write_text(_fasta_text({"lambda": lam}))
    p = tmp_path / "a.bed"
    p.write_text("track name=x\nbrowser position lambda:1-10\n# comment\n\nlambda\t0\t100\n"
                 "lambda\t200\t300\tgeneA\t5.5\t-\textra\n")
    with F.FastaFile(fa_path) as fa:
        iv = F.read_bed(p, fasta=fa)
    assert [(i.chrom, i.start, i.end, i.name, i.score, i.strand, i.line) for i in iv] == [
        ("lambda", 0, 100, "", None, ".", 5), ("lambda", 200, 300, "geneA", 5.5, "-", 6)]
    bad = {
        "lambda\t5\n": r"line 1: 2 column\(s\), need at least 3",
        "lambda\t1\t2\nlambda\tx\t9\n": r"line 2: start 'x' / end '9' are not integers",
        "lambda\t9\t5\n": r"line 1: interval \[9, 5\) is invalid",
        "lambda\t-1\t5\n": r"interval \[-1, 5\) is invalid",
        "lambda\t1\t5\tn\t1\t*\n": r"strand '\*'",
        "lambda\t1\t5\tn\tnan\n": r"score 'nan' is not finite",
        "chr9\t1\t5\n": r"line 1: chromosome 'chr9' is not in FASTA",
        "lambda\t1\t48503\n": r"end 48,503 is past the end of 'lambda'",
    }
    with F.FastaFile(fa_path) as fa:
        for i, (text, msg) in enumerate(bad.items()):
            q = tmp_path / f"b{i}.bed"
            q.write_text(text)
            with pytest.raises(UserError, match=rf"BED .*b{i}\.bed, line \d+: ") as e:
                F.read_bed(q, fasta=fa)
            assert re.search(msg, str(e.value)), (msg, str(e.value))


# ---------------------------------------------------------------- VCF


_VCF_HEAD = "##fileformat=VCFv4.2\n##contig=<ID=lambda,length=48502>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


@pytest.fixture
def genome(tmp_path, lam) -> Path:
    p = tmp_path / "lambda.fa"
    p.write_text(_fasta_text({"lambda": lam}))
    return p


def _snv_vcf(lam: str, n: int = 50) -> tuple[str, list[int]]:
    """A VCF of ``n`` real-REF SNVs plus one indel and one multi-allelic record (lines 4...)."""
    pos = sorted(np.random.default_rng(0).choice(np.arange(1, 48_000), n, replace=False).tolist())
    alt = {"A": "G", "C": "T", "G": "A", "T": "C"}
    rows = [f"lambda\t{p}\trs{p}\t{lam[p - 1]}\t{alt[lam[p - 1]]}\t.\tPASS\tDP=9" for p in pos]
    rows.append(f"lambda\t48100\t.\t{lam[48_099:48_101]}\t{lam[48_099]}\t.\t.\t.")
    rows.append(f"lambda\t48200\t.\t{lam[48_199]}\tA,C\t.\t.\t.")
    return _VCF_HEAD + "\n".join(rows) + "\n", pos


def test_read_vcf_real_refs_and_kinds(tmp_path, lam, genome):
    text, pos = _snv_vcf(lam)
    (tmp_path / "v.vcf").write_text(text)
    _gz(tmp_path / "v.vcf.gz", text.encode())  # plain gzip: htslib and the line reader both read it
    for name in ("v.vcf", "v.vcf.gz"):
        vs = list(F.read_vcf(tmp_path / name, fasta=genome))
        assert [v.pos for v in vs[:-2]] == pos and [v.line for v in vs] == list(range(4, 4 + len(vs)))
        assert all(v.kind == "snv" and v.ref == lam[v.pos - 1] and v.id == f"rs{v.pos}" for v in vs[:-2])
        assert (vs[-2].kind, vs[-1].kind, vs[-1].alts) == ("indel", "multi-allelic", ("A", "C"))
    assert len(list(F.read_vcf(tmp_path / "v.vcf"))) == len(pos) + 2  # no FASTA: ##contig checks only
    assert F.count_records(tmp_path / "v.vcf.gz") == len(pos) + 2


def test_vcf_errors_name_file_and_line(tmp_path, lam, genome):
    good = f"lambda\t3\t.\t{lam[2]}\tA\t.\t.\t."
    bad_ref = {"A": "C", "C": "G", "G": "T", "T": "A"}[lam[9]]
    cases = {
        "ref": (f"{good}\nlambda\t10\t.\t{bad_ref}\tT\t.\t.\t.\n",
                rf"line 5: REF '{bad_ref}' at lambda:10 does not match the FASTA's '{lam[9]}'"),
        "contig": (f"{good}\nchr1\t10\t.\tA\tT\t.\t.\t.\n", r"line 5: contig 'chr1' is not in FASTA"),
        "pos": ("lambda\tx\t.\tA\tT\t.\t.\t.\n", r"line 4: POS 'x' is not a positive integer"),  # htslib segfaults
        "cols": ("lambda\t5\t.\tA\n", r"line 4: 4 tab-separated column\(s\), need at least 8"),
        "refchars": ("lambda\t5\t.\tA-\tT\t.\t.\t.\n", r"line 4: REF 'A-' must be bases"),
        "alt": ("lambda\t5\t.\tA\tT,?\t.\t.\t.\n", r"line 4: ALT '\?' is not bases"),
        "end": (f"lambda\t48502\t.\t{lam[-1]}A\tT\t.\t.\t.\n", r"line 4: lambda:48502 .* is past the end"),
        "blank": (f"{good}\n\n{good}\n", r"line 5: blank line"),
    }
    for name, (body, msg) in cases.items():
        p = tmp_path / f"{name}.vcf"
        p.write_text(_VCF_HEAD + body)
        with pytest.raises(UserError, match=rf"VCF .*{name}\.vcf, {msg}"):
            list(F.read_vcf(p, fasta=genome))
    (tmp_path / "nohead.vcf").write_text("#CHROM\tPOS\n")
    with pytest.raises(UserError, match=r"nohead\.vcf, line 1: not a VCF file"):
        list(F.read_vcf(tmp_path / "nohead.vcf"))
    (tmp_path / "undeclared.vcf").write_text(_VCF_HEAD + "chr2\t5\t.\tA\tT\t.\t.\t.\n")
    with pytest.raises(UserError, match=r"line 4: contig 'chr2' is not declared"):
        list(F.read_vcf(tmp_path / "undeclared.vcf"))
    text, _ = _snv_vcf(lam, 2000)
    whole = gzip.compress(text.encode())
    (tmp_path / "t.vcf.gz").write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(UserError, match=r"t\.vcf\.gz: the gzip stream is truncated after line \d+"):
        list(F.read_vcf(tmp_path / "t.vcf.gz", fasta=genome))
    (tmp_path / "bin.vcf").write_bytes(b"\x1f\x00\x00binary")
    with pytest.raises(UserError, match=r"bin\.vcf is a binary file"):
        list(F.read_vcf(tmp_path / "bin.vcf"))


def _leftovers(d: Path) -> list[str]:
    return sorted(q.name for q in d.iterdir() if q.name.endswith(".tmp"))


@pytest.mark.parametrize("suffix", [".vcf", ".vcf.gz"])
def test_write_scored_vcf_round_trip(tmp_path, lam, genome, suffix):
    import cyvcf2

    text, pos = _snv_vcf(lam, 20)
    src = tmp_path / "in.vcf"
    src.write_text(text)
    vs = list(F.read_vcf(src, fasta=genome))
    scores = {v.line: -0.125 * i for i, v in enumerate(vs) if v.kind == "snv"}
    reasons = {v.line: F.KIND_REASONS[v.kind] for v in vs if v.kind != "snv"}
    out = F.write_scored_vcf(src, tmp_path / f"out{suffix}", scores, reasons)
    assert F.compression(out) == ("bgzip" if suffix == ".vcf.gz" else "plain")
    got = {r.POS: (r.INFO.get("LS_SCORE"), r.INFO.get("LS_SKIP"), r.INFO.get("DP")) for r in cyvcf2.VCF(str(out))}
    for i, p in enumerate(pos):
        assert got[p][0] == pytest.approx(-0.125 * i) and got[p][1] is None and str(got[p][2]) == "9"
    assert got[48_100][1] == "indel_(only_single-base_substitutions_are_scored)" and got[48_100][0] is None
    # the copy is the input plus the two ##INFO lines and the INFO additions, byte for byte elsewhere
    lines_in = text.splitlines()
    lines_out = (gzip.open(out, "rt") if suffix == ".vcf.gz" else open(out)).read().splitlines()
    assert len(lines_out) == len(lines_in) + 2 and lines_out[2].startswith("##INFO=<ID=LS_SCORE,Number=A,Type=Float")
    assert [ln.split("\t")[:7] for ln in lines_out[5:]] == [ln.split("\t")[:7] for ln in lines_in[3:]]
    # re-scoring the output replaces the old values instead of adding a second LS_SCORE
    again = F.write_scored_vcf(out, tmp_path / "again.vcf", {6: 3.5})
    row = open(again).read().splitlines()[5].split("\t")  # line 6 = the first record
    assert row[7] == "DP=9;LS_SCORE=3.5"
    assert open(again).read().count("##INFO=<ID=LS_SCORE") == 1
    assert _leftovers(tmp_path) == []


def test_writers_are_atomic(tmp_path, lam, genome):
    text, _ = _snv_vcf(lam, 5)
    src = tmp_path / "in.vcf"
    src.write_text(text)
    out = tmp_path / "out.vcf"
    out.write_text("previous result\n")
    with pytest.raises(ValueError, match="not finite"):
        F.write_scored_vcf(src, out, {4: 1.0, 8: float("nan")})
    with pytest.raises(ValueError, match=r"line\(s\) \[99\]"):
        F.write_scored_vcf(src, out, {99: 1.0})
    assert out.read_text() == "previous result\n" and _leftovers(tmp_path) == []
    tsv = tmp_path / "s.tsv"
    F.write_tsv(tsv, F.VARIANT_TSV_COLUMNS, [
        {"chrom": "lambda", "pos": 3, "id": ".", "ref": "G", "alt": "A", "kind": "snv", "score": 0.1234567},
        ("lambda", 9, ".", "AC", "A", "indel", None, "indel\tskipped"),
    ])
    assert tsv.read_text().splitlines() == ["chrom\tpos\tid\tref\talt\tkind\tscore\treason",
                                            "lambda\t3\t.\tG\tA\tsnv\t0.123457\t",
                                            "lambda\t9\t.\tAC\tA\tindel\t\tindel skipped"]
    with pytest.raises(ValueError, match="not finite"):
        F.write_tsv(tsv, ["a"], [[1.0], [float("inf")]])
    assert tsv.read_text().startswith("chrom\tpos") and _leftovers(tmp_path) == []
    with pytest.raises(UserError, match="cannot write"):
        F.write_tsv(tmp_path / "no" / "x.tsv", ["a"], [])
