"""VCF in (cyvcf2, checked line by line, REF checked against the genome) and scores out (VCF, TSV).

Reading: records are parsed by cyvcf2 (htslib), the field's well-kept reader. htslib trusts its
input — a non-numeric POS crashes the process (segmentation fault, cyvcf2 0.35) and undeclared
contigs only print a warning — so each line is first checked here, in lock step with cyvcf2
(one line checked, then cyvcf2 parses that record): tab-separated, at least 8 columns, POS a
positive integer, REF of ``A C G T N``, ALT bases / ``*`` / ``<SYMBOLIC>`` / breakends / ``.``.
Every problem is one :class:`~longstream.pipelines.common.UserError` naming the file and line:
the checks above, a header without ``##fileformat=VCF`` or ``#CHROM``, truncated or corrupt
gzip, binary or empty files, a contig missing from the FASTA (or from the ``##contig`` lines
when no FASTA is given), a record past the contig's end, and a REF that differs from the FASTA
(``N`` in REF matches any base; comparison ignores case). htslib's own stderr messages are
switched off (this module reports the problems). Memory is bounded: records stream.

Indels, multi-allelic and symbolic records are read and reported as such by
:attr:`Variant.kind` (``snv``, ``mnv``, ``indel``, ``multi-allelic``, ``symbolic``,
``no-alt``); which kinds are scored is the caller's decision (:data:`KIND_REASONS` words the
skip reasons).

Writing: :func:`write_scored_vcf` copies the input **as text**, byte for byte, adding
``##INFO=<ID=LS_SCORE,Number=A,Type=Float,...>`` and ``##INFO=<ID=LS_SKIP,Number=1,Type=String,
...>`` to the header and ``LS_SCORE=<score>`` (one per ALT) or ``LS_SKIP=<reason>`` to INFO.
A text copy rather than cyvcf2's Writer because htslib refuses to write records whose INFO
keys or contigs the header does not declare, which is common in users' VCFs. ``.gz`` outputs
are BGZF (Biopython), so ``tabix`` can index them. :func:`write_tsv` writes a table. Both are
atomic: a temporary file beside the output, renamed over it when complete.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from longstream.pipelines.common import UserError

from .fasta import FastaFile, iter_lines

__all__ = ["Variant", "KIND_REASONS", "VARIANT_TSV_COLUMNS", "read_vcf", "count_records", "write_scored_vcf",
           "write_tsv"]

VCF_HINT = ("a VCF file starts with '##fileformat=VCFv4.x', then a '#CHROM POS ID REF ALT QUAL FILTER INFO' "
            "line, then one tab-separated record per line")
_HEADER_COLS = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO"]
_REF = re.compile(r"[ACGTNacgtn]+")
_ALT = re.compile(r"[ACGTNacgtn]+|\*|<[^<>]+>|\.?[ACGTNacgtn]+\.?|.*[\[\]].*")
_CONTIG = re.compile(r"##contig=<.*?ID=([^,>]+)(?:.*?length=(\d+))?")
#: Why a record of each kind is not scored by a single-nucleotide model.
KIND_REASONS = {
    "mnv": "multi-base substitution (only single-base substitutions are scored)",
    "indel": "indel (only single-base substitutions are scored)",
    "multi-allelic": "multi-allelic site (only single-ALT records are scored)",
    "symbolic": "symbolic or breakend ALT",
    "no-alt": "no ALT allele",
}
VARIANT_TSV_COLUMNS = ("chrom", "pos", "id", "ref", "alt", "kind", "score", "reason")


@dataclass(frozen=True)
class Variant:
    """One VCF record: ``pos`` is 1-based (as in the file); ``line`` is its line in the file."""

    chrom: str
    pos: int
    id: str
    ref: str
    alts: tuple[str, ...]
    line: int

    @property
    def kind(self) -> str:
        if not self.alts:
            return "no-alt"
        if len(self.alts) > 1:
            return "multi-allelic"
        a = self.alts[0]
        if not a.isalpha() or not _REF.fullmatch(a):
            return "symbolic"
        if len(a) == len(self.ref):
            return "snv" if len(a) == 1 else "mnv"
        return "indel"

    @property
    def start(self) -> int:
        """0-based start of REF on the contig."""
        return self.pos - 1


_HTS_QUIET = False


def _quiet_htslib() -> None:
    """Switch htslib's stderr logging off (once): this module reports every problem itself."""
    global _HTS_QUIET
    if _HTS_QUIET:
        return
    import ctypes

    import cyvcf2

    try:
        ctypes.CDLL(cyvcf2.cyvcf2.__file__).hts_set_log_level(0)
    except (OSError, AttributeError):  # pragma: no cover - a cyvcf2 build without the symbol
        pass
    _HTS_QUIET = True


