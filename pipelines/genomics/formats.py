"""Genome file formats: FASTA (random access), GenBank, BED; VCF lives in :mod:`.variants`.

Readers are well-kept libraries, wrapped so that every problem a user can cause is one
:class:`~longstream.pipelines.common.UserError` naming the file (and the line where it applies):

- **FASTA** (``.fa``, ``.fasta``, ``.fna``, optionally gzip / bgzip compressed): parsed by
  Biopython (``SimpleFastaParser``) or indexed by pyfaidx. :class:`FastaFile` gives random
  access: uncompressed and **bgzip** files are indexed by pyfaidx (``.fai`` beside the file,
  or under ``<cache>/fai/`` when that folder is read-only) and read piece by piece; a
  **plain gzip** file cannot be seeked, so it is decompressed once and held in memory
  (about 1 byte per base: a 5 Mbp bacterial genome costs 5 MB). A file whose lines have
  uneven widths (legal FASTA that pyfaidx cannot index) is read into memory too.
  Record names are the first word of the header line (as samtools and pyfaidx do).
- **Bases**: upper and lower case ``A C G T N``, ``U`` and the IUPAC codes ``R Y K M S W B D
  H V``. Lower case marks soft-masked repeats: readers keep the case
  (:func:`read_fasta` / :meth:`FastaFile.fetch` return the text as written) and the tokenizer
  (:mod:`longstream.encoders.dna`) gives it the upper-case id; ``N`` is an unknown base.
  Any other character (``-``, ``*``, digits, tabs) is an error naming its line.
- **GenBank**: Biopython; :func:`read_genbank` returns the sequence and the CDS features as
  0-based half-open :class:`Feature` s with strand ``+1`` / ``-1``.
- **BED**: a strict small reader (:func:`read_bed`): 0-based half-open, ``track`` /
  ``browser`` / ``#`` header lines skipped, every malformed line an error with its number.

Errors raised here: not FASTA, binary file, empty file, bad character, truncated or corrupt
gzip, duplicate record name, a record without sequence, unknown record name, an interval
outside its record.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longstream.pipelines.common import UserError

__all__ = [
    "BASES",
    "FastaFile",
    "read_fasta",
    "Feature",
    "GenBankRecord",
    "read_genbank",
    "Interval",
    "read_bed",
    "read_text",
    "compression",
]

#: Characters allowed in a sequence (either case): bases, U, IUPAC ambiguity codes.
BASES = "ACGTNURYKMSWBDHV"
_VALID = np.zeros(256, dtype=bool)
_VALID[[ord(c) for c in BASES + BASES.lower()]] = True
_FASTA_HINT = "a FASTA file holds '>name' header lines, each followed by lines of bases"


# ---------------------------------------------------------------- compressed text


def compression(path: str | os.PathLike) -> str:
    """``"plain"``, ``"gzip"`` or ``"bgzip"`` (a gzip whose extra field holds ``BC``)."""
    with open(path, "rb") as f:
        head = f.read(18)
    if head[:2] != b"\x1f\x8b":
        return "plain"
    if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzip"
    return "gzip"


def _check_path(p: Path, what: str) -> None:
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory; pass a file")
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist")
    if p.stat().st_size == 0:
        raise UserError(f"{what} {p} is empty")


def read_text(path: str | os.PathLike, *, what: str = "file", hint: str = "") -> str:
    """The whole text of a plain or gzip / bgzip compressed file, decoded as UTF-8.

    UserError (naming the file) for a missing or empty file, a truncated or corrupt gzip
    stream (with the last complete line), a binary file (NUL bytes) and non-UTF-8 text.
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    _check_path(p, what)
    chunks: list[bytes] = []
    try:
        if compression(p) == "plain":
            chunks.append(p.read_bytes())
        else:
            with gzip.open(p, "rb") as f:
                while block := f.read(1 << 22):
                    chunks.append(block)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        done = b"".join(chunks)
        lines = done.count(b"\n") + 1
        kind = "truncated" if isinstance(e, EOFError) else f"corrupt ({e})"
        raise UserError(f"{what} {p}: the gzip stream is {kind} after line {lines} "
                        f"({len(done):,} bytes decompressed); download or copy the file again{tail}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise UserError(f"{what} {p} is empty{' after decompression' if compression(p) != 'plain' else ''}{tail}")
    if b"\0" in raw[: 1 << 20]:
        raise UserError(f"{what} {p} is a binary file, not text{tail}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{what} {p}, line {line}: not UTF-8 text (undecodable byte); save it as UTF-8{tail}") from None


# ---------------------------------------------------------------- FASTA


def _first_bad_line(text: str, path: Path) -> UserError:
    """The error for the first bad line of a FASTA text (the slow path, run only on failure)."""
    seen: dict[str, int] = {}
    header_line, has_seq = 0, True
    for n, line in enumerate(text.splitlines(), 1):
        s = line.rstrip("\r\n")
        if s.startswith(">"):
            if not has_seq:
                return UserError(f"FASTA {path}, line {header_line}: record has no sequence; remove the "
                                 "empty record or add its bases")
            name = s[1:].split(None, 1)[0] if s[1:].strip() else ""
            if not name:
                return UserError(f"FASTA {path}, line {n}: header line without a name; write '>name ...'")
            if name in seen:
                return UserError(f"FASTA {path}, line {n}: duplicate record name {name!r} (first at line "
                                 f"{seen[name]}); give each record a unique name")
            seen[name], header_line, has_seq = n, n, False
            continue
        bases = s.replace(" ", "")
        if not bases:
            continue
        if not seen:
            return UserError(f"FASTA {path}, line {n}: text before the first '>' header; {_FASTA_HINT}")
        for col, c in enumerate(s, 1):
            if c != " " and (not c.isascii() or not _VALID[ord(c)]):
                return UserError(f"FASTA {path}, line {n}, column {col}: invalid character {c!r}; allowed are "
                                 f"A C G T N U and IUPAC codes {BASES[6:]} (either case)")
        has_seq = True
    if not has_seq:
        return UserError(f"FASTA {path}, line {header_line}: record has no sequence; remove the empty record "
                         "or add its bases")
    if not seen:
        return UserError(f"FASTA {path}: no '>' header line; {_FASTA_HINT}")
    return UserError(f"FASTA {path}: could not be parsed; {_FASTA_HINT}")


def _valid_bases(seq: str) -> bool:
    return seq.isascii() and bool(_VALID[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)].all())


