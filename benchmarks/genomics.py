"""Genomics benchmark (issue 13, "Tasks and evaluation"): every task with its baselines, one run.

Writes ``benchmarks/results/genomics.json`` and ``.md``. Sections (``--tasks``):

- ``species``: accuracy per window length L on ``splits.eval_windows`` of the held-out strains,
  for the k-mer logistic-regression baseline (trained here, per L, on windows of the training
  strains) and, with ``--species-checkpoint``, the model (the genomics pipeline's ``evaluate``).
- ``lm``: bits per base on ``splits.lm_eval_points`` (the same 512 target bases for every
  context): order-k Markov baselines (trained here on the training strains) and, with
  ``--lm-checkpoint``, the model per context.
- ``cds``: M. tuberculosis test region (last 30%): Prodigal (pyrodigal, single mode trained on
  the first 70%), the per-base k-mer gradient-boosting baseline (argmax and ORF-decoded with
  ``genes.decode_genes``), the supervised gene-finder prior (``coding_prior.CodingPrior``,
  fitted on the first 70% and its genes), the decoder's ceiling (decoding the TRUE labels) and, with
  ``--cds-checkpoint``, the model. Per-base binary / strand-aware MCC and macro-F1, gene-level
  exact and stop-only sensitivity / precision.
- ``speed``: bases/s of an embedding pass (token embedding + backbone, random weights, batch 1,
  ``torch.no_grad``) at 16K bases in one call and at 1M bases in 16K chunks with the state
  carried (causal backbones) or in independent 16K windows (bidirectional ones, which cannot
  carry state), on ``--threads`` threads, and the peak RSS above the pre-run baseline
  (VmHWM reset through /proc/self/clear_refs), for HyenaDNA-style (``H``), Mamba (``M``) and
  Caduceus-style (``BM``, when the backbone is registered) stacks side by side; timings are
  interleaved (``benchmarks/timing.py``, minimum of ``--repeats``) up to 64K and one run per
  model at 1M (minutes each on one thread), and the ratios to ``M`` are reported with the
  absolute numbers. ``H`` is HyenaDNA-shaped (MLP 4 d) with ``l_max`` 16K, so its carried state
  is the last 16K inputs per stage; ``M`` and ``BM`` carry no MLP, as in Mamba / Caduceus.

Model parts call ``longstream.pipelines.genomics.evaluate.evaluate(checkpoint, data)``; without
the pipeline (or a checkpoint) they are recorded as skipped and the baselines still run.
Usage::

    nice python benchmarks/genomics.py                       # everything that can run
    nice python benchmarks/genomics.py --tasks species cds --quick
    nice python benchmarks/genomics.py --species-checkpoint genomics/hyena-species ...
    nice python benchmarks/genomics.py --tasks cds --update  # rerun one section, keep the others
    python benchmarks/genomics.py --render                   # rewrite the .md from the .json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

_THREADS = "1"
for _i, _a in enumerate(sys.argv):  # pin BLAS / OpenMP threads before numpy and torch load
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _THREADS = sys.argv[_i + 1]
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = _THREADS

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timing import cpu_name, interleaved  # noqa: E402  (benchmarks/timing.py)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

from longstream.pipelines.common import dumps_strict  # noqa: E402
from longstream.pipelines.genomics import baselines as B  # noqa: E402
from longstream.pipelines.genomics import formats, splits  # noqa: E402
from longstream.pipelines.genomics import genes as G  # noqa: E402
from longstream.pipelines.genomics.coding_prior import CodingPrior  # noqa: E402

SPECIES_LENGTHS = (128, 256, 1024, 4096, 16384, 65536)
ISSUE_KMER = {128: 0.77, 256: 0.84, 1024: 0.93, 4096: 0.94}
ISSUE_PRODIGAL = {"binary_mcc": 0.788, "strand_mcc": 0.926, "macro_f1": 0.918}


def _data_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return Path(os.environ.get("LONGSTREAM_DATA", REPO.parent / "shared" / "data")) / "genomics"


def _pipeline_evaluate():
    """The genomics pipeline's ``evaluate(checkpoint, data)``, or None with the reason."""
    try:
        from longstream.pipelines.genomics import evaluate as ev  # noqa: PLC0415
    except ImportError as e:
        return None, f"genomics pipeline not importable ({e})"
    if not hasattr(ev, "evaluate"):
        return None, "pipelines/genomics/evaluate.py has no evaluate(checkpoint, data)"
    return ev.evaluate, None


