"""Gradio tab of the template pipeline: generate (or paste) a series and classify it.

``build_demo()`` builds the tab; nothing runs on import and gradio is imported lazily.
"""

from __future__ import annotations

from typing import Any

from longstream.pipelines.common import ModelCache, UserError, connect, number_input

DEMO_TITLE = "Template (sine frequency)"
# For the registry-generated demo tests (pipelines/CONTRACT.md, "demo.py"): after the example
# ran, this bad value in this component must give exactly one error containing ``expect``
# and clear ``#template-output``.
DEMO_BAD_INPUT = {"elem_id": "template-series", "value": "0.1, 0.5, oops", "expect": "pasted series"}


def _load(checkpoint: str):
    from .model import from_pretrained

    return from_pretrained(checkpoint)


MODELS = ModelCache(_load, maxsize=2)  # loaded once per checkpoint name, not on every click


def classify(series_text: str, label: int, noise: float, history: list[dict[str, Any]] | None,
             checkpoint: str | None = None):
    """Returns ``(summary text, {class: prob}, updated per-user history)``."""
    import torch

    from .data import parse_series, synth
    from .evaluate import DEFAULT_CHECKPOINT
    from .model import predict_proba

    history = list(history or [])
    label = number_input(label, "true class", lo=0, hi=3, integer=True)
    noise = number_input(noise, "noise std", lo=0.0, hi=10.0)
    model = MODELS.get(checkpoint or DEFAULT_CHECKPOINT)
    cfg = model.cfg
    if series_text and series_text.strip():
        x = parse_series(series_text, "pasted series")
        src = f"pasted series of {len(x)} values"
    else:
        g = torch.Generator().manual_seed(len(history))  # a new series on every click
        x = synth(torch.tensor([int(label)]), cfg.data.seq_len, float(noise), g)[0]
        src = f"generated class {int(label)} ({int(label) + 1} cycles), noise {float(noise):.2f}"
    if len(x) < 2:
        raise UserError("give at least 2 values")
    probs = predict_proba(model, x)[0]
    pred = int(probs.argmax())
    history.append({"source": src, "pred": pred})
    text = (f"Predicted class {pred} (~{pred + 1} cycles per window), p={float(probs[pred]):.3f}\n"
            f"input: {src}\nrequests this session: {len(history)}")
    return text, {f"class {i} ({i + 1} cycles)": float(p) for i, p in enumerate(probs)}, history


def build_demo(checkpoint: str | None = None):
    """The template tab as a ``gr.Blocks`` (not launched)."""
    import gradio as gr

    def run(series_text, label, noise, history):
        return classify(series_text, label, noise, history, checkpoint)

    with gr.Blocks(title=DEMO_TITLE) as demo:
        gr.Markdown(
            "### Template pipeline: which frequency is this noisy sine?\n"
            "Pick a class and noise level (a series is generated), or paste comma-separated numbers. "
            "The model (attention backbone, shipped checkpoint `template/sine-attn`) predicts the frequency bin."
        )
        history = gr.State([])  # per-user session state
        with gr.Row():
            label = gr.Slider(0, 3, value=2, step=1, label="true class (cycles - 1)", elem_id="template-class")
            noise = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="noise std", elem_id="template-noise")
        series = gr.Textbox(label="or paste a series (comma-separated numbers)", lines=2,
                            elem_id="template-series")
        btn = gr.Button("Classify", variant="primary", elem_id="template-run")
        out = gr.Textbox(label="result", lines=3, elem_id="template-output")
        probs = gr.Label(label="class probabilities", num_top_classes=4)
        # connect: a UserError (e.g. a bad pasted series) shows once, and out/probs are cleared
        connect(btn.click, run, [series, label, noise, history], [out, probs, history], api_name="template_classify")
        gr.Examples([["", 1, 0.2], ["0,1,0,-1,0,1,0,-1,0,1,0,-1,0,1,0,-1", 0, 0.0]], [series, label, noise])
    return demo