def _header(lines: Iterator[tuple[int, str]], p: Path) -> tuple[int, dict[str, int | None]]:
    """Read the header lines; ``(#CHROM line number, {contig: length or None})``."""
    contigs: dict[str, int | None] = {}
    for n, line in lines:
        if n == 1 and not line.startswith("##fileformat=VCF"):
            raise UserError(f"VCF {p}, line 1: not a VCF file (no '##fileformat=VCF...' line); {VCF_HINT}")
        if line.startswith("##"):
            m = _CONTIG.match(line)
            if m:
                contigs[m.group(1)] = int(m.group(2)) if m.group(2) else None
            continue
        if line.startswith("#CHROM"):
            if line.split("\t")[:8] != _HEADER_COLS:
                raise UserError(f"VCF {p}, line {n}: the column header must be tab-separated "
                                f"{' '.join(_HEADER_COLS)}; {VCF_HINT}")
            return n, contigs
        raise UserError(f"VCF {p}, line {n}: a record before the '#CHROM' header line; {VCF_HINT}")
    raise UserError(f"VCF {p}: no '#CHROM' header line; {VCF_HINT}")


def _check_line(cols: list[str], where: str) -> tuple[str, int, str, list[str]]:
    if len(cols) < 8:
        raise UserError(f"{where}: {len(cols)} tab-separated column(s), need at least 8 "
                        f"({' '.join(_HEADER_COLS)[1:]})")
    chrom, pos_s, _, ref, alt = cols[:5]
    if not chrom:
        raise UserError(f"{where}: empty CHROM")
    if not pos_s.isdigit() or int(pos_s) < 1:
        raise UserError(f"{where}: POS {pos_s!r} is not a positive integer (VCF positions are 1-based)")
    if not _REF.fullmatch(ref):
        raise UserError(f"{where}: REF {ref!r} must be bases A, C, G, T or N")
    alts = [] if alt == "." else alt.split(",")
    for a in alts:
        if not _ALT.fullmatch(a):
            raise UserError(f"{where}: ALT {a!r} is not bases, '*', a <SYMBOLIC> allele or a breakend")
    return chrom, int(pos_s), ref, alts


def _check_against(chrom: str, pos: int, ref: str, where: str, fasta: FastaFile | None,
                   contigs: dict[str, int | None]) -> None:
    if fasta is not None:
        if chrom not in fasta.names:
            shown = ", ".join(fasta.names[:5]) + (", ..." if len(fasta.names) > 5 else "")
            raise UserError(f"{where}: contig {chrom!r} is not in FASTA {fasta.path} (records: {shown}); use "
                            "the genome the VCF was called against, or rename the contigs to match")
        n = fasta.length(chrom)
    elif contigs:
        if chrom not in contigs:
            raise UserError(f"{where}: contig {chrom!r} is not declared in the header's ##contig lines "
                            f"({', '.join(list(contigs)[:5])})")
        n = contigs[chrom]
    else:
        return
    end = pos - 1 + len(ref)
    if n is not None and end > n:
        raise UserError(f"{where}: {chrom}:{pos} (REF {ref}) is past the end of {chrom!r} (length {n:,})")
    if fasta is not None:
        found = fasta.fetch(chrom, pos - 1, end).upper()
        if any(r != "N" and r != f for r, f in zip(ref.upper(), found)):
            raise UserError(f"{where}: REF {ref!r} at {chrom}:{pos} does not match the FASTA's {found!r} "
                            f"({fasta.path}); the VCF was made against another assembly")


