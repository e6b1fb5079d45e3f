"""``longstream genomics score-variants``: alt-vs-ref log-likelihood ratios of VCF variants from the DNA LM.

The score follows GPN (Benegas et al., "DNA language models are powerful predictors of
genome-wide variant effects", PNAS 2023): the log-likelihood ratio of the alternative against
the reference allele, averaged over both strands. GPN is a *masked* LM and reads
``log P(alt | context) - log P(ref | context)`` at the masked position. Our DNA LM is
*causal* (next-nucleotide), so the ratio is taken over a whole window instead:

    LLR_strand = log P(window with ALT) - log P(window with REF)
               = sum over the window's bases from the variant on of
                 log p(x_t^alt | x_<t^alt) - log p(x_t^ref | x_<t^ref)

(the terms before the variant are equal and cancel, so they are left out), computed on the
forward strand and on the reverse complement of the same window, and

    score = (LLR_forward + LLR_reverse) / 2      (natural log, nats).

Reading both strands gives the variant's upstream context on one and its downstream context
on the other, as a bidirectional model would see. A negative score means the LM finds the
alternative allele less likely than the reference (GPN: more likely deleterious).

The window is ``--window`` bases (default 512) centred on the variant, shifted inside the
contig near its ends (a contig shorter than the window is used whole). A variant at the very
first base of a strand's window has no context there; its own term is then not scored, only
its effect on the bases after it.

What is scored: single-base substitutions (``snv``), multi-base substitutions of the REF's
length (``mnv``) and multi-allelic sites whose every ALT is such a substitution (one score per
ALT: ``LS_SCORE=a,b`` in the VCF, one TSV row per ALT). Skipped, with the reason in the TSV's
``reason`` column / the VCF's ``LS_SKIP`` INFO: indels (their windows differ in length, so
the likelihoods are not comparable), symbolic / breakend / ``*`` alleles, records without an
ALT, and multi-allelic sites with such an ALT.

Memory is bounded: the VCF streams (:func:`~.vcf.read_vcf`, which also checks every REF
against the FASTA and every contig), variants are scored ``--batch`` alleles at a time and
TSV rows are written as they are made. VCF output holds one score per record until the copy
(:func:`~.vcf.write_scored_vcf`, which copies the input text and adds the INFO fields). Both
are atomic: a bad record anywhere (REF mismatch, unknown contig, malformed line) is a
UserError naming the file and line, and nothing is written.

Axis legend: b alleles in a batch, w window length, v vocabulary.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longstream.encoders.dna import reverse_complement_ids
from longstream.pipelines.common import UserError, check_finite_output, progress, resolve_out

from . import data as D

__all__ = ["DEFAULT_LM_CHECKPOINT", "TSV_COLUMNS", "Allele", "allele_windows", "llr_scores", "score_variants",
           "score_edits", "add_variant_args", "score_command"]

DEFAULT_LM_CHECKPOINT = "genomics/mamba-lm"
_BASES = frozenset("ACGTNacgtn")


def _tsv_columns() -> tuple[str, ...]:
    from .formats import VARIANT_TSV_COLUMNS

    return (*VARIANT_TSV_COLUMNS, "llr_forward", "llr_reverse")


TSV_COLUMNS = _tsv_columns()


@dataclass(frozen=True)
class Allele:
    """One substitution to score: REF at ``start`` (0-based) of ``chrom`` replaced by ``alt``."""

    chrom: str
    start: int
    ref: str
    alt: str


def _is_substitution(ref: str, alt: str) -> bool:
    return len(alt) == len(ref) and all(c in _BASES for c in alt)


def skip_reason(variant: Any) -> str | None:
    """Why a :class:`~.vcf.Variant` is not scored (None: every ALT is a substitution we score)."""
    from .formats import KIND_REASONS

    kind = variant.kind
    if kind in ("snv", "mnv"):
        return None
    if kind == "multi-allelic":
        if all(_is_substitution(variant.ref, a) for a in variant.alts):
            return None
        return "multi-allelic site with an indel or symbolic ALT (only substitutions are scored)"
    if kind == "indel":
        return "indel (REF and ALT windows differ in length, so their likelihoods are not comparable)"
    return KIND_REASONS.get(kind, kind)


def _window(start: int, span: int, length: int, window: int) -> tuple[int, int]:
    """``[lo, hi)`` of ``window`` bases centred on ``[start, start + span)``, inside ``[0, length)``."""
    w = min(window, length)
    lo = start - (w - span) // 2
    lo = min(max(lo, 0), length - w)
    return lo, lo + w


def allele_windows(fa: Any, alleles: list[Allele], window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids of each allele's window: ``(ids (4b, w) int64, first (4b,) int64, valid (4b,) int64)``.

    Rows ``[ref_fwd, alt_fwd, ref_rev, alt_rev]`` per allele (the reverse rows are the reverse
    complement of the forward window); ``first`` is the window index of the first base that
    differs on that strand; windows shorter than the longest (short contigs) are right-padded
    with N, which a causal LM never reads before ``valid``.
    """
    rows, firsts, valids = [], [], []
    for a in alleles:
        L = fa.length(a.chrom)
        lo, hi = _window(a.start, len(a.ref), L, window)
        ref = D.encode(fa.fetch(a.chrom, lo, hi))
        alt = ref.copy()
        v = a.start - lo
        alt[v : v + len(a.ref)] = D.encode(a.alt)
        n = hi - lo
        v_rev = n - (v + len(a.ref))
        for ids, first in ((ref, v), (alt, v), (reverse_complement_ids(ref), v_rev), (reverse_complement_ids(alt), v_rev)):
            rows.append(np.ascontiguousarray(ids))
            firsts.append(first)
            valids.append(n)
    w = max(valids)
    out = np.full((len(rows), w), D.N_ID, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out), torch.tensor(firsts), torch.tensor(valids)


