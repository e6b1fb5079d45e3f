"""Genomics evaluation and prediction (species / lm / cds).

Stable metric keys (every task): ``task``, ``headline`` (the task's main number, named by
``headline_metric``), ``headline_metric``, ``n`` (windows / target bases / test bases scored).
Per task (:data:`TASK_METRIC_KEYS`):

- species: ``accuracy`` (at ``data.headline_length``, 16K for the release preset),
  ``accuracy_L{L}`` for every evaluated L, ``macro_f1`` and ``mcc`` at the headline L,
  ``accuracy_by_length`` (``[{"length", "accuracy", "n"}]``) — on ``splits.eval_windows`` of the
  held-out strains;
- lm: ``bits_per_base`` (at the 16K context, else the longest evaluated), ``bpb_C{C}`` for
  every context C, ``bpb_gain_16k_vs_1k`` (``bpb_C1024 - bpb_C16384`` when both exist), on the
  same target bases of the held-out strains (``splits.lm_eval_points``);
- cds: ``mcc`` (strand-aware 3-class per-base MCC), ``mcc_binary`` (CDS vs not), ``macro_f1``
  (3 classes), ``accuracy``, on the test region (last 30%) of M. tuberculosis; with
  ``data.gene_level`` also the gene-level numbers of :mod:`.genes` (``gene_*``, ``*_decoded``)
  and, with ``data.gene_prior`` (default on), those of the supervised gene-finder prior of
  :mod:`.coding_prior` fitted on the training region (``gene_prior_*``, ``*_prior``; the copy a
  ``--model.prior_features`` checkpoint carries, when it has one) and, for a codon-position
  model, the prior plus the model (``gene_combined_*``, ``*_combined``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longstream.pipelines.common import (
    DEMOS_DIR,
    UserError,
    accuracy,
    as_file,
    check_finite_output,
    check_finite_result,
    dumps_strict,
    macro_f1,
    mcc,
    resolve_out,
    write_out,
)

from . import data as D
from . import genes

METRIC_KEYS = ["task", "headline", "headline_metric", "n"]
TASK_METRIC_KEYS = {
    "species": ["accuracy", "macro_f1", "mcc", "accuracy_by_length"],
    "lm": ["bits_per_base"],
    "cds": ["mcc", "mcc_binary", "macro_f1", "accuracy"],
}
EXAMPLE_INPUTS = [str(DEMOS_DIR / "genomics" / "example.fasta")]
DEFAULT_CHECKPOINT = "genomics/mamba-species"
SPECIES_NAMES = ("E.Coli", "H.Pylori", "S.Aureus", "V.Cholerae")  # == splits.SPECIES (class order)


def make_extreme(spec: str, value: float, tmp_dir: Path) -> str:
    """Contract hook: a FASTA like ``spec`` whose last sequence line is the number ``value``.

    DNA holds no numbers the model reads; the one place a number can go is where bases go,
    so ``1e308`` there is a bad character: one ``UserError`` naming the file and line.
    """
    src = Path(spec)
    text = src.read_text() if src.is_file() else f">input\n{spec}\n"
    lines = text.rstrip("\n").split("\n")
    lines[-1] = repr(float(value))
    path = Path(tmp_dir) / f"{src.stem}_extreme.fasta"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _finish(metrics: dict[str, Any], task: str, headline_key: str) -> dict[str, Any]:
    metrics = {"task": task, "headline": metrics[headline_key], "headline_metric": headline_key, **metrics}
    return check_finite_result(metrics, what=f"genomics {task} metrics")


# ---------------------------------------------------------------------------- species
def _species_windows(data: D.SpeciesData, dc, L: int) -> list[tuple[int, np.ndarray]]:
    from . import splits

    out = []
    for sp_idx, strain, chrom, start in splits.eval_windows(data.raw, L, per_species=dc.eval_per_species,
                                                              seed=dc.seed):
        sp = data.species[sp_idx]
        out.append((int(sp_idx), data.genomes[sp][strain][chrom][start : start + L]))
    return out


@torch.no_grad()
def evaluate_species(model, data: D.SpeciesData, device: str | torch.device = "cpu") -> dict[str, Any]:
    from .model import species_logits

    dc = model.cfg.data
    by_len, head = [], None
    for L in dc.eval_lengths:
        wins = _species_windows(data, dc, L)
        if not wins:
            continue
        y = np.array([w[0] for w in wins])
        preds = []
        bs = max(1, dc.eval_batch * max(1, dc.eval_segment // max(L, 1)))  # short windows: bigger batches
        for i in range(0, len(wins), bs):
            x = torch.from_numpy(np.stack([w[1] for w in wins[i : i + bs]]).astype(np.int64))
            logits = species_logits(model, x, segment=dc.eval_segment, device=device)
            check_finite_output(logits, source=f"species windows of {L} bases", what="species scores")
            preds.append(logits.argmax(-1).cpu().numpy())
        p = np.concatenate(preds)
        row = {"length": int(L), "accuracy": accuracy(y, p), "n": len(y)}
        by_len.append(row)
        if L == dc.headline_length or head is None or (head["length"] != dc.headline_length and L > head["length"]):
            head = {**row, "macro_f1": macro_f1(y, p, labels=list(range(len(data.species)))), "mcc": mcc(y, p)}
    if head is None:
        raise UserError("no species evaluation window: the test genomes are shorter than every --data.eval_lengths")
    m: dict[str, Any] = {"accuracy": head["accuracy"], "macro_f1": head["macro_f1"], "mcc": head["mcc"],
                         "headline_length": head["length"], "n": head["n"]}
    m.update({f"accuracy_L{r['length']}": r["accuracy"] for r in by_len})
    m["accuracy_by_length"] = by_len
    return _finish(m, "species", "accuracy")


# ---------------------------------------------------------------------------- lm
@torch.no_grad()
def evaluate_lm(model, data: D.SpeciesData, device: str | torch.device = "cpu") -> dict[str, Any]:
    from . import splits
    from .model import lm_target_nll

    dc = model.cfg.data
    pts = splits.lm_eval_points(data.raw, n=dc.lm_points, seed=dc.seed, contexts=tuple(dc.lm_contexts),
                                target=dc.lm_target)
    m: dict[str, Any] = {}
    n_bases = 0
    for C in dc.lm_contexts:
        usable = [(sp, st, ch, p) for sp, st, ch, p in pts if p - C >= 0]
        if len(usable) < len(pts):
            raise UserError(f"lm evaluation: {len(pts) - len(usable)} target points have less than {C} bases "
                            "before them; lower --data.lm_contexts")
        total, count = 0.0, 0
        for i in range(0, len(usable), dc.eval_batch):
            rows = [data.genomes[data.species[sp]][st][ch][p - C : p] for sp, st, ch, p in usable[i : i + dc.eval_batch]]
            x = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)
            nll = lm_target_nll(model, x, dc.lm_target, segment=dc.eval_segment)
            check_finite_output(nll, source=f"lm contexts of {C} bases", what="log-likelihoods")
            total += float(nll.sum())
            count += nll.numel()
        m[f"bpb_C{C}"] = total / count / math.log(2)
        n_bases = count
    head_c = 16384 if 16384 in dc.lm_contexts else max(dc.lm_contexts)
    m["bits_per_base"] = m[f"bpb_C{head_c}"]
    m["headline_context"] = head_c
    if 1024 in dc.lm_contexts and 16384 in dc.lm_contexts:
        m["bpb_gain_16k_vs_1k"] = m["bpb_C1024"] - m["bpb_C16384"]
    m["n"] = n_bases
    return _finish(m, "lm", "bits_per_base")


# ---------------------------------------------------------------------------- cds
def _call_metrics(calls: list, data: D.CdsData, lo: int, hi: int, gene_prefix: str, suffix: str) -> dict[str, Any]:
    """Gene-level numbers of ``calls`` against the annotated CDS fully inside ``[lo, hi)``
    (``{gene_prefix}exact_sensitivity`` ...) and per-base MCC / binary MCC / macro-F1 of their labels
    (``mcc_{suffix}`` ...)."""
    true = [(f.start - lo, f.end - lo, f.strand) for f in data.record.cds if f.start >= lo and f.end <= hi]
    m = {f"{gene_prefix}{k}": v for k, v in genes.gene_metrics(calls, true).items()}
    dec = genes.genes_to_labels(calls, hi - lo)
    y = data.labels[lo:hi]
    m.update({f"mcc_{suffix}": mcc(y, dec), f"mcc_binary_{suffix}": mcc(y > 0, dec > 0),
              f"macro_f1_{suffix}": macro_f1(y, dec, labels=[0, 1, 2])})
    return m


def gene_level_metrics(probs: np.ndarray, data: D.CdsData, lo: int, hi: int) -> dict[str, Any]:
    """Gene calls decoded from the model's per-base probabilities (ORF-aware; frame by frame for a
    ``--model.cds_frames`` model: ``genes.decode_model_track``), scored by :func:`_call_metrics`
    (``gene_*``, ``*_decoded``)."""
    calls = genes.decode_model_track(probs, data.record.sequence[lo:hi].upper())
    return _call_metrics(calls, data, lo, hi, "gene_", "decoded")


def prior_gene_metrics(data: D.CdsData, lo: int, hi: int, probs: np.ndarray | None = None,
                       model_weight: float = 0.25, prior: Any = None) -> dict[str, Any]:
    """Gene calls of the supervised gene-finder prior (``coding_prior.CodingPrior``: 3-periodic
    Markov coding model + start-site model of the training region ``[0, split)``; ``prior`` if
    given, such as the one a checkpoint carries, else fitted here), scored by :func:`_call_metrics`
    (``gene_prior_*``, ``*_prior``); with 7-class ``probs`` (a ``--model.cds_frames`` model) also
    the prior plus ``model_weight`` times the model's per-frame scores (``*_combined``)."""
    from .coding_prior import CodingPrior

    prior = prior if prior is not None else CodingPrior.fit_region(data.record, data.split)
    test_seq = data.record.sequence[lo:hi].upper()
    m = _call_metrics(prior.decode(test_seq), data, lo, hi, "gene_prior_", "prior")
    if probs is not None and probs.shape[1] == 7:
        calls = prior.decode(test_seq, model_frames=genes.frame_scores_from_probs(probs), model_weight=model_weight)
        m.update(_call_metrics(calls, data, lo, hi, "gene_combined_", "combined"))
    return m


