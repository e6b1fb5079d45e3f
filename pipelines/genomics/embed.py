"""``longstream genomics embed``: embeddings of every record of a FASTA, streamed with bounded memory.

Any genomics checkpoint (species, LM or CDS; its embedding + backbone, the task head is not
used) maps each base to a ``d_model`` vector, the backbone's output there. Two modes:

- ``--mode window`` (default): the mean of the per-base outputs over windows of ``--window``
  bases every ``--stride`` bases (default: non-overlapping). Windows start at 0, stride, 2
  stride, ... while the start is inside the record, so the last window(s) of a record may be
  shorter (``end`` says where they stop), as ``bedtools makewindows`` does.
- ``--mode base``: one row per base (``start``, ``start + 1``).

How a record goes through the model:

- **Causal backbones with state** (Mamba, Mamba-2, S4D, causal attention with a KV cache):
  the record is read ``--chunk`` bases at a time (``FastaFile.fetch``, random access), and
  each chunk runs ``backbone(x, state)`` with the state the previous chunk returned (the
  backbone protocol's chunked prefill). Every base therefore sees the *whole record before it*
  as context, and the result equals one forward pass over the whole record (tested), while
  memory holds one chunk's activations and the small recurrent state: a 1 Mbp record stays
  far under 2 GB (the README gives the measured peak RSS).
- **Bidirectional backbones** (``--backbone.bidirectional``, Caduceus-style) and backbones
  without a carried state cannot continue a stream: their outputs at a base depend on bases
  after it. They are **windowed with overlap** instead: the record is cut into tiles of
  ``--chunk`` bases, each run with ``--overlap`` extra bases of context on both sides
  (clipped at the record ends) and only the tile's own outputs kept. A base thus sees at
  most ``overlap`` bases on each side (not the whole record), and results depend on
  ``--chunk`` / ``--overlap`` near tile edges.

``--strand both`` embeds the reverse complement too: its rows follow the ``+`` rows of each
record and are in the order the minus strand is read (5' -> 3', so descending forward
coordinates); ``start`` / ``end`` are always forward-strand, 0-based, half-open coordinates.
A minus-strand window covers the same forward bases as the plus-strand window ``k`` windows
from the record's far end only when the record length is a multiple of the stride.

Outputs (the extension of ``--out`` picks the format), written atomically — to temporary
files beside the outputs, renamed into place only when every record is done, so an error or
Ctrl-C leaves nothing half-written (and an older output untouched):

- ``X.npy``: a ``(rows, d)`` float32 (``--dtype float16``: half) array written row block by
  row block (never held in memory), with ``X.tsv`` beside it: ``row record start end strand``;
- ``X.parquet``: columns ``record`` (string), ``start``, ``end`` (int64), ``strand`` (``+`` /
  ``-``) and ``embedding`` (fixed-size list of floats), written in row groups (pyarrow).

Axis legend: s strands in a batch (1), n chunk length, d model width.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longstream.backbones.io import atomic_file
from longstream.encoders.dna import reverse_complement_ids
from longstream.pipelines.common import UserError, check_finite_output, derived_out, progress, resolve_out

from . import data as D

__all__ = ["EmbedOptions", "embed_fasta", "record_outputs", "WindowPooler", "add_embed_args", "embed_command",
           "DEFAULT_EMBED_CHECKPOINT"]

DEFAULT_EMBED_CHECKPOINT = "genomics/mamba-lm"
FORMATS = (".npy", ".parquet")
_PARQUET_ROWS = 1 << 16  # rows per Parquet row group


@dataclass
class EmbedOptions:
    mode: str = "window"  # window | base
    window: int = 1024
    stride: int = 0  # 0 = window (non-overlapping)
    chunk: int = 4096  # bases per forward call (carried state) or per tile (windowed)
    overlap: int = 0  # windowed backbones: context bases on each side of a tile; 0 = chunk // 2
    strand: str = "+"  # + | both
    dtype: str = "float32"  # float32 | float16
    records: tuple[str, ...] = ()  # () = every record

    def check(self) -> EmbedOptions:
        if self.mode not in ("window", "base"):
            raise UserError(f"--mode {self.mode!r}: use 'window' (mean-pooled windows) or 'base' (one row per base)")
        if self.strand not in ("+", "both"):
            raise UserError(f"--strand {self.strand!r}: use '+' (forward strand) or 'both' (and the reverse complement)")
        if self.dtype not in ("float32", "float16"):
            raise UserError(f"--dtype {self.dtype!r}: use float32 or float16")
        for flag, v, lo in (("--window", self.window, 1), ("--stride", self.stride, 0), ("--chunk", self.chunk, 1),
                            ("--overlap", self.overlap, 0)):
            if v < lo:
                raise UserError(f"{flag} {v}: must be at least {lo}")
        return self

    @property
    def step(self) -> int:
        return self.stride or self.window

    def n_rows(self, length: int) -> int:
        """Rows one strand of a record of ``length`` bases gives."""
        return length if self.mode == "base" else math.ceil(length / self.step)


# ---------------------------------------------------------------------------- per-base outputs
def _carries_state(backbone: Any) -> bool:
    return bool(getattr(backbone, "is_causal", False)) and bool(getattr(backbone, "supports_state", False))


def _ids(fa: Any, name: str, length: int, s: int, e: int, minus: bool) -> torch.Tensor:
    """Token ids ``(1, e - s)`` of bases ``[s, e)`` of the strand being read (minus: of the reverse complement)."""
    lo, hi = (length - e, length - s) if minus else (s, e)
    seq = fa.fetch(name, lo, hi)
    try:
        ids = D.encode(seq)
    except ValueError as err:
        raise UserError(f"FASTA {fa.path}: record {name!r}, bases {lo}..{hi}: {err}") from None
    if minus:
        ids = reverse_complement_ids(ids)
    return torch.from_numpy(np.ascontiguousarray(ids).astype(np.int64))[None]


@torch.no_grad()
def record_outputs(model: Any, fa: Any, name: str, *, minus: bool = False, chunk: int = 4096, overlap: int = 0,
                   device: str | torch.device = "cpu") -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, y (1, n, d))``: consecutive backbone outputs of one strand of record ``name``.

    ``start`` counts along the strand read (for the minus strand, from the record's end).
    A causal backbone with state runs chunk after chunk with carried state; any other is
    windowed: each tile of ``chunk`` bases sees ``overlap`` (default ``chunk // 2``) bases of
    context on each side (see the module docstring).
    """
    model.eval()
    backbone, embed = model.backbone, getattr(model, "embed_ids", model.embed)  # + ORF channels if any
    L = fa.length(name)
    if _carries_state(backbone):
        state = None
        for s in range(0, L, chunk):
            e = min(s + chunk, L)
            y, state = backbone(embed(_ids(fa, name, L, s, e, minus).to(device)), state)  # (1, n, d)
            yield s, y.float()
        return
    ctx = overlap or chunk // 2
    for s in range(0, L, chunk):
        e = min(s + chunk, L)
        lo, hi = max(0, s - ctx), min(L, e + ctx)
        y, _ = backbone(embed(_ids(fa, name, L, lo, hi, minus).to(device)))  # (1, hi - lo, d)
        yield s, y[:, s - lo : e - lo].float()