def _model(checkpoint: str | None, root: Path, species_windows: tuple[int, list[int]] | None = None) -> dict:
    """The checkpoint's ``evaluate`` metrics; with ``species_windows`` ``(per_species, lengths)`` a species
    model is scored on those ``splits.eval_windows`` instead of its config's (the baseline's windows)."""
    if not checkpoint:
        return {"skipped": "no checkpoint given"}
    fn, why = _pipeline_evaluate()
    if fn is None:
        return {"skipped": why}
    t0 = time.perf_counter()
    try:
        if species_windows is None:
            out = fn(checkpoint, str(root))
        else:
            from longstream.pipelines.genomics import data as gd  # noqa: PLC0415
            from longstream.pipelines.genomics import evaluate as ev  # noqa: PLC0415
            from longstream.pipelines.genomics.model import from_pretrained  # noqa: PLC0415

            m = from_pretrained(checkpoint)
            m.cfg.data.root = str(root)
            m.cfg.data.eval_per_species, m.cfg.data.eval_lengths = species_windows[0], list(species_windows[1])
            if m.cfg.data.headline_length not in m.cfg.data.eval_lengths:
                m.cfg.data.headline_length = max(m.cfg.data.eval_lengths)
            out = ev.evaluate_model(m, gd.load_species(str(root)))
    except Exception as e:  # noqa: BLE001  (recorded, the baselines still count)
        traceback.print_exc()
        return {"checkpoint": checkpoint, "error": f"{type(e).__name__}: {e}"}
    res = {"checkpoint": checkpoint, "metrics": out, "time_s": round(time.perf_counter() - t0, 1)}
    if species_windows is not None:
        res["windows"] = {"per_species": species_windows[0], "lengths": list(species_windows[1])}
    return res


# ----------------------------------------------------------------------------- species
def run_species(root: Path, args) -> dict:
    genomes = splits.species_genomes(root / "bacteria")
    rows = []
    for L in args.lengths:
        t0 = time.perf_counter()
        tr = B.train_windows(genomes, L, per_species=args.train_per_species, seed=0)
        xs, ys = B.window_seqs(genomes, tr, L)
        clf = B.KmerSpecies().fit(xs, ys)
        t_fit = time.perf_counter() - t0
        ev = splits.eval_windows(genomes, L, per_species=args.per_species, seed=0)
        es, ey = B.window_seqs(genomes, ev, L)
        t1 = time.perf_counter()
        pred = clf.predict(es)
        t_pred = time.perf_counter() - t1
        from longstream.pipelines.common.metrics import accuracy, macro_f1  # noqa: PLC0415

        # the same baseline refitted on other random draws of its training windows: how much of its
        # accuracy is the draw (one window is 1/128 of the accuracy at 32 windows per species)
        draws = [accuracy(ey, pred)]
        for seed in range(1, args.kmer_draws):
            tr_s = B.train_windows(genomes, L, per_species=args.train_per_species, seed=seed)
            draws.append(accuracy(ey, B.KmerSpecies().fit(*B.window_seqs(genomes, tr_s, L)).predict(es)))
        rows.append({"length": L, "n_eval": len(ev), "n_train": len(tr), "accuracy": draws[0],
                     "macro_f1": macro_f1(ey, pred, labels=range(len(splits.SPECIES))), "accuracy_draws": draws,
                     "issue_measured": ISSUE_KMER.get(L), "fit_s": round(t_fit, 2),
                     "predict_bases_per_s": round(len(ev) * L / max(t_pred, 1e-9))})  # fmt: skip
        print(f"  species kmer L={L}: acc {rows[-1]['accuracy']:.4f} ({len(ev)} windows); over "
              f"{len(draws)} training draws {min(draws):.4f}-{max(draws):.4f}, mean {np.mean(draws):.4f}", flush=True)
    return {"kmer_logreg": rows, "model": _model(args.species_checkpoint, root, (args.per_species, list(args.lengths))),
            "protocol": f"train: {args.train_per_species} random windows per species from the training strains "
                        f"(per L); test: splits.eval_windows(per_species={args.per_species}, seed=0) of "
                        f"{dict(splits.TEST_STRAINS)}"}  # fmt: skip