def _parse_fasta_text(text: str, path: Path) -> dict[str, str]:
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if not first.startswith(">"):
        raise UserError(f"FASTA {path}, line 1: not a FASTA file (the first line does not start with '>'); "
                        f"{_FASTA_HINT}")
    out: dict[str, str] = {}
    for title, seq in SimpleFastaParser(io.StringIO(text)):
        name = title.split(None, 1)[0] if title.strip() else ""
        if not name or name in out or not seq or not _valid_bases(seq):
            raise _first_bad_line(text, path)
        out[name] = seq
    if not out:
        raise _first_bad_line(text, path)
    return out


def read_fasta(path: str | os.PathLike) -> dict[str, str]:
    """All records of a FASTA / FASTA.gz file: ``{name: sequence}`` in file order, case kept.

    The whole file is read and checked (every character, every name); see the module
    docstring for the allowed characters and the errors.
    """
    p = Path(path)
    return _parse_fasta_text(read_text(p, what="FASTA", hint=_FASTA_HINT), p)


def _index_paths(p: Path, kind: str) -> tuple[str, str | None]:
    """Where pyfaidx keeps the index (and bgzip's ``.gzi``): beside the file if that folder is
    writable, else under ``<cache>/fai/`` keyed by the file's absolute path."""
    if os.access(p.parent, os.W_OK):
        return str(p) + ".fai", (str(p) + ".gzi" if kind == "bgzip" else None)
    from longstream.pipelines.hub import cache_root

    d = cache_root() / "fai"
    d.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16]
    return str(d / f"{key}-{p.name}.fai"), (str(d / f"{key}-{p.name}.gzi") if kind == "bgzip" else None)


