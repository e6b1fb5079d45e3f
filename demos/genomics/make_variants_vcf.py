"""Write ``demos/genomics/mtb_snvs.vcf``: 1,200 seeded random SNVs on M. tuberculosis H37Rv (NC_000962.3).

The positions are drawn uniformly (seed 0) over the genome, skipping ``N``; each ALT is one of
the three other bases. Twelve more records show what is skipped or scored per ALT: four
deletions, four insertions and four multi-allelic SNVs (``REGION=.``). INFO says where the SNV falls in the GenBank annotation, so scores can
be compared by class (``longstream genomics score-variants`` keeps INFO as it is):

- ``REGION=CDS`` or ``REGION=intergenic``;
- for a CDS base: ``EFFECT=synonymous | missense | nonsense | stop_lost | start`` (translation
  table 11, the codon read on the gene's strand; ``start`` = a change in the start codon) and
  ``GENE=<locus_tag>``.

The genome itself is not copied into the repository (4.4 Mbp): score the VCF against the
shared data file::

    python demos/genomics/make_variants_vcf.py          # (re)writes the VCF, deterministic
    longstream genomics score-variants --vcf demos/genomics/mtb_snvs.vcf \\
        --fasta $LONGSTREAM_DATA/genomics/mtb/NC_000962.3.fa.gz --out scored.vcf
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

N_SNVS = 1200
SEED = 0
OUT = Path(__file__).resolve().parent / "mtb_snvs.vcf"
_COMP = str.maketrans("ACGT", "TGCA")
_BASES = "TCAG"
_AA = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"  # NCBI table 11 (= 1 for amino acids)
_CODON = {a + b + c: _AA[16 * i + 4 * j + k] for i, a in enumerate(_BASES) for j, b in enumerate(_BASES)
          for k, c in enumerate(_BASES)}


def _effect(seq: str, cds, pos: int, alt: str) -> tuple[str, str]:
    """``(effect, locus_tag)`` of ALT at ``pos`` (0-based) inside a CDS (one without joins)."""
    if cds.strand > 0:
        off = pos - cds.start
        codon_start = cds.start + off // 3 * 3
        codon = seq[codon_start : codon_start + 3]
        new = codon[: off % 3] + alt + codon[off % 3 + 1 :]
    else:
        off = cds.end - 1 - pos
        codon_end = cds.end - off // 3 * 3
        codon = seq[codon_end - 3 : codon_end].translate(_COMP)[::-1]
        i = off % 3
        new = codon[:i] + alt.translate(_COMP) + codon[i + 1 :]
    if off < 3:
        return "start", cds.locus_tag
    a, b = _CODON.get(codon, "X"), _CODON.get(new, "X")
    if a == b:
        return "synonymous", cds.locus_tag
    if b == "*":
        return "nonsense", cds.locus_tag
    if a == "*":
        return "stop_lost", cds.locus_tag
    return "missense", cds.locus_tag


def main(argv: list[str] | None = None) -> int:
    from longstream.pipelines.genomics.formats import read_genbank

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = Path(os.environ.get("LONGSTREAM_DATA", "../shared/data")) / "genomics" / "mtb"
    ap.add_argument("--genbank", default=str(root / "NC_000962.3.gb"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("-n", type=int, default=N_SNVS)
    args = ap.parse_args(argv)
    rec = read_genbank(args.genbank)  # sequence from the FASTA beside it
    seq = rec.sequence
    owner = np.full(len(seq), -1, dtype=np.int64)  # a CDS covering each base (the first one; no joins)
    simple = [c for c in rec.cds if len(c.parts) <= 1 and not c.pseudo and (c.end - c.start) % 3 == 0]
    for i, c in enumerate(simple):
        span = owner[c.start : c.end]
        span[span < 0] = i
    rng = np.random.default_rng(SEED)
    pos = np.sort(rng.choice(np.flatnonzero(np.frombuffer(seq.encode(), np.uint8) != ord("N")), args.n,
                             replace=False))
    lines = ["##fileformat=VCFv4.2", "##source=longstream demos/genomics/make_variants_vcf.py (seed 0)",
             f"##reference=NC_000962.3 (M. tuberculosis H37Rv, {len(seq)} bp)",
             f"##contig=<ID={rec.name},length={len(seq)}>",
             '##INFO=<ID=REGION,Number=1,Type=String,Description="CDS or intergenic (GenBank annotation)">',
             '##INFO=<ID=EFFECT,Number=1,Type=String,Description="synonymous, missense, nonsense, stop_lost or '
             'start (codon table 11)">',
             '##INFO=<ID=GENE,Number=1,Type=String,Description="locus_tag of the CDS">',
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    records = []
    for k, p in enumerate(pos.tolist()):
        ref = seq[p]
        alt = "ACGT".replace(ref, "")[int(rng.integers(3))]
        if owner[p] >= 0:
            eff, tag = _effect(seq, simple[owner[p]], p, alt)
            info = f"REGION=CDS;EFFECT={eff};GENE={tag}"
        else:
            info = "REGION=intergenic"
        records.append((p, f"{rec.name}\t{p + 1}\tsnv{k + 1}\t{ref}\t{alt}\t.\tPASS\t{info}"))
    # a few records the scorer skips or scores per ALT: deletions, insertions, multi-allelic SNVs
    taken = set(pos.tolist())
    extra = [int(p) for p in rng.integers(1, len(seq) - 2, 40) if int(p) not in taken and int(p) + 1 not in taken]
    for k, p in enumerate(extra[:12]):
        ref, kind = seq[p], ("del", "ins", "multi")[k % 3]
        if kind == "del":
            r, a = seq[p : p + 2], ref
        elif kind == "ins":
            r, a = ref, ref + "ACGT"[int(rng.integers(4))]
        else:
            r, a = ref, ",".join("ACGT".replace(ref, "")[:2])
        records.append((p, f"{rec.name}\t{p + 1}\t{kind}{k // 3 + 1}\t{r}\t{a}\t.\tPASS\tREGION=."))
    lines += [line for _, line in sorted(records)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}: {args.n} SNVs and {len(records) - args.n} other records on {rec.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