# ----------------------------------------------------------------------------- LM
def run_lm(root: Path, args) -> dict:
    genomes = splits.species_genomes(root / "bacteria")
    train_seqs = [c for sp in splits.SPECIES for st, cs in genomes[sp].items() if st != splits.TEST_STRAINS[sp]
                  for c in cs]  # fmt: skip
    pts = splits.lm_eval_points(genomes, n=args.lm_points, seed=0)
    rows = []
    for k in args.markov_orders:
        t0 = time.perf_counter()
        lm = B.MarkovLM(k).fit(train_seqs)
        bits = n = 0
        for si, strain, ci, p in pts:
            chrom = genomes[splits.SPECIES[si]][strain][ci]
            b, m = lm.bits(chrom, slice(p - splits.LM_TARGET, p))
            bits, n = bits + b, n + m
        rows.append({"order": k, "bits_per_base": bits / n, "n_bases": n, "time_s": round(time.perf_counter() - t0, 1)})
        print(f"  lm markov k={k}: {bits / n:.4f} bits/base", flush=True)
    return {"markov": rows, "n_points": len(pts), "contexts": list(splits.LM_CONTEXTS),
            "model": _model(args.lm_checkpoint, root),
            "note": "a Markov chain sees only its k previous bases, so its bits/base is the same at every context"}