def read_vcf(path: str | os.PathLike, fasta: str | os.PathLike | FastaFile | None = None) -> Iterator[Variant]:
    """Stream the records of a VCF / VCF.gz file as :class:`Variant` s (see the module docstring).

    ``fasta`` (a path or an open :class:`FastaFile`): check each contig and REF against it.
    """
    import cyvcf2

    p = Path(path)
    lines = iter_lines(p, what="VCF", hint=VCF_HINT)
    _, contigs = _header(lines, p)
    fa = FastaFile(fasta) if fasta is not None and not isinstance(fasta, FastaFile) else fasta
    _quiet_htslib()
    try:
        vcf = cyvcf2.VCF(str(p))
    except Exception as e:  # cyvcf2 raises OSError, or a bare Exception for a bad header
        for _ in lines:  # htslib reads ahead: a truncated gzip fails here; let the line reader name it
            pass
        raise UserError(f"VCF {p}: cyvcf2 cannot read the header ({e}); {VCF_HINT}") from None
    try:
        records = iter(vcf)
        for n, line in lines:
            where = f"VCF {p}, line {n}"
            if not line.strip():
                raise UserError(f"{where}: blank line inside the records; remove it")
            if line.startswith("#"):
                raise UserError(f"{where}: a header line after the '#CHROM' line; move it above")
            chrom, pos, ref, _ = _check_line(line.split("\t"), where)
            _check_against(chrom, pos, ref, where, fa, contigs)
            rec = next(records, None)
            if rec is None or rec.CHROM != chrom or rec.POS != pos:  # pragma: no cover - would be a bug
                raise RuntimeError(f"{where}: cyvcf2 and the line reader disagree ({rec!r})")
            yield Variant(rec.CHROM, int(rec.POS), rec.ID or ".", rec.REF, tuple(rec.ALT), n)
    finally:
        vcf.close()
        if fa is not None and fa is not fasta:
            fa.close()


def count_records(path: str | os.PathLike) -> int:
    """Number of record lines of a VCF (a progress bar's total), read in one streamed pass."""
    return sum(1 for _, line in iter_lines(path, what="VCF", hint=VCF_HINT) if line and not line.startswith("#"))


# ---------------------------------------------------------------- writers


class _BgzfText:
    """The ``write`` / context-manager subset of a text file, BGZF-compressed (Biopython)."""

    def __init__(self, path: str) -> None:
        from Bio import bgzf

        self._raw = bgzf.BgzfWriter(path, "wb")

    def write(self, text: str) -> None:
        self._raw.write(text.encode("utf-8"))

    def __enter__(self) -> _BgzfText:
        return self

    def __exit__(self, *exc) -> None:
        self._raw.close()


@contextmanager
def _atomic_text(out: str | os.PathLike) -> Iterator[IO[str] | _BgzfText]:
    """A text stream to a temporary file beside ``out``, renamed over ``out`` on success (BGZF
    compressed when ``out`` ends in ``.gz``); removed on failure, so nothing is half-written."""
    import tempfile

    dest = Path(out)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise UserError(f"cannot write {dest}: {e.strerror or e}; choose another path") from None
    os.close(fd)
    try:
        if dest.name.endswith(".gz"):
            f = _BgzfText(tmp)
        else:
            f = open(tmp, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
        with f:
            yield f
        os.replace(tmp, dest)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"writing {dest} failed ({e.strerror or e}); nothing was written") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt(x: float, where: str) -> str:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{where}: score {x} is not finite (a model bug; nothing was written)")
    return format(x, ".6g")