@torch.no_grad()
def evaluate_cds(model, data: D.CdsData, device: str | torch.device = "cpu") -> dict[str, Any]:
    from .model import carried_prior, cds_probs

    dc = model.cfg.data
    lo, hi = data.split, len(data.ids)
    if dc.cds_max_test > 0:
        hi = min(hi, lo + dc.cds_max_test)
    ids = torch.from_numpy(data.ids[lo:hi].astype(np.int64)).to(device)
    full = cds_probs(model, ids, window=dc.train_len, stride=dc.cds_stride or dc.train_len // 2,
                     batch=dc.eval_batch, keep_frames=True).numpy()  # (L, 3), or (L, 7) with model.cds_frames
    check_finite_output(full, source="the M. tuberculosis test region", what="coding probabilities")
    probs = genes.collapse_frames(full)
    pred = probs.argmax(-1)
    y = data.labels[lo:hi]
    m: dict[str, Any] = {"mcc": mcc(y, pred), "mcc_binary": mcc(y > 0, pred > 0),
                         "macro_f1": macro_f1(y, pred, labels=[0, 1, 2]), "accuracy": accuracy(y, pred),
                         "test_start": lo, "test_end": hi, "n": int(hi - lo)}
    if dc.gene_level:
        m.update(gene_level_metrics(full, data, lo, hi))
        if dc.gene_prior:
            m.update(prior_gene_metrics(data, lo, hi, full, dc.gene_model_weight, prior=carried_prior(model)))
    return _finish(m, "cds", "mcc")