class FastaFile:
    """Random access to the records of a FASTA file: ``names``, ``length(name)``, ``fetch``.

    ``with FastaFile("genome.fa.gz") as fa: fa.fetch("chr1", 100, 200)`` returns bases
    100..199 (0-based, half-open) as written in the file (soft-masked bases stay lower case).
    Uncompressed and bgzip files go through a pyfaidx index and are checked piece by piece
    as they are fetched (a bad character is reported with its line when a fetch meets it);
    plain gzip files and unevenly wrapped files are read and checked whole, into memory.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        _check_path(self.path, "FASTA")
        self.kind = compression(self.path)
        self._faidx = None
        self._seqs: dict[str, str] | None = None
        self._lengths: dict[str, int] = {}
        if self.kind == "gzip" or not self._open_indexed():
            self._seqs = read_fasta(self.path)
            self._lengths = {k: len(v) for k, v in self._seqs.items()}
        self.in_memory = self._seqs is not None

    def _open_indexed(self) -> bool:
        import pyfaidx

        self._sniff()
        fai, gzi = _index_paths(self.path, self.kind)
        try:
            self._faidx = pyfaidx.Fasta(str(self.path), indexname=fai, gzi_indexname=gzi, as_raw=True,
                                        sequence_always_upper=False, strict_bounds=True, rebuild=True)
        except pyfaidx.FastaIndexingError:  # uneven line widths: legal FASTA, not indexable
            return False
        except ValueError as e:  # duplicate names, bad header: the exact line comes from the full scan
            if "uplicate" in str(e):
                raise read_fasta_error(self.path) from None
            raise UserError(f"FASTA {self.path}: cannot be indexed ({e}); {_FASTA_HINT}") from None
        except (EOFError, zlib.error, OSError) as e:
            raise read_fasta_error(self.path, e) from None
        self._lengths = {k: len(self._faidx[k]) for k in self._faidx.keys()}
        if not self._lengths or any(n == 0 for n in self._lengths.values()):
            raise read_fasta_error(self.path)
        return True

    def _sniff(self) -> None:
        """Refuse binary / non-FASTA files before pyfaidx indexes them (first 64 KiB)."""
        opener = gzip.open if self.kind == "bgzip" else open
        try:
            with opener(self.path, "rb") as f:
                head = f.read(1 << 16)
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
            raise read_fasta_error(self.path, e) from None
        if b"\0" in head:
            raise UserError(f"FASTA {self.path} is a binary file, not text; {_FASTA_HINT}")
        if not head.lstrip().startswith(b">"):
            raise UserError(f"FASTA {self.path}, line 1: not a FASTA file (the first line does not start "
                            f"with '>'); {_FASTA_HINT}")

    @property
    def names(self) -> list[str]:
        return list(self._lengths)

    def length(self, name: str) -> int:
        self._check_name(name)
        return self._lengths[name]

    def _check_name(self, name: str) -> None:
        if name not in self._lengths:
            known = ", ".join(list(self._lengths)[:5]) + (", ..." if len(self._lengths) > 5 else "")
            raise UserError(f"FASTA {self.path}: no record named {name!r} (records: {known})")

    def fetch(self, name: str, start: int = 0, end: int | None = None) -> str:
        """Bases ``[start, end)`` of record ``name`` (0-based, half-open; ``end=None``: to the end)."""
        n = self.length(name)
        end = n if end is None else end
        if not 0 <= start <= end <= n:
            raise UserError(f"FASTA {self.path}: interval [{start}, {end}) is outside record {name!r} "
                            f"(length {n:,}); coordinates are 0-based, half-open")
        if self._seqs is not None:
            return self._seqs[name][start:end]
        seq = str(self._faidx[name][start:end]) if end > start else ""
        if not _valid_bases(seq):
            raise read_fasta_error(self.path)
        return seq

    def sequence(self, name: str) -> str:
        return self.fetch(name)

    def items(self) -> Iterator[tuple[str, str]]:
        for name in self.names:
            yield name, self.fetch(name)

    def close(self) -> None:
        if self._faidx is not None:
            self._faidx.close()
            self._faidx = None

    def __enter__(self) -> FastaFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FastaFile({str(self.path)!r}, {len(self._lengths)} records, {self.kind})"


def read_fasta_error(path: Path, cause: BaseException | None = None) -> UserError:
    """The UserError for a FASTA file found broken after indexing: rescan it for the line."""
    if isinstance(cause, OSError) and not isinstance(cause, gzip.BadGzipFile):
        return UserError(f"cannot read FASTA {path}: {cause.strerror or cause}")
    try:
        text = read_text(path, what="FASTA", hint=_FASTA_HINT)
    except UserError as e:
        return e
    return _first_bad_line(text, path)


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
    if not seq or not _valid_bases(seq):
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


def atomic_temp(path: Path) -> Path:
    """A fresh temporary path beside ``path`` (same folder, so ``os.replace`` is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)
