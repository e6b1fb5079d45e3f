"""Gradio tab of the vision pipeline: upload an image -> top-5 labels and a bar chart;
a second panel plots the efficiency curve of Vim against DeiT from
``benchmarks/results/vision_efficiency.json`` (written by ``benchmarks/vision.py --efficiency``).

The uploaded image is converted like ``longstream vision predict`` does (greyscale, resized
onto a 28x28 square, inverted when its background is light: Fashion-MNIST is light on
black); the panel shows that model input too. ``build_demo()`` builds the tab; nothing runs
on import and gradio / matplotlib are imported lazily.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longstream.pipelines.common import REPO_ROOT, ModelCache, connect

DEMO_TITLE = "Vision (Fashion-MNIST)"
DEMO_BAD_INPUT = {"elem_id": "vision-image", "file": ("not-an-image.png", "hello, this is text\n"),
                  "expect": "not-an-image.png"}
EFFICIENCY_JSON = REPO_ROOT / "benchmarks" / "results" / "vision_efficiency.json"


def _load(checkpoint: str):
    from .model import from_pretrained

    return from_pretrained(checkpoint)


MODELS = ModelCache(_load, maxsize=2)  # loaded once per checkpoint name, not on every click


def _bar_chart(top: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    labels = [t["label"] for t in top][::-1]
    probs = [t["probability"] for t in top][::-1]
    ax.barh(labels, probs, color="#4C72B0")
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    for i, p in enumerate(probs):
        ax.text(min(p + 0.01, 0.9), i, f"{p:.1%}", va="center", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def classify(upload: str | None, checkpoint: str | None = None):
    """``(label -> prob dict, bar chart, 28x28 model input as an image array)`` for one uploaded file
    (the first example image when nothing is uploaded)."""
    import torch

    from .evaluate import DEFAULT_CHECKPOINT, EXAMPLE_INPUTS, TOP_K, load_input

    upload = upload or EXAMPLE_INPUTS[0]  # nothing uploaded: the first example image
    from .config import DataConfig
    from .data import normalize

    load_input(str(upload), DataConfig())  # a bad file -> UserError naming it, before a model loads
    model = MODELS.get(checkpoint or DEFAULT_CHECKPOINT)
    cfg = model.cfg
    x8 = load_input(str(upload), cfg.data)  # (c, s, s) uint8 as this model takes it

    with torch.no_grad():
        model.eval()
        probs = torch.softmax(model(normalize(x8[None], cfg.data)).float(), -1)[0]
    k = min(TOP_K, len(probs))
    vals, idx = probs.topk(k)
    top = [{"label": cfg.data.class_names[int(i)], "probability": float(p)} for p, i in zip(vals, idx)]
    shown = x8.permute(1, 2, 0).repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()
    return {t["label"]: t["probability"] for t in top}, _bar_chart(top), shown.squeeze(-1) if shown.shape[-1] == 1 else shown


def efficiency_points(path: str | Path = EFFICIENCY_JSON) -> dict[str, list[tuple[int, float, float]]]:
    """``{model: [(resolution, median seconds per image, peak MiB), ...]}`` from the report of
    ``benchmarks/vision.py --efficiency`` (its first, 1-thread section); ``{}`` when absent or unreadable."""
    p = Path(path)
    try:
        rep = json.loads(p.read_text())
        points = rep["sections"][0]["points"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}
    out: dict[str, list[tuple[int, float, float]]] = {}
    for pt in points if isinstance(points, list) else []:
        for model, v in pt.items():
            if isinstance(v, dict) and isinstance(v.get("median_s"), (int, float)):
                mem = v.get("peak_mib")
                out.setdefault(model, []).append((int(pt["res"]), float(v["median_s"]),
                                                  float(mem) if isinstance(mem, (int, float)) else float("nan")))
    return {k: sorted(v) for k, v in out.items()}


EFFICIENCY_LABELS = {"vim": "Vim-Ti", "deit_fused": "DeiT-Ti (fused attention)",
                     "deit_explicit": "DeiT-Ti (explicit attention)"}


def efficiency_figure(path: str | Path = EFFICIENCY_JSON):
    """Time and peak memory per image against resolution, one line per model, or ``None``."""
    pts = efficiency_points(path)
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4))
    for model, rows in pts.items():
        res = [r for r, _, _ in rows]
        ax_t.plot(res, [t * 1000 for _, t, _ in rows], marker="o", label=EFFICIENCY_LABELS.get(model, model))
        mem = [(r, m) for r, _, m in rows if m == m and m > 0]  # NaN / non-positive: not measured
        if mem:
            ax_m.plot([r for r, _ in mem], [m for _, m in mem], marker="o", label=EFFICIENCY_LABELS.get(model, model))
    for ax, ylab in ((ax_t, "ms per image (median, batch 1)"), (ax_m, "peak activation memory (MiB)")):
        ax.set_xlabel("image size (px)")
        ax.set_ylabel(ylab)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def build_demo(checkpoint: str | None = None):
    """The vision tab as a ``gr.Blocks`` (not launched)."""
    import gradio as gr

    from .data import IMAGE_SUFFIXES
    from .evaluate import DEFAULT_CHECKPOINT, EXAMPLE_INPUTS

    def run(upload):
        return classify(upload, checkpoint)

    with gr.Blocks(title=DEMO_TITLE) as demo:
        gr.Markdown(
            "### Fashion-MNIST with Vision Mamba\n"
            f"Upload a picture of a garment, shoe or bag. The model (`{checkpoint or DEFAULT_CHECKPOINT}`, a "
            "bidirectional-Mamba Vision Mamba trained on Fashion-MNIST) sees it as a 28x28 greyscale image, light "
            "on black (a light background is inverted), and gives its top-5 labels."
        )
        with gr.Row():
            with gr.Column():
                image = gr.File(label="image (none: the example trouser)", file_types=[*IMAGE_SUFFIXES, ".npy"],
                                type="filepath", elem_id="vision-image")
                btn = gr.Button("Classify", variant="primary", elem_id="vision-run")
                seen = gr.Image(label="what the model sees (28x28)", interactive=False)
            with gr.Column():
                label = gr.Label(label="top-5", num_top_classes=5, elem_id="vision-output")
                chart = gr.Plot(label="top-5 probabilities")
        connect(btn.click, run, [image], [label, chart, seen], api_name="vision_classify")
        gr.Examples([[p] for p in EXAMPLE_INPUTS], [image])
        with gr.Accordion("Efficiency: Vim vs DeiT (benchmarks/vision.py --efficiency)", open=False):
            fig = efficiency_figure()
            if fig is None:
                gr.Markdown(f"No efficiency report found (`{EFFICIENCY_JSON.relative_to(REPO_ROOT)}`); run "
                            "`python benchmarks/vision.py --efficiency` to make one.")
            else:
                gr.Plot(value=fig, label="time and memory per image against image size")
    return demo