@torch.no_grad()
def llr_scores(model: Any, fa: Any, alleles: list[Allele], *, window: int = 512,
               device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(llr_forward (b,), llr_reverse (b,))`` in nats for ``alleles`` (see the module docstring)."""
    if not alleles:
        return np.zeros(0), np.zeros(0)
    ids, first, valid = allele_windows(fa, alleles, window)
    ids = ids.to(device)
    logits = model(ids).float()  # (4b, w, v): position t predicts base t + 1
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]  # (4b, w - 1)
    t = torch.arange(1, ids.shape[1], device=ids.device)[None]  # target index of each logp column
    keep = (t >= first.to(ids.device)[:, None].clamp_min(1)) & (t < valid.to(ids.device)[:, None])
    ll = (logp.double() * keep).sum(1).view(-1, 4)  # (b, [ref_f, alt_f, ref_r, alt_r])
    fwd = (ll[:, 1] - ll[:, 0]).cpu().numpy()
    rev = (ll[:, 3] - ll[:, 2]).cpu().numpy()
    check_finite_output((fwd, rev), source=[f"{a.chrom}:{a.start + 1} {a.ref}>{a.alt}" for a in alleles],
                        what="log-likelihood ratios")
    return fwd, rev


def _lm_model(checkpoint: str):
    from .model import from_pretrained

    model = from_pretrained(checkpoint)
    if model.task != "lm":
        raise UserError(f"--checkpoint {checkpoint}: a {model.task!r} model; score-variants needs a DNA language "
                        f"model (model.task 'lm', e.g. {DEFAULT_LM_CHECKPOINT})")
    return model


def _scored_rows(model: Any, fa: Any, vcf: Path, *, window: int, batch: int, device: Any,
                 stats: Counter) -> Iterator[tuple[Any, list[tuple[float, float, float]] | None, str | None]]:
    """Yield ``(variant, [(score, fwd, rev) per ALT] or None, skip reason or None)`` in file order."""
    from .formats import count_records, read_vcf

    pending: list[tuple[Any, str | None]] = []
    alleles: list[Allele] = []

    def flush():
        fwd, rev = llr_scores(model, fa, alleles, window=window, device=device)
        i = 0
        for var, reason in pending:
            if reason is not None:
                yield var, None, reason
                continue
            k = len(var.alts)
            yield var, [((f + r) / 2, f, r) for f, r in zip(fwd[i : i + k], rev[i : i + k])], None
            i += k
        pending.clear()
        alleles.clear()

    total = count_records(vcf)
    with progress(total=total, desc="score-variants", unit="variant") as bar:
        for var in read_vcf(vcf, fasta=fa):
            reason = skip_reason(var)
            pending.append((var, reason))
            stats["records"] += 1
            if reason is None:
                stats["scored"] += 1
                alleles.extend(Allele(var.chrom, var.start, var.ref, a) for a in var.alts)
            else:
                stats[f"skipped: {reason}"] += 1
            if len(alleles) >= batch or len(pending) >= 8 * batch:
                n = len(pending)
                yield from flush()
                bar.update(n)
        n = len(pending)
        yield from flush()
        bar.update(n)


def score_variants(model: Any, vcf: str | Path, fasta: str | Path, out: str | Path, *, window: int = 512,
                   batch: int = 16, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Score every record of ``vcf`` against ``fasta`` into ``out`` (``.vcf`` / ``.vcf.gz`` or ``.tsv``)."""
    from .formats import FastaFile, write_scored_vcf, write_tsv

    out = Path(out)
    fmt = _out_format(out)
    resolve_out(out)
    if window < 2:
        raise UserError(f"--window {window}: must be at least 2 bases")
    if batch < 1:
        raise UserError(f"--batch {batch}: must be at least 1")
    vcf = Path(vcf)
    stats: Counter = Counter()
    t0 = time.perf_counter()
    with FastaFile(fasta) as fa:
        rows = _scored_rows(model, fa, vcf, window=window, batch=batch, device=device, stats=stats)
        if fmt == "tsv":
            write_tsv(out, TSV_COLUMNS, _tsv_rows(rows))
        else:
            scores: dict[int, list[float]] = {}
            reasons: dict[int, str] = {}
            for var, sc, reason in rows:
                if sc is None:
                    reasons[var.line] = reason
                else:
                    scores[var.line] = [float(s) for s, _, _ in sc]
            write_scored_vcf(vcf, out, scores, reasons)
    secs = time.perf_counter() - t0
    from .embed import peak_rss_mib

    skipped = {k.removeprefix("skipped: "): v for k, v in sorted(stats.items()) if k.startswith("skipped: ")}
    return {"out": str(out), "records": stats["records"], "scored": stats["scored"], "skipped": skipped,
            "window": window, "seconds": round(secs, 3),
            "records_per_s": round(stats["records"] / max(secs, 1e-9), 1), "peak_rss_mib": round(peak_rss_mib(), 1)}


def _tsv_rows(rows: Iterator) -> Iterator[list[Any]]:
    """TSV rows (:data:`TSV_COLUMNS`): one per ALT of a scored record, one per skipped record."""
    for var, sc, reason in rows:
        if sc is None:
            yield [var.chrom, var.pos, var.id, var.ref, ",".join(var.alts) or ".", var.kind, None, reason, None, None]
            continue
        for alt, (s, f, r) in zip(var.alts, sc):
            yield [var.chrom, var.pos, var.id, var.ref, alt, var.kind, float(s), None, float(f), float(r)]


def _out_format(out: Path) -> str:
    name = out.name.lower()
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith((".vcf", ".vcf.gz")):
        return "vcf"
    raise UserError(f"--out {out}: unknown format; name it X.vcf, X.vcf.gz (the input VCF with LS_SCORE in INFO) "
                    "or X.tsv (a table)")


# ---------------------------------------------------------------------------- edits of a pasted sequence
def parse_edits(text: str, sequence: str, *, what: str = "edits") -> list[tuple[int, str, str]]:
    """``"120:T, 455:G"`` -> ``[(0-based start, ref, alt)]`` on ``sequence`` (positions 1-based, as in VCF)."""
    edits = []
    for item in (t for t in text.replace(";", ",").replace("\n", ",").split(",") if t.strip()):
        pos_s, sep, alt = item.strip().partition(":")
        alt = alt.strip().upper()
        if not sep or not pos_s.strip().isdigit():
            raise UserError(f"{what}: {item.strip()!r} is not POS:ALT (e.g. 120:T; positions are 1-based)")
        pos = int(pos_s)
        if not 1 <= pos <= len(sequence):
            raise UserError(f"{what}: position {pos} is outside the sequence (1..{len(sequence)})")
        if len(alt) != 1 or alt not in "ACGT":
            raise UserError(f"{what}: {item.strip()!r}: ALT must be one base A, C, G or T")
        edits.append((pos - 1, sequence[pos - 1].upper(), alt))
    return edits


class _SeqFasta:
    """The ``length`` / ``fetch`` subset of FastaFile over one in-memory sequence (the demo's pasted bases)."""

    def __init__(self, seq: str, name: str = "input") -> None:
        self.seq, self.name, self.path = seq, name, "pasted sequence"

    def length(self, name: str) -> int:
        return len(self.seq)

    def fetch(self, name: str, start: int, end: int) -> str:
        return self.seq[start:end]


def score_edits(model: Any, sequence: str, edits: list[tuple[int, str, str]], *, window: int = 512
                ) -> list[dict[str, Any]]:
    """Scores of single-base edits ``[(start, ref, alt)]`` of an in-memory sequence (the demo)."""
    fa = _SeqFasta(sequence)
    alleles = [Allele("input", s, r, a) for s, r, a in edits]
    fwd, rev = llr_scores(model, fa, alleles, window=window) if alleles else (np.zeros(0), np.zeros(0))
    return [{"pos": s + 1, "ref": r, "alt": a, "score": float((f + b) / 2), "llr_forward": float(f),
             "llr_reverse": float(b)} for (s, r, a), f, b in zip(edits, fwd, rev)]


# ---------------------------------------------------------------------------- CLI
def add_variant_args(p: Any) -> None:
    p.add_argument("--vcf", required=True, help="VCF / VCF.gz of variants (REF checked against --fasta)")
    p.add_argument("--fasta", required=True, help="the genome the VCF was called against (FASTA / FASTA.gz)")
    p.add_argument("--checkpoint", default=DEFAULT_LM_CHECKPOINT,
                   help=f"a genomics DNA language model (default {DEFAULT_LM_CHECKPOINT})")
    p.add_argument("--out", required=True, help="X.vcf / X.vcf.gz (score in INFO LS_SCORE) or X.tsv")
    p.add_argument("--window", type=int, default=512, help="bases around each variant (default 512)")
    p.add_argument("--batch", type=int, default=16, help="alleles per forward batch")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave the default)")
    p.add_argument("--device", default="cpu")


def score_command(args: Any) -> dict[str, Any]:
    out = Path(args.out)
    _out_format(out)
    resolve_out(out)  # the --out rule before the model loads
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = _lm_model(args.checkpoint).to(args.device)
    return score_variants(model, args.vcf, args.fasta, out, window=args.window, batch=args.batch, device=args.device)