def evaluate_model(model, data, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Metrics of ``model`` on its task's held-out data (see the module docstring)."""
    fn = {"species": evaluate_species, "lm": evaluate_lm, "cds": evaluate_cds}[model.task]
    was = model.training
    try:
        return fn(model, data, device=device)
    finally:
        model.train(was)


def evaluate(checkpoint: str, data: str | None = None) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on the genomics data folder ``data`` (default: ``$LONGSTREAM_DATA/genomics``).

    ``data`` is the folder holding ``bacteria/`` and ``mtb/``.
    """
    from .model import from_pretrained

    model = from_pretrained(checkpoint)
    if data:
        p = Path(data)
        if not p.is_dir():
            raise UserError(f"--data {data}: not a folder; give the genomics data folder (holding bacteria/ and mtb/)")
        model.cfg.data.root = str(p)
    root = str(D.genomics_root(model.cfg.data))
    d = D.load_cds(root) if model.task == "cds" else D.load_species(root)
    return evaluate_model(model, d)


# ---------------------------------------------------------------------------- predict
def read_sequences(spec: str) -> list[tuple[str, str, str]]:
    """``[(input, record name, sequence)]`` of a FASTA / FASTA.gz file or a literal DNA string."""
    from . import formats

    p = as_file(spec)
    if p is None:
        seq = spec.strip()
        if not seq or not seq.replace("\n", "").isalpha():
            raise UserError(f"input {spec[:40]!r} is neither an existing FASTA file nor a DNA sequence "
                            "(letters A, C, G, T, N)")
        return [(spec, "input", seq)]
    recs = formats.read_fasta(p)
    if not recs:
        raise UserError(f"{p}: no FASTA record; a FASTA file starts with a '>name' line")
    return [(str(p), name, seq) for name, seq in recs.items()]


def _encode(spec: str, name: str, seq: str) -> np.ndarray:
    try:
        return D.encode(seq)
    except ValueError as e:
        raise UserError(f"{spec}: record {name!r}: {e}; use only A, C, G, T, N (or IUPAC codes)") from None


@torch.no_grad()
def predict(checkpoint: str, inputs: list[str], out: str | None = None) -> list[dict[str, Any]]:
    """Per record: species probabilities (species), bits per base (lm), or for cds the coding
    fraction, per-base coding ``segments`` and the ``genes`` of ``model.call_genes`` (each
    ``[start, end, "+"|"-"]``).

    ``--out f.tsv`` writes a tab-separated table (without the ``segments`` / ``genes`` lists),
    any other name JSON.
    """
    from .model import call_genes, cds_probs, from_pretrained, lm_target_nll, species_logits

    out_file = resolve_out(out)[0] if out else None  # the shared --out rule, before any work
    model = from_pretrained(checkpoint)
    dc = model.cfg.data
    recs = [(src, name, _encode(src, name, seq)) for spec in inputs for src, name, seq in read_sequences(spec)]
    results = []
    for spec, name, ids in recs:
        if len(ids) < 2:
            raise UserError(f"{spec}: record {name!r} has {len(ids)} base(s); give at least 2")
        x = torch.from_numpy(ids.astype(np.int64))
        row: dict[str, Any] = {"input": spec, "record": name, "length": int(len(ids))}
        if model.task == "species":
            p = torch.softmax(species_logits(model, x[None], segment=dc.eval_segment).float(), -1)[0]
            check_finite_output(p, source=f"{spec}: record {name!r}", what="species probabilities")
            row["species"] = SPECIES_NAMES[int(p.argmax())]
            row["probs"] = {sp: round(float(v), 4) for sp, v in zip(SPECIES_NAMES, p)}
        elif model.task == "lm":
            nll = lm_target_nll(model, x[None], len(ids) - 1, segment=dc.eval_segment)
            check_finite_output(nll, source=f"{spec}: record {name!r}", what="log-likelihoods")
            row["bits_per_base"] = round(float(nll.mean()) / math.log(2), 4)
        else:
            full = cds_probs(model, x, window=dc.train_len, stride=dc.cds_stride or dc.train_len // 2,
                             keep_frames=True).numpy()
            check_finite_output(full, source=f"{spec}: record {name!r}", what="coding probabilities")
            lab = genes.collapse_frames(full).argmax(-1)
            row["coding_fraction"] = round(float((lab > 0).mean()), 4)
            row["segments"] = _segments(lab)
            calls = call_genes(model, full, _base_codes(ids))
            row["genes"] = [[g.start, g.end, "+" if g.strand > 0 else "-"] for g in calls]
        results.append(row)
    if out_file is not None:
        text = _tsv(results) if out_file.suffix.lower() == ".tsv" else dumps_strict(results, indent=2) + "\n"
        write_out(out_file, text)
    return results


def _base_codes(ids: np.ndarray) -> np.ndarray:
    """Token ids -> the ORF decoder's base codes: A C G T -> 0..3, anything else (N, specials) -> 4."""
    b = ids.astype(np.int64) - 7  # the DNA tokenizer's layout: A C G T N at ids 7..11
    return np.where((b >= 0) & (b <= 3), b, 4)


def _segments(lab: np.ndarray, min_len: int = 60) -> list[list]:
    """Runs of predicted CDS labels as ``[start, end, "+"|"-"]`` (0-based, half-open, >= ``min_len``)."""
    out, i, n = [], 0, len(lab)
    while i < n:
        j = i
        while j < n and lab[j] == lab[i]:
            j += 1
        if lab[i] > 0 and j - i >= min_len:
            out.append([int(i), int(j), "+" if lab[i] == 1 else "-"])
        i = j
    return out


def _tsv(results: list[dict[str, Any]]) -> str:
    cols = [k for k in results[0] if k not in ("probs", "segments", "genes")]  # lists: JSON output only
    extra = list(results[0].get("probs", {}))
    lines = ["\t".join(cols + [f"p_{s}" for s in extra])]
    for r in results:
        vals = [str(r[c]) for c in cols] + [str(r["probs"][s]) for s in extra]
        lines.append("\t".join(vals))
    return "\n".join(lines) + "\n"

