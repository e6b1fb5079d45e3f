"""Gradio tab of the genomics pipeline: species, a coding-probability track with gene arrows, variant scores.

Paste bases or upload a FASTA (its first record), optionally list edits as ``POS:ALT``
(1-based, e.g. ``120:T, 455:G``), and press Analyse:

- **species**: probabilities of the four bacterial species (``genomics/mamba-species``);
- **coding track**: the per-base probability of a plus-strand (up) and minus-strand (down)
  coding sequence from the CDS segmentation model (``genomics/bimamba-cds``), with the genes
  that :func:`.genes.decode_genes` calls from it drawn as arrows on their strands;
- **variant scores**: the two-strand log-likelihood ratio of each edit from the DNA language
  model (``genomics/mamba-lm``; :mod:`.variants`), negative = the LM finds the edit unlikely.

A checkpoint that is not installed leaves its panel empty with a note in the summary (the
species model is required). ``build_demo()`` builds the tab; nothing runs on import and
gradio / matplotlib are imported lazily.
"""

from __future__ import annotations

from typing import Any

from longstream.pipelines.common import ModelCache, UserError, connect

DEMO_TITLE = "Genomics (species, genes, variants)"
DEMO_BAD_INPUT = {"elem_id": "genomics-sequence", "value": "ACGTACGT12XZ", "expect": "pasted sequence"}
MAX_BASES = 200_000
MAX_EDITS = 64
CHECKPOINTS = {"species": "genomics/mamba-species", "cds": "genomics/bimamba-cds", "lm": "genomics/mamba-lm"}
VARIANT_COLUMNS = ["pos", "ref", "alt", "score", "llr_forward", "llr_reverse"]


def _load(checkpoint: str):
    from .model import from_pretrained

    return from_pretrained(checkpoint)


MODELS = ModelCache(_load, maxsize=3)  # loaded once per checkpoint name, not on every click


def _example_sequence() -> str:
    from .evaluate import EXAMPLE_INPUTS

    text = open(EXAMPLE_INPUTS[0]).read().split(">")[1]
    return "".join(text.splitlines()[1:])


def _example_edits(seq: str) -> str:
    picks = [p for p in (100, 200, 300) if p <= len(seq)]
    return ", ".join(f"{p}:{'ACGT'.replace(seq[p - 1].upper(), '')[0]}" for p in picks)


def _available(name: str) -> bool:
    """A checkpoint directory, or a hub name that is installed (shipped or cached)."""
    from pathlib import Path

    from longstream.pipelines.hub import list_models

    if Path(name).is_dir():
        return True
    short = name if "/" in name else f"genomics/{name}"
    return any(e.name == short for e in list_models("genomics"))


def read_input(sequence: str | None, upload: str | None) -> tuple[str, str]:
    """``(bases, where)`` from an uploaded FASTA (its first record) or the pasted text."""
    from . import data as D

    if upload:
        from .formats import read_fasta

        recs = read_fasta(upload)
        name, seq = next(iter(recs.items()))
        where = f"uploaded FASTA {name!r}"
    else:
        seq = "".join((sequence or "").split())
        where = "pasted sequence"
        if seq.startswith(">"):
            raise UserError("pasted sequence: paste the bases only, without the '>' header line (or upload the FASTA)")
    if len(seq) < 16:
        raise UserError(f"{where}: give at least 16 bases (A, C, G, T, N)")
    if len(seq) > MAX_BASES:
        raise UserError(f"{where}: {len(seq)} bases is over the page's limit of {MAX_BASES}; use "
                        "`longstream genomics predict FILE.fasta` for longer inputs",
                        ui_message=f"{where}: {len(seq)} bases is over the page's limit of {MAX_BASES}; "
                        "use the command line (longstream genomics predict) for longer inputs")
    try:
        D.encode(seq)
    except ValueError as e:
        raise UserError(f"{where}: {e}; use only A, C, G, T, N") from None
    return seq, where


def species_probs(model, seq: str) -> dict[str, float]:
    import torch

    from . import data as D
    from .evaluate import SPECIES_NAMES
    from .model import species_logits

    x = torch.from_numpy(D.encode(seq).astype("int64"))[None]
    p = torch.softmax(species_logits(model, x, segment=model.cfg.data.eval_segment).float(), -1)[0]
    return {sp: float(v) for sp, v in zip(SPECIES_NAMES, p)}


def coding_track(model, seq: str):
    """``(probs (L, 3) numpy, genes)``: per-base [non-coding, plus CDS, minus CDS] and the decoded genes."""
    import torch

    from . import data as D
    from .genes import collapse_frames
    from .model import call_genes, cds_probs

    dc = model.cfg.data
    ids = torch.from_numpy(D.encode(seq).astype("int64"))
    full = cds_probs(model, ids, window=dc.train_len, stride=dc.cds_stride or dc.train_len // 2,
                     keep_frames=True).numpy()
    return collapse_frames(full), call_genes(model, full, seq.upper())


