"""GenBank (Biopython) and BED (a strict small reader) for the genomics pipeline.

See :mod:`longstream.pipelines.genomics.formats` for the conventions (0-based half-open
coordinates, strands, the errors).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longstream.pipelines.common import UserError

from .fasta import BASES, FastaFile, read_text, valid_bases

__all__ = ["Feature", "GenBankRecord", "read_genbank", "Interval", "read_bed"]


# ---------------------------------------------------------------- GenBank


@dataclass(frozen=True)
class Feature:
    """One annotated feature, 0-based half-open ``[start, end)`` on the forward strand.

    ``parts`` holds the pieces of a joined location (``join(...)``; one piece otherwise);
    ``start`` / ``end`` span them. ``partial`` marks fuzzy ends (``<1..>200``).
    """

    start: int
    end: int
    strand: int  # +1 / -1
    locus_tag: str = ""
    product: str = ""
    gene: str = ""
    parts: tuple[tuple[int, int], ...] = ()
    pseudo: bool = False
    partial: bool = False

    @property
    def length(self) -> int:
        return sum(e - s for s, e in self.parts) if self.parts else self.end - self.start


@dataclass(frozen=True)
class GenBankRecord:
    """One GenBank record: its name (``VERSION`` accession), sequence (upper case) and CDS."""

    name: str
    sequence: str
    cds: list[Feature]
    description: str = ""

    def __len__(self) -> int:
        return len(self.sequence)


def _feature(f, path: Path, name: str) -> Feature:
    from Bio.SeqFeature import AfterPosition, BeforePosition

    loc = f.location
    strand = loc.strand
    if strand not in (1, -1):
        raise UserError(f"GenBank {path}: record {name}: CDS {loc} has no single strand (mixed or unknown); "
                        "annotate each CDS on one strand")
    parts = tuple((int(p.start), int(p.end)) for p in loc.parts)
    q = f.qualifiers
    partial = any(isinstance(p.start, (BeforePosition, AfterPosition)) or
                  isinstance(p.end, (BeforePosition, AfterPosition)) for p in loc.parts)
    return Feature(start=min(s for s, _ in parts), end=max(e for _, e in parts), strand=int(strand),
                   locus_tag=q.get("locus_tag", [""])[0], product=q.get("product", [""])[0],
                   gene=q.get("gene", [""])[0], parts=parts, pseudo="pseudo" in q, partial=partial)


def _sibling_fasta(p: Path) -> Path | None:
    stem = p.name.removesuffix(".gz").rsplit(".", 1)[0]
    for suf in (".fa.gz", ".fasta.gz", ".fna.gz", ".fa", ".fasta", ".fna"):
        if (p.parent / (stem + suf)).is_file():
            return p.parent / (stem + suf)
    return None


def read_genbank(path: str | os.PathLike, name: str | None = None,
                 fasta: str | os.PathLike | FastaFile | None = None) -> GenBankRecord:
    """The record ``name`` (default: the first record) of a GenBank (.gb, .gbk, .gz) file.

    CDS features become :class:`Feature` s sorted by start. An annotation-only file (an
    empty ``ORIGIN`` section, as NCBI's "GenBank" download without sequence, and our copy of
    NC_000962.3) takes its sequence from ``fasta``, by default the FASTA beside it with the
    same stem (``NC_000962.3.gb`` -> ``NC_000962.3.fa.gz``); the record name and the LOCUS
    length must match. UserError for a file that is not GenBank, a missing sequence or a
    bad base.
    """
    from Bio import SeqIO
    from Bio.Seq import UndefinedSequenceError

    p = Path(path)
    hint = "a GenBank flat file starts with a LOCUS line and holds FEATURES and ORIGIN sections"
    text = read_text(p, what="GenBank", hint=hint)
    if not text.lstrip().startswith("LOCUS"):
        raise UserError(f"GenBank {p}, line 1: not a GenBank file (no LOCUS line first); {hint}")
    try:
        records = list(SeqIO.parse(io.StringIO(text), "genbank"))
    except (ValueError, KeyError, IndexError, AssertionError) as e:
        raise UserError(f"GenBank {p}: cannot be parsed ({e}); {hint}") from None
    if not records:
        raise UserError(f"GenBank {p}: no record found; {hint}")
    if name is None:
        rec = records[0]
    else:
        rec = next((r for r in records if name in (r.id, r.name)), None)
        if rec is None:
            raise UserError(f"GenBank {p}: no record named {name!r} (records: {', '.join(r.id for r in records)})")
    try:
        seq = str(rec.seq).upper()
    except UndefinedSequenceError:
        seq = _sequence_from_fasta(p, rec.id, len(rec.seq), fasta)
    if not seq or not valid_bases(seq):
        raise UserError(f"GenBank {p}: record {rec.id} holds no sequence or a character outside {BASES}")
    cds = sorted((_feature(f, p, rec.id) for f in rec.features if f.type == "CDS"), key=lambda g: (g.start, g.end))
    return GenBankRecord(name=rec.id, sequence=seq, cds=cds, description=rec.description)


def _sequence_from_fasta(p: Path, rec_id: str, length: int, fasta) -> str:
    src = fasta if fasta is not None else _sibling_fasta(p)
    if src is None:
        raise UserError(f"GenBank {p}: record {rec_id} has no sequence (empty ORIGIN section) and no FASTA "
                        f"{p.name.removesuffix('.gz').rsplit('.', 1)[0]}.fa[.gz] beside it; pass the genome "
                        "FASTA, or use the GenBank file with its sequence ('GenBank (full)' at NCBI)")
    fa = src if isinstance(src, FastaFile) else FastaFile(src)
    try:
        base = rec_id.split(".")[0]
        name = rec_id if rec_id in fa.names else next((n for n in fa.names if n.split(".")[0] == base), None)
        if name is None:
            raise UserError(f"GenBank {p}: record {rec_id} has no sequence and FASTA {fa.path} has no record "
                            f"named {rec_id} (records: {', '.join(fa.names[:5])})")
        if fa.length(name) != length:
            raise UserError(f"GenBank {p}: record {rec_id} is {length:,} bp (LOCUS) but FASTA {fa.path} "
                            f"record {name} is {fa.length(name):,} bp; pass the matching genome FASTA")
        return fa.fetch(name).upper()
    finally:
        if fa is not src:
            fa.close()


# ---------------------------------------------------------------- BED


@dataclass(frozen=True)
class Interval:
    """One BED line: ``chrom``, 0-based half-open ``[start, end)``, optional name/score/strand."""

    chrom: str
    start: int
    end: int
    name: str = ""
    score: float | None = None
    strand: str = "."
    line: int = 0


def read_bed(path: str | os.PathLike, fasta: FastaFile | None = None) -> list[Interval]:
    """The intervals of a BED file (tab-separated; columns 4-6 optional, the rest ignored).

    Skips blank, ``#``, ``track`` and ``browser`` lines. UserError with the line for fewer
    than 3 columns, non-integer or negative coordinates, ``end < start``, a bad score or
    strand; with ``fasta``, also for an unknown chromosome or an interval past its end.
    """
    p = Path(path)
    hint = "BED lines are 'chrom<TAB>start<TAB>end[<TAB>name<TAB>score<TAB>strand]', 0-based half-open"
    text = read_text(p, what="BED", hint=hint)
    out: list[Interval] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.rstrip("\r")
        if not s.strip() or s.startswith(("#", "track", "browser")):
            continue
        cols = s.split("\t")
        if len(cols) < 3:
            cols = s.split()  # space-separated BED is common; names with spaces need tabs
        where = f"BED {p}, line {n}"
        if len(cols) < 3:
            raise UserError(f"{where}: {len(cols)} column(s), need at least 3; {hint}")
        try:
            start, end = int(cols[1]), int(cols[2])
        except ValueError:
            raise UserError(f"{where}: start {cols[1]!r} / end {cols[2]!r} are not integers; {hint}") from None
        if start < 0 or end < start:
            raise UserError(f"{where}: interval [{start}, {end}) is invalid (need 0 <= start <= end); {hint}")
        score = None
        if len(cols) > 4 and cols[4] not in (".", ""):
            try:
                score = float(cols[4])
            except ValueError:
                raise UserError(f"{where}: score {cols[4]!r} is not a number; {hint}") from None
            if not np.isfinite(score):
                raise UserError(f"{where}: score {cols[4]!r} is not finite")
        strand = cols[5] if len(cols) > 5 else "."
        if strand not in ("+", "-", "."):
            raise UserError(f"{where}: strand {strand!r} must be '+', '-' or '.'")
        chrom = cols[0]
        if fasta is not None:
            if chrom not in fasta.names:
                raise UserError(f"{where}: chromosome {chrom!r} is not in FASTA {fasta.path} "
                                f"(records: {', '.join(fasta.names[:5])})")
            if end > fasta.length(chrom):
                raise UserError(f"{where}: end {end:,} is past the end of {chrom!r} (length {fasta.length(chrom):,})")
        out.append(Interval(chrom, start, end, cols[3] if len(cols) > 3 else "", score, strand, n))
    return out
