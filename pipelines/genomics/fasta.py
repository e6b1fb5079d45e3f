"""FASTA with random access (pyfaidx / Biopython), and the compressed-text helpers of the genomics readers.

See :mod:`longstream.pipelines.genomics.formats` for the rules (allowed bases, soft masking,
how each compression is read, the errors).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from longstream.pipelines.common import UserError
from longstream.pipelines.common.inputs import decode_text

__all__ = ["BASES", "FastaFile", "read_fasta", "read_text", "iter_lines", "compression", "valid_bases"]

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
    return decode_text(raw, p, what, tail)


def iter_lines(path: str | os.PathLike, *, what: str = "file", hint: str = "") -> Iterator[tuple[int, str]]:
    """Stream ``(line number, line without its newline)`` from a plain or gzip / bgzip file.

    Bounded memory. The same errors as :func:`read_text` (empty, binary, not UTF-8, truncated
    or corrupt gzip), raised when the stream reaches the bad part, with the line number.
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    _check_path(p, what)
    kind = compression(p)
    n = 0
    try:
        with (open(p, "rb") if kind == "plain" else gzip.open(p, "rb")) as f:
            if b"\0" in f.peek(1 << 16)[: 1 << 16]:  # before a binary file's endless "line" is read
                raise UserError(f"{what} {p} is a binary file, not text{tail}")
            for n, raw in enumerate(f, 1):
                if b"\0" in raw:
                    raise UserError(f"{what} {p}, line {n}: a binary file, not text (NUL byte){tail}")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{what} {p}, line {n}: not UTF-8 text (undecodable byte); save it as "
                                    f"UTF-8{tail}") from None
                line = line.rstrip("\r\n")
                yield n, (line.removeprefix("\ufeff") if n == 1 else line)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        kind_msg = "truncated" if isinstance(e, EOFError) else f"corrupt ({e})"
        raise UserError(f"{what} {p}: the gzip stream is {kind_msg} after line {n}; download or copy the "
                        f"file again{tail}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if n == 0:
        raise UserError(f"{what} {p} is empty after decompression{tail}")


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


def valid_bases(seq: str) -> bool:
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
        if not name or name in out or not seq or not valid_bases(seq):
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
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:  # no writable cache either: the system's temporary folder
        import tempfile

        d = Path(tempfile.gettempdir())
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
        except ValueError:  # duplicate names, undecodable header, ...: the exact line comes from a full scan
            raise _fasta_error(self.path) from None
        except (EOFError, zlib.error, OSError) as e:
            raise _fasta_error(self.path, e) from None
        self._lengths = {k: len(self._faidx[k]) for k in self._faidx.keys()}
        if not self._lengths or any(n == 0 for n in self._lengths.values()):
            raise _fasta_error(self.path)
        return True

    def _sniff(self) -> None:
        """Refuse binary / non-FASTA files before pyfaidx indexes them (first 64 KiB)."""
        opener = gzip.open if self.kind == "bgzip" else open
        try:
            with opener(self.path, "rb") as f:
                head = f.read(1 << 16)
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
            raise _fasta_error(self.path, e) from None
        if b"\0" in head:
            raise UserError(f"FASTA {self.path} is a binary file, not text; {_FASTA_HINT}")
        if not head.strip():
            raise UserError(f"FASTA {self.path} is empty (only blank lines); {_FASTA_HINT}")
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
        if not valid_bases(seq):
            raise _fasta_error(self.path)
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


def _fasta_error(path: Path, cause: BaseException | None = None) -> UserError:
    """The UserError for a FASTA file found broken after indexing: rescan it for the line."""
    if isinstance(cause, OSError) and not isinstance(cause, gzip.BadGzipFile):
        return UserError(f"cannot read FASTA {path}: {cause.strerror or cause}")
    try:
        text = read_text(path, what="FASTA", hint=_FASTA_HINT)
    except UserError as e:
        return e
    return _first_bad_line(text, path)