def track_figure(probs, genes, edits: list[tuple[int, str, str]] = ()):
    """A matplotlib Figure: plus-strand coding probability up, minus-strand down, genes as arrows."""
    import numpy as np
    from matplotlib.figure import Figure

    L = probs.shape[0]
    x = np.arange(L)
    fig = Figure(figsize=(10, 3.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.fill_between(x, 0, probs[:, 1], color="tab:blue", alpha=0.6, lw=0, label="P(CDS, + strand)")
    ax.fill_between(x, 0, -probs[:, 2], color="tab:orange", alpha=0.6, lw=0, label="P(CDS, - strand)")
    head = max(L / 80, 3)
    for g in genes:
        y = 1.22 if g.strand > 0 else -1.22
        length = g.end - g.start
        tail, dx = (g.start, length) if g.strand > 0 else (g.end, -length)
        ax.arrow(tail, y, dx, 0, width=0.1, head_width=0.22, head_length=min(head, length),
                 length_includes_head=True, color="tab:blue" if g.strand > 0 else "tab:orange")
    for s, _, _ in edits:
        ax.axvline(s, color="crimson", lw=0.8, alpha=0.8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlim(0, L)
    ax.set_ylim(-1.45, 1.45)
    ax.set_yticks([-1, -0.5, 0, 0.5, 1], ["1", "0.5", "0", "0.5", "1"])
    ax.set_xlabel("position (bases)")
    ax.set_ylabel("coding probability\n(+ up, - down)")
    ax.set_title(f"{len(genes)} predicted gene(s); arrows: genes on the + (top) and - (bottom) strand", fontsize=9)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    fig.tight_layout()
    return fig


def analyse(sequence: str | None, upload: str | None = None, edits: str | None = None,
            checkpoints: dict[str, str] | None = None) -> tuple[str, dict[str, float], Any, list[list[Any]]]:
    """``(summary, {species: prob}, figure or None, variant rows)`` for the page (see the module docstring)."""
    from .variants import parse_edits, score_edits

    ck = {**CHECKPOINTS, **(checkpoints or {})}
    seq, where = read_input(sequence, upload)
    edit_list = parse_edits(edits or "", seq, what="edits (POS:ALT)")
    if len(edit_list) > MAX_EDITS:
        raise UserError(f"edits (POS:ALT): {len(edit_list)} edits; the page scores at most {MAX_EDITS}")
    probs = species_probs(MODELS.get(ck["species"]), seq)
    best = max(probs, key=probs.get)
    lines = [f"{best} (p={probs[best]:.3f}) from {len(seq)} bases of the {where}"]
    fig = None
    if _available(ck["cds"]):
        track, genes = coding_track(MODELS.get(ck["cds"]), seq)
        fig = track_figure(track, genes, edit_list)
        plus = sum(g.strand > 0 for g in genes)
        lines.append(f"coding: {float((track[:, 1:].sum(1) > 0.5).mean()):.1%} of bases; {len(genes)} gene(s) "
                     f"({plus} on +, {len(genes) - plus} on -)")
    else:
        lines.append(f"coding track: checkpoint {ck['cds']} is not installed")
    rows: list[list[Any]] = []
    if edit_list:
        if _available(ck["lm"]):
            scored = score_edits(MODELS.get(ck["lm"]), seq, edit_list)
            rows = [[r[c] if not isinstance(r[c], float) else round(r[c], 4) for c in VARIANT_COLUMNS] for r in scored]
            worst = min(scored, key=lambda r: r["score"])
            lines.append(f"variants: {len(rows)} scored; lowest {worst['pos']}:{worst['alt']} "
                         f"(LLR {worst['score']:.3f}; negative = unlikely under the DNA LM)")
        else:
            lines.append(f"variant scores: checkpoint {ck['lm']} is not installed")
    return "\n".join(lines), probs, fig, rows


def classify(sequence: str, checkpoint: str | None = None):
    """Returns ``(summary text, {species: prob})`` for a pasted sequence (species only)."""
    seq, where = read_input(sequence, None)
    probs = species_probs(MODELS.get(checkpoint or CHECKPOINTS["species"]), seq)
    best = max(probs, key=probs.get)
    return f"{best} (p={probs[best]:.3f}) from {len(seq)} bases", probs


def build_demo(checkpoint: str | None = None, checkpoints: dict[str, str] | None = None):
    """The genomics tab as a ``gr.Blocks`` (not launched). ``checkpoint``: the species model."""
    import gradio as gr

    ck = {**CHECKPOINTS, **(checkpoints or {}), **({"species": checkpoint} if checkpoint else {})}

    def run(sequence, upload, edits):
        return analyse(sequence, upload, edits, ck)

    with gr.Blocks(title=DEMO_TITLE) as demo:
        gr.Markdown("### Bacterial DNA: species, genes and variant effects\nPaste bases (A, C, G, T, N) or upload a "
                    "FASTA; list edits as `POS:ALT` (1-based) to score them with the DNA language model "
                    "(log-likelihood ratio averaged over both strands; negative = unlikely).")
        example = _example_sequence()  # the tab opens on a real example, like every other tab
        with gr.Row():
            seq = gr.Textbox(label="pasted sequence", value=example, lines=6, elem_id="genomics-sequence")
            upload = gr.File(label="or upload a FASTA", file_types=[".fa", ".fasta", ".fna", ".gz"], type="filepath",
                             elem_id="genomics-upload")
        edits = gr.Textbox(label="edits (POS:ALT)", value=_example_edits(example), placeholder="120:T, 455:G",
                           elem_id="genomics-edits")
        btn = gr.Button("Analyse", variant="primary", elem_id="genomics-run")
        out = gr.Textbox(label="result", lines=3, elem_id="genomics-output")
        probs = gr.Label(label="species probabilities", num_top_classes=4)
        plot = gr.Plot(label="coding probability and predicted genes")
        table = gr.Dataframe(headers=VARIANT_COLUMNS, label="variant scores", interactive=False)
        connect(btn.click, run, [seq, upload, edits], [out, probs, plot, table], api_name="genomics_analyse",
                flags={"--fasta": "the upload box"})
        gr.Examples([[example, _example_edits(example)]], [seq, edits])
    return demo