class WindowPooler:
    """Means of consecutive per-base outputs over windows ``[k * stride, k * stride + window)``.

    Fed the outputs chunk by chunk (:meth:`add`); keeps only running float64 prefix sums at
    the window boundaries still needed, so memory does not grow with the record.
    """

    def __init__(self, length: int, window: int, stride: int) -> None:
        self.windows = [(s, min(s + window, length)) for s in range(0, length, stride)]
        self.bounds = sorted({b for w in self.windows for b in w})
        self.prefix: dict[int, torch.Tensor] = {}  # boundary -> sum of outputs before it (s, d) float64
        self.total: torch.Tensor | None = None
        self.pos = self.next_bound = self.next_window = 0

    def add(self, y: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """Take outputs ``y (s, n, d)`` of the next ``n`` bases; return the windows they complete."""
        n = y.shape[1]
        cs = torch.cumsum(y.double(), 1)  # (s, n, d)
        if self.total is None:
            self.total = torch.zeros(y.shape[0], y.shape[2], dtype=torch.float64)
        while self.next_bound < len(self.bounds) and self.bounds[self.next_bound] <= self.pos + n:
            b = self.bounds[self.next_bound]
            self.prefix[b] = self.total if b == self.pos else self.total + cs[:, b - self.pos - 1]
            self.next_bound += 1
        self.total = self.total + cs[:, -1]
        self.pos += n
        done = []
        while self.next_window < len(self.windows) and self.windows[self.next_window][1] <= self.pos:
            s, e = self.windows[self.next_window]
            done.append((s, e, (self.prefix[e] - self.prefix[s]) / (e - s)))  # (s, d)
            self.next_window += 1
        keep = self.windows[self.next_window][0] if self.next_window < len(self.windows) else self.pos + 1
        for b in [b for b in self.prefix if b < keep]:
            del self.prefix[b]
        return done


# ---------------------------------------------------------------------------- writers
class _NpyRows:
    """A ``(rows, d)`` .npy file written block by block, plus its coordinates TSV."""

    def __init__(self, npy: Path, tsv: Path, rows: int, d: int, dtype: np.dtype) -> None:
        self.f = open(npy, "wb")  # noqa: SIM115 - closed in close()
        np.lib.format.write_array_header_1_0(self.f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": (rows, d)})
        self.t = open(tsv, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        self.t.write("row\trecord\tstart\tend\tstrand\n")
        self.rows, self.expected, self.dtype = 0, rows, dtype

    def write(self, record: str, starts: np.ndarray, ends: np.ndarray, strand: str, emb: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(emb, dtype=self.dtype).tobytes())
        rec = record.replace("\t", " ")
        self.t.write("".join(f"{self.rows + i}\t{rec}\t{s}\t{e}\t{strand}\n"
                             for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist()))))
        self.rows += len(starts)

    def close(self) -> None:
        self.f.close()
        self.t.close()

    def check(self) -> None:
        if self.rows != self.expected:  # pragma: no cover - would be a bug in the row count
            raise RuntimeError(f"wrote {self.rows} rows, the header says {self.expected}")


class _ParquetRows:
    """Parquet rows ``record, start, end, strand, embedding`` in row groups (pyarrow)."""

    def __init__(self, path: Path, d: int, dtype: np.dtype) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.d = pa, d
        self.value_type = pa.float16() if dtype == np.float16 else pa.float32()
        self.schema = pa.schema([("record", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
                                 ("strand", pa.string()), ("embedding", pa.list_(self.value_type, d))])
        self.w = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        self.buf: list[tuple[str, np.ndarray, np.ndarray, str, np.ndarray]] = []
        self.buffered, self.dtype = 0, dtype

    def write(self, record: str, starts: np.ndarray, ends: np.ndarray, strand: str, emb: np.ndarray) -> None:
        self.buf.append((record, starts, ends, strand, np.asarray(emb, dtype=self.dtype)))
        self.buffered += len(starts)
        if self.buffered >= _PARQUET_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.buf:
            return
        pa = self.pa
        n = [len(b[1]) for b in self.buf]
        emb = np.concatenate([b[4] for b in self.buf]).reshape(-1)
        cols = [pa.array([r for b, k in zip(self.buf, n) for r in [b[0]] * k], pa.string()),
                pa.array(np.concatenate([b[1] for b in self.buf]), pa.int64()),
                pa.array(np.concatenate([b[2] for b in self.buf]), pa.int64()),
                pa.array([r for b, k in zip(self.buf, n) for r in [b[3]] * k], pa.string()),
                pa.FixedSizeListArray.from_arrays(pa.array(emb, self.value_type), self.d)]
        self.w.write_table(pa.Table.from_arrays(cols, schema=self.schema))
        self.buf, self.buffered = [], 0

    def close(self) -> None:
        self.w.close()

    def check(self) -> None:
        pass


# ---------------------------------------------------------------------------- the command
def _check_finite(emb: torch.Tensor, fa: Any, name: str, s: int) -> None:
    check_finite_output(emb, source=f"FASTA {fa.path}: record {name!r} near base {s}", what="embeddings")


def embed_fasta(model: Any, fasta: str | Path, out: str | Path, opts: EmbedOptions | None = None, *,
                device: str | torch.device = "cpu", desc: str = "embed") -> dict[str, Any]:
    """Embed every record (or ``opts.records``) of ``fasta`` into ``out`` (.npy + .tsv, or .parquet).

    Returns a summary: rows, dim, records, bases, seconds, bases/s, peak RSS (MiB), the files written.
    """
    from .formats import FastaFile

    opts = (opts or EmbedOptions()).check()
    out = Path(out)
    fmt = out.suffix.lower()
    if fmt not in FORMATS:
        raise UserError(f"--out {out}: unknown format {out.suffix or '(no extension)'!r}; name it X.npy "
                        "(coordinates go to X.tsv beside it) or X.parquet")
    paths = resolve_out(out, extra_suffixes=(".tsv",) if fmt == ".npy" else ())
    dtype = np.dtype(opts.dtype)
    d = int(model.cfg.backbone.d_model)
    t0 = time.perf_counter()
    with FastaFile(fasta) as fa:
        names = list(opts.records) or fa.names
        for nm in names:
            fa.length(nm)  # unknown record -> UserError before anything is written
        strands = ["+", "-"] if opts.strand == "both" else ["+"]
        rows = sum(opts.n_rows(fa.length(nm)) for nm in names) * len(strands)
        bases = sum(fa.length(nm) for nm in names) * len(strands)
        with contextlib.ExitStack() as stack:
            tmps = [stack.enter_context(atomic_file(p)) for p in paths]  # renamed into place on success only
            writer = (_NpyRows(tmps[0], tmps[1], rows, d, dtype) if fmt == ".npy" else _ParquetRows(tmps[0], d, dtype))
            try:
                with progress(total=bases, desc=desc, unit="bp") as bar:
                    for nm in names:
                        L = fa.length(nm)
                        for strand in strands:
                            _embed_strand(model, fa, nm, L, strand, opts, writer, bar, device)
                if isinstance(writer, _ParquetRows):
                    writer._flush()
                writer.check()
            finally:
                writer.close()
    secs = time.perf_counter() - t0
    files = [str(p) for p in paths]
    return {"out": files[0], "files": files, "mode": opts.mode, "rows": rows, "dim": d, "records": len(names),
            "bases": bases, "seconds": round(secs, 3), "bases_per_s": round(bases / max(secs, 1e-9), 1),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "carried_state": _carries_state(model.backbone)}


def _embed_strand(model: Any, fa: Any, name: str, L: int, strand: str, opts: EmbedOptions, writer: Any,
                  bar: Any, device: Any) -> None:
    minus = strand == "-"
    pooler = WindowPooler(L, opts.window, opts.step) if opts.mode == "window" else None
    for s, y in record_outputs(model, fa, name, minus=minus, chunk=opts.chunk, overlap=opts.overlap, device=device):
        n = y.shape[1]
        if pooler is None:
            starts = np.arange(s, s + n, dtype=np.int64)
            ends = starts + 1
            emb = y[0].cpu()
        else:
            done = pooler.add(y.cpu())
            if not done:
                bar.update(n)
                continue
            starts = np.array([w[0] for w in done], dtype=np.int64)
            ends = np.array([w[1] for w in done], dtype=np.int64)
            emb = torch.cat([w[2] for w in done]).float()  # (windows, d)
        _check_finite(emb, fa, name, s)
        if minus:  # strand coordinates -> forward coordinates
            starts, ends = L - ends, L - starts
        writer.write(name, starts, ends, strand, emb.numpy())
        bar.update(n)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / 1024 if sys.platform == "darwin" else kb / 1024


# ---------------------------------------------------------------------------- CLI
def add_embed_args(p: Any) -> None:
    p.add_argument("fasta", help="FASTA / FASTA.gz (plain, gzip or bgzip) to embed")
    p.add_argument("--checkpoint", default=DEFAULT_EMBED_CHECKPOINT,
                   help=f"genomics checkpoint (name or dir; default {DEFAULT_EMBED_CHECKPOINT})")
    p.add_argument("--out", required=True, help="X.npy (+ X.tsv coordinates) or X.parquet")
    p.add_argument("--mode", default="window", choices=("window", "base"))
    p.add_argument("--window", type=int, default=1024, help="window length (bases) for --mode window")
    p.add_argument("--stride", type=int, default=0, help="bases between window starts (default: --window)")
    p.add_argument("--chunk", type=int, default=4096, help="bases per forward call (memory bound)")
    p.add_argument("--overlap", type=int, default=0,
                   help="bidirectional backbones: context bases on each side of a tile (default chunk // 2)")
    p.add_argument("--strand", default="+", choices=("+", "both"))
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--record", action="append", default=[], help="embed only this record (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave the default)")
    p.add_argument("--device", default="cpu")


def embed_command(args: Any) -> dict[str, Any]:
    from .model import from_pretrained

    opts = EmbedOptions(mode=args.mode, window=args.window, stride=args.stride, chunk=args.chunk,
                        overlap=args.overlap, strand=args.strand, dtype=args.dtype,
                        records=tuple(args.record)).check()
    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"--out {out}: unknown format {out.suffix or '(no extension)'!r}; name it X.npy "
                        "(coordinates go to X.tsv beside it) or X.parquet")
    resolve_out(out, extra_suffixes=(".tsv",) if out.suffix.lower() == ".npy" else ())  # before loading anything
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = from_pretrained(args.checkpoint).to(args.device)
    return embed_fasta(model, args.fasta, out, opts, device=args.device)


def coords_path(out: str | Path) -> Path:
    """The coordinates TSV written beside an ``X.npy`` output."""
    return derived_out(out, ".tsv")