def _info_value(text: str) -> str:
    """A reason as a VCF INFO string: no whitespace, ';', '=' or ','."""
    return re.sub(r"[\s;=,]+", "_", text.strip()) or "skipped"


def write_scored_vcf(src: str | os.PathLike, out: str | os.PathLike,
                     scores: Mapping[int, float | Sequence[float]], reasons: Mapping[int, str] | None = None,
                     *, info_id: str = "LS_SCORE", skip_id: str = "LS_SKIP",
                     description: str = "alt-vs-ref log-likelihood ratio of the longstream DNA LM, "
                     "averaged over both strands") -> Path:
    """Copy VCF ``src`` to ``out`` with the scores in INFO (see the module docstring).

    ``scores`` / ``reasons`` are keyed by :attr:`Variant.line`; a score is one float or one per
    ALT. A record in neither is copied unchanged; an earlier ``LS_SCORE`` / ``LS_SKIP`` in INFO
    is replaced. A non-finite score or a key that is no record of ``src`` is a ValueError.
    """
    p = Path(src)
    reasons = reasons or {}
    score_def = f'##INFO=<ID={info_id},Number=A,Type=Float,Description="{description}">'
    skip_def = f'##INFO=<ID={skip_id},Number=1,Type=String,Description="why the record was not scored">'
    drop = (f"{info_id}=", f"{skip_id}=")
    seen: set[int] = set()
    with _atomic_text(out) as f:
        in_header = True
        for n, line in iter_lines(p, what="VCF", hint=VCF_HINT):
            if in_header:
                if line.startswith(("##INFO=<ID=" + info_id + ",", "##INFO=<ID=" + skip_id + ",")):
                    continue
                if line.startswith("#CHROM"):
                    f.write(f"{score_def}\n{skip_def}\n")
                    in_header = False
                f.write(line + "\n")
                continue
            cols = line.split("\t")
            add = None
            if n in scores:
                v = scores[n]
                vals = [v] if isinstance(v, (int, float)) else list(v)
                add = f"{info_id}=" + ",".join(_fmt(x, f"VCF {p}, line {n}") for x in vals)
            elif n in reasons:
                add = f"{skip_id}={_info_value(reasons[n])}"
            if add is not None:
                if len(cols) < 8:
                    raise UserError(f"VCF {p}, line {n}: fewer than 8 columns; {VCF_HINT}")
                info = [kv for kv in cols[7].split(";") if kv and kv != "." and not kv.startswith(drop)]
                cols[7] = ";".join([*info, add])
                seen.add(n)
            f.write("\t".join(cols) + "\n")
        missing = (set(scores) | set(reasons)) - seen
        if missing:
            raise ValueError(f"scores or reasons for line(s) {sorted(missing)[:5]} that are no record of {p}")
    return Path(out)


def _cell(v, where: str) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return _fmt(v, where)
    if isinstance(v, (tuple, list)):
        return ",".join(_cell(x, where) for x in v)
    return re.sub(r"[\t\r\n]+", " ", str(v))


def write_tsv(out: str | os.PathLike, columns: Sequence[str], rows: Iterable[Sequence | Mapping]) -> Path:
    """A tab-separated table with a header line, written atomically. Rows are sequences in
    ``columns`` order or mappings by column name; ``None`` -> empty cell, floats with 6
    significant digits (a non-finite float is a ValueError), tabs / newlines in text -> space."""
    with _atomic_text(out) as f:
        f.write("\t".join(columns) + "\n")
        for i, row in enumerate(rows, 1):
            vals = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
            if len(vals) != len(columns):
                raise ValueError(f"row {i} has {len(vals)} values for {len(columns)} columns")
            f.write("\t".join(_cell(v, f"TSV {out}, row {i}") for v in vals) + "\n")
    return Path(out)