# ----------------------------------------------------------------------------- CDS
def run_cds(root: Path, args) -> dict:
    rec = formats.read_genbank(root / "mtb" / "NC_000962.3.gb")
    lab = splits.cds_labels(rec)
    (a0, a1), (b0, b1) = splits.cds_split(rec)
    seq = rec.sequence.upper()
    test_seq, y = seq[b0:b1], lab[b0:b1]
    true = [(g.start - b0, g.end - b0, g.strand) for g in splits.test_genes(rec)]
    out: dict = {"region": [b0, b1], "n_true_genes": len(true)}

    def score(name: str, labels: np.ndarray, calls=None, **extra) -> None:
        row = {**G.base_metrics(y, labels), **extra}
        if calls is not None:
            row.update(G.gene_metrics(calls, true))
        out[name] = row
        print(f"  cds {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)

    t0 = time.perf_counter()
    dec = G.decode_genes(G.labels_to_probs(y), test_seq)
    score("decoder_ceiling_true_labels", G.genes_to_labels(dec, b1 - b0), dec, time_s=round(time.perf_counter() - t0, 1))
    for meta in ([False, True] if args.prodigal_meta else [False]):
        t0 = time.perf_counter()
        comp, part = B.prodigal_genes(test_seq, None if meta else seq[a0:a1], meta=meta)
        score("prodigal_meta" if meta else "prodigal", G.genes_to_labels(comp + part, b1 - b0), comp,
              mode="meta" if meta else "single, trained on [0, 0.7 L)", n_partial=len(part),
              time_s=round(time.perf_counter() - t0, 1), issue_measured=ISSUE_PRODIGAL)
    t0 = time.perf_counter()
    km = B.KmerCDS(half_window=args.kmer_half_window).fit(seq[a0:a1], lab[a0:a1], n_samples=args.kmer_samples)
    t_fit = time.perf_counter() - t0
    probs = km.predict_proba(test_seq)
    t_pred = time.perf_counter() - t0 - t_fit
    score("kmer_gbdt_argmax", probs.argmax(1), None, fit_s=round(t_fit, 1), predict_s=round(t_pred, 1),
          n_train_bases=args.kmer_samples, half_window=args.kmer_half_window)
    dec = G.decode_genes(probs, test_seq)
    score("kmer_gbdt_decoded", G.genes_to_labels(dec, b1 - b0), dec)
    t0 = time.perf_counter()
    prior = CodingPrior.fit_region(rec, a1)  # the training region [0, 0.7 L) and its genes
    t_fit = time.perf_counter() - t0
    dec = prior.decode(test_seq)
    score("markov_start_prior_decoded", G.genes_to_labels(dec, b1 - b0), dec, fit_s=round(t_fit, 1),
          decode_s=round(time.perf_counter() - t0 - t_fit, 1), order=prior.order, n_train_genes=prior.n_genes)
    out["model"] = _model(args.cds_checkpoint, root)
    return out


# ----------------------------------------------------------------------------- speed
def _status_kb(key: str) -> int:
    m = re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else 0


def _peak_mib(fn) -> float | None:
    gc.collect()
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    base = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    fn()
    return round((_status_kb("VmHWM") - base) / 1024, 1)


def _speed_models(d_model: int, n_layers: int) -> dict[str, tuple[torch.nn.Module, bool]]:
    from longstream.backbones import BackboneConfig, create_backbone, list_mixers  # noqa: PLC0415

    specs = {
        "H": BackboneConfig(d_model=d_model, n_layers=n_layers, pattern="H", d_intermediate=4 * d_model,
                            mixer_kwargs={"H": {"l_max": 16384, "filter_order": 64, "emb_dim": 5}}),
        "M": BackboneConfig(d_model=d_model, n_layers=n_layers, pattern="M"),
    }  # fmt: skip
    if "BM" in list_mixers():
        specs["BM"] = BackboneConfig(d_model=d_model, n_layers=n_layers, pattern="BM",
                                     mixer_kwargs={"BM": {"d_state": 16, "d_conv": 4, "expand": 2}})
    out = {}
    for name, cfg in specs.items():
        torch.manual_seed(0)
        bb = create_backbone(cfg).eval()
        emb = torch.nn.Embedding(16, d_model)
        out[name] = (torch.nn.ModuleDict({"emb": emb, "bb": bb}), bool(getattr(bb, "is_causal", name != "BM")))
    return out


def _embed_fn(m: torch.nn.Module, causal: bool, ids: torch.Tensor, chunk: int):
    """One embedding pass over ``ids`` (1, L) in ``chunk``-base pieces; returns the pooled mean (D,)."""

    def run():
        with torch.no_grad():
            state, acc = None, 0.0
            for a in range(0, ids.shape[1], chunk):
                x = m["emb"](ids[:, a : a + chunk])
                if causal:
                    y, state = m["bb"](x, state)
                else:
                    y, _ = m["bb"](x)
                acc = acc + y.sum(1)
            return acc / ids.shape[1]

    return run


def run_speed(args) -> dict:
    torch.set_num_threads(args.threads)
    models = _speed_models(args.speed_d_model, args.speed_layers)
    rng = np.random.default_rng(0)
    out: dict = {"d_model": args.speed_d_model, "n_layers": args.speed_layers, "chunk": args.speed_chunk,
                 "params": {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in models.items()},
                 "causal": {k: c for k, (_, c) in models.items()}, "rows": []}  # fmt: skip
    if "BM" not in models:
        out["note"] = "Caduceus-style backbone (mixer BM, branch gen-models) not registered here: skipped"
    for L in args.speed_lengths:
        ids = torch.from_numpy(rng.integers(7, 11, size=(1, L))).long()
        chunk = min(L, args.speed_chunk)
        fns = {k: _embed_fn(m, c, ids, chunk) for k, (m, c) in models.items()}
        if L <= args.speed_interleave_max:
            t = interleaved(fns, repeats=args.repeats)
            peaks = {k: _peak_mib(fn) for k, fn in fns.items()}
        else:  # one run each (minutes at 1M on one thread): timed and peak-measured at once
            t, peaks = {}, {}
            for k, fn in fns.items():
                t0 = time.perf_counter()
                peaks[k] = _peak_mib(fn)
                t[k] = {"time_s": time.perf_counter() - t0}
        for k in fns:
            row = {"model": k, "length": L, "chunk": chunk, "time_s": round(t[k]["time_s"], 4),
                   "bases_per_s": round(L / t[k]["time_s"]), "peak_mib": peaks[k],
                   "mode": "one call" if chunk == L else ("carried state" if models[k][1] else "independent windows")}
            out["rows"].append(row)
            print(f"  speed {k} L={L}: {row['bases_per_s']} bases/s, peak {row['peak_mib']} MiB ({row['mode']})",
                  flush=True)
        ref = t.get("M", {}).get("time_s")
        for row in out["rows"]:
            if row["length"] == L and ref:
                row["time_vs_M"] = round(row["time_s"] / ref, 3)
    return out


# ----------------------------------------------------------------------------- report
def _f(v, nd=3) -> str:
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _model_note(model: dict) -> str:
    """One line on the model row(s): which checkpoint, how long its evaluate() took, or why it is missing."""
    if "metrics" in model and "windows" in model:
        w = model["windows"]
        return (f"Model rows: `{model['checkpoint']}` scored by the pipeline's `evaluate_model` on the baseline's "
                f"windows (`splits.eval_windows`, {w['per_species']} per species; at 32 per species and the "
                f"checkpoint's lengths this is `longstream genomics evaluate --checkpoint {model['checkpoint']}`) "
                f"({model['time_s']} s).")
    if "metrics" in model:
        return f"Model rows: `longstream genomics evaluate --checkpoint {model['checkpoint']}` ({model['time_s']} s)."
    return f"Model: {model.get('error') or model.get('skipped')}."


def render(res: dict) -> str:
    m = res["meta"]
    lines = ["# Genomics benchmark (issue 13)", "",
             f"CPU: {m['cpu']}; threads {m['threads']}; load average (1/5/15 min) at start "
             f"{' / '.join(f'{v:.1f}' for v in m['load_start'])}, end {' / '.join(f'{v:.1f}' for v in m['load_end'])} "
             "(a shared 2-core machine: absolute times are noisy, compare within a row group); "
             f"torch {m['torch']}; {m['date']}. Command: `{m['command']}`", ""]  # fmt: skip
    if "species" in res:
        s = res["species"]
        mm = s["model"].get("metrics", {})
        lines += ["## Species (held-out strains)", "", s["protocol"], "",
                  f"| L | model ({s['model'].get('checkpoint', '-')}) accuracy | k-mer LR accuracy (draw 0) "
                  "| k-mer LR over training draws: min-max (mean) | k-mer macro-F1 | windows | issue's k-mer number |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in s["kmer_logreg"]:
            acc, d = mm.get(f"accuracy_L{r['length']}"), r.get("accuracy_draws") or [r["accuracy"]]
            lines.append(f"| {r['length']} | {_f(acc)} | {_f(r['accuracy'])} | {_f(min(d))}-{_f(max(d))} "
                         f"({_f(sum(d) / len(d))}, {len(d)} draws) | {_f(r['macro_f1'])} | {r['n_eval']} | "
                         f"{_f(r['issue_measured'], 2)} |")
        lines += ["", _model_note(s["model"]), ""]
    if "lm" in res:
        s = res["lm"]
        lines += ["## DNA LM (bits per base, same 512 target bases at every context)", "",
                  "| baseline | bits/base | bases |", "|---|---|---|"]
        lines += [f"| Markov order {r['order']} | {_f(r['bits_per_base'], 4)} | {r['n_bases']} |" for r in s["markov"]]
        mm = s["model"].get("metrics", {})
        lines += [f"| model {s['model']['checkpoint']}, context {c} | {_f(mm.get(f'bpb_C{c}'), 4)} | {mm.get('n', '-')} |"
                  for c in s["contexts"] if f"bpb_C{c}" in mm]  # fmt: skip
        lines += ["", s["note"] + ".", "", _model_note(s["model"]), ""]
    if "cds" in res:
        s = res["cds"]
        keys = [k for k in s if isinstance(s[k], dict) and "strand_mcc" in s[k]]
        lines += [f"## CDS segmentation, M. tuberculosis test region {s['region']} ({s['n_true_genes']} genes)", "",
                  "| method | binary MCC | strand MCC | macro-F1 | exact sens | exact prec | stop sens | stop prec |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for k in keys:
            r = s[k]
            lines.append(f"| {k} | {_f(r['binary_mcc'])} | {_f(r['strand_mcc'])} | {_f(r['macro_f1'])} | "
                         f"{_f(r.get('exact_sensitivity'))} | {_f(r.get('exact_precision'))} | "
                         f"{_f(r.get('stop_sensitivity'))} | {_f(r.get('stop_precision'))} |")  # fmt: skip
        mm = s["model"].get("metrics", {})
        if mm:
            name = s["model"]["checkpoint"]
            lines.append(f"| model {name}, argmax | {_f(mm.get('mcc_binary'))} | {_f(mm.get('mcc'))} | "
                         f"{_f(mm.get('macro_f1'))} | - | - | - | - |")
            lines.append(f"| model {name}, decoded | {_f(mm.get('mcc_binary_decoded'))} | {_f(mm.get('mcc_decoded'))} | "
                         f"{_f(mm.get('macro_f1_decoded'))} | {_f(mm.get('gene_exact_sensitivity'))} | "
                         f"{_f(mm.get('gene_exact_precision'))} | {_f(mm.get('gene_stop_sensitivity'))} | "
                         f"{_f(mm.get('gene_stop_precision'))} |")  # fmt: skip
            for tag, what in (("prior", "its gene-finder prior, decoded"), ("combined", "prior + model, decoded")):
                if f"mcc_{tag}" in mm:
                    lines.append(f"| model {name}, {what} | {_f(mm.get(f'mcc_binary_{tag}'))} | "
                                 f"{_f(mm.get(f'mcc_{tag}'))} | {_f(mm.get(f'macro_f1_{tag}'))} | "
                                 f"{_f(mm.get(f'gene_{tag}_exact_sensitivity'))} | "
                                 f"{_f(mm.get(f'gene_{tag}_exact_precision'))} | "
                                 f"{_f(mm.get(f'gene_{tag}_stop_sensitivity'))} | "
                                 f"{_f(mm.get(f'gene_{tag}_stop_precision'))} |")  # fmt: skip
        lines += ["", f"Issue's Prodigal measurement: {ISSUE_PRODIGAL}.", "", _model_note(s["model"]), ""]
    if "speed" in res:
        s = res["speed"]
        lines += [f"## Speed and memory (random weights, d_model {s['d_model']}, {s['n_layers']} layers, "
                  f"batch 1, {m['threads']} thread(s))", "", f"Parameters: {s['params']}. {s.get('note', '')}", "",
                  "Up to 64K the models are timed interleaved (min of repeats); at 1M each runs once, one "
                  "after the other. Peak RSS is above the pre-run baseline.", "",
                  "| model | L | mode | bases/s | time (s) | time / M | peak RSS (MiB) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['length']} | {r['mode']} | {r['bases_per_s']} | {r['time_s']} | "
                  f"{_f(r.get('time_vs_M'))} | {_f(r['peak_mib'], 1)} |" for r in s["rows"]]  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="genomics data folder (bacteria/, mtb/); default $LONGSTREAM_DATA/genomics")
    ap.add_argument("--tasks", nargs="+", default=["species", "lm", "cds", "speed"],
                    choices=["species", "lm", "cds", "speed"])
    ap.add_argument("--species-checkpoint", default="genomics/mamba-species")
    ap.add_argument("--lm-checkpoint", default="genomics/mamba-lm")
    ap.add_argument("--cds-checkpoint", default="genomics/bimamba-cds")
    ap.add_argument("--no-models", action="store_true", help="baselines only (skip the shipped checkpoints)")
    ap.add_argument("--lengths", type=int, nargs="+", default=list(SPECIES_LENGTHS))
    ap.add_argument("--per-species", type=int, default=32,
                    help="eval windows per species (32 = the windows the shipped species checkpoint is scored on)")
    ap.add_argument("--train-per-species", type=int, default=512)
    ap.add_argument("--lm-points", type=int, default=16)
    ap.add_argument("--markov-orders", type=int, nargs="+", default=[2, 6, 10])
    ap.add_argument("--kmer-draws", type=int, default=5,
                    help="species: fit the k-mer baseline on this many random draws of its training windows")
    ap.add_argument("--kmer-samples", type=int, default=100_000)
    ap.add_argument("--kmer-half-window", type=int, default=96)
    ap.add_argument("--prodigal-meta", action="store_true", help="also run Prodigal's metagenomic mode")
    ap.add_argument("--speed-lengths", type=int, nargs="+", default=[16384, 1 << 20])
    ap.add_argument("--speed-chunk", type=int, default=16384)
    ap.add_argument("--speed-d-model", type=int, default=128)
    ap.add_argument("--speed-layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speed-interleave-max", type=int, default=65536,
                    help="lengths above this are timed by one run per model (no warm-up, no repeats)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--out", default=str(RESULTS / "genomics.json"))
    ap.add_argument("--render", action="store_true", help="rewrite the .md from the .json and exit")
    ap.add_argument("--update", action="store_true",
                    help="replace only the tasks run in an existing --out (each task keeps its own command / date)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.render:
        out.with_suffix(".md").write_text(render(json.loads(out.read_text())))
        return 0
    if args.quick:
        args.lengths = [L for L in args.lengths if L <= 4096]
        args.per_species, args.train_per_species, args.kmer_samples = 16, 64, 20_000
        args.speed_lengths, args.repeats, args.markov_orders = [4096, 32768], 1, [2, 6]
    torch.set_num_threads(args.threads)
    if args.no_models:
        args.species_checkpoint = args.lm_checkpoint = args.cds_checkpoint = None
    root = _data_root(args.data)
    res: dict = {"meta": {"cpu": cpu_name(), "threads": args.threads, "load_start": list(os.getloadavg()),
                          "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
                          "command": "python benchmarks/genomics.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                          "data": str(root)}}  # fmt: skip
    runners = {"species": lambda: run_species(root, args), "lm": lambda: run_lm(root, args),
               "cds": lambda: run_cds(root, args), "speed": lambda: run_speed(args)}
    for task in args.tasks:
        t0 = time.perf_counter()
        print(f"[{task}]", flush=True)
        res[task] = runners[task]()
        res[task]["wall_s"] = round(time.perf_counter() - t0, 1)
        res[task]["command"], res[task]["date"] = res["meta"]["command"], res["meta"]["date"]
    res["meta"]["load_end"] = list(os.getloadavg())
    if args.update and out.is_file():
        old = json.loads(out.read_text())
        old.update({t: res[t] for t in args.tasks})
        updated = old.setdefault("meta", {}).setdefault("updated", {})  # every section's last command, kept
        updated.update({t: res["meta"]["command"] for t in args.tasks})
        res = old
    out.parent.mkdir(parents=True, exist_ok=True)
    text = dumps_strict(res, indent=1)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    out.with_suffix(".md").write_text(render(res))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
