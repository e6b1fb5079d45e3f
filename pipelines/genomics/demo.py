"""Gradio tab of the genomics pipeline (minimal): paste a DNA sequence -> species probabilities.

``build_demo()`` builds the tab; nothing runs on import and gradio is imported lazily.
(Helper gen-apps extends it: coding-probability track, gene arrows, variant scores.)
"""

from __future__ import annotations

from longstream.pipelines.common import ModelCache, UserError, connect

DEMO_TITLE = "Genomics (species from DNA)"
DEMO_BAD_INPUT = {"elem_id": "genomics-sequence", "value": "ACGTACGT12XZ", "expect": "pasted sequence"}
MAX_BASES = 200_000


def _load(checkpoint: str):
    from .model import from_pretrained

    return from_pretrained(checkpoint)


MODELS = ModelCache(_load, maxsize=2)  # loaded once per checkpoint name, not on every click


def _example_sequence() -> str:
    from .evaluate import EXAMPLE_INPUTS

    text = open(EXAMPLE_INPUTS[0]).read().split(">")[1]
    return "".join(text.splitlines()[1:])


def classify(sequence: str, checkpoint: str | None = None):
    """Returns ``(summary text, {species: prob})`` for a pasted sequence."""
    import torch

    from . import data as D
    from .evaluate import DEFAULT_CHECKPOINT, SPECIES_NAMES
    from .model import species_logits

    seq = "".join((sequence or "").split())
    if seq.startswith(">"):
        raise UserError("pasted sequence: paste the bases only, without the '>' header line")
    if len(seq) < 16:
        raise UserError("pasted sequence: give at least 16 bases (A, C, G, T, N)")
    if len(seq) > MAX_BASES:
        raise UserError(f"pasted sequence: {len(seq)} bases is over the page's limit of {MAX_BASES}; "
                        "use `longstream genomics predict FILE.fasta` for longer inputs")
    try:
        ids = D.encode(seq)
    except ValueError as e:
        raise UserError(f"pasted sequence: {e}; use only A, C, G, T, N") from None
    model = MODELS.get(checkpoint or DEFAULT_CHECKPOINT)
    x = torch.from_numpy(ids.astype("int64"))[None]
    p = torch.softmax(species_logits(model, x, segment=model.cfg.data.eval_segment).float(), -1)[0]
    best = int(p.argmax())
    text = f"{SPECIES_NAMES[best]} (p={float(p[best]):.3f}) from {len(seq)} bases"
    return text, {sp: float(v) for sp, v in zip(SPECIES_NAMES, p)}


def build_demo(checkpoint: str | None = None):
    """The genomics tab as a ``gr.Blocks`` (not launched)."""
    import gradio as gr

    def run(sequence):
        return classify(sequence, checkpoint)

    with gr.Blocks(title=DEMO_TITLE) as demo:
        gr.Markdown("### Which bacterium is this DNA from?\nPaste bases (A, C, G, T, N); longer windows are "
                    "classified more reliably (the model streams any length with bounded memory).")
        seq = gr.Textbox(label="pasted sequence", lines=6, elem_id="genomics-sequence")
        btn = gr.Button("Classify", variant="primary", elem_id="genomics-run")
        out = gr.Textbox(label="result", lines=2, elem_id="genomics-output")
        probs = gr.Label(label="species probabilities", num_top_classes=4)
        connect(btn.click, run, [seq], [out, probs], api_name="genomics_species")
        gr.Examples([[_example_sequence()]], [seq])
    return demo
