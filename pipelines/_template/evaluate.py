"""Template evaluation and prediction.

Metrics (stable keys): ``accuracy`` (fraction correct), ``loss`` (mean cross-entropy),
``n`` (number of series).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longstream.pipelines.common import UserError

from .data import example, load_csv, make_split, parse_series

METRIC_KEYS = ["accuracy", "loss", "n"]
EXAMPLE_INPUTS = ["gen:0", "gen:3"]
DEFAULT_CHECKPOINT = "template/sine-attn"


@torch.no_grad()
def evaluate_arrays(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    was = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(-1) == yb).sum().item()
    model.train(was)
    n = len(x)
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": n}


def evaluate(checkpoint: str, data: str | None = None) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``data`` (a ``label,x0,...`` CSV) or the generated test split."""
    from .model import from_pretrained

    model = from_pretrained(checkpoint)
    if data:
        x, y = load_csv(data)
        if (y < 0).any() or (y >= model.cfg.data.n_classes).any():
            raise UserError(f"{data}: labels must be in 0..{model.cfg.data.n_classes - 1}")
    else:
        x, y = make_split(model.cfg.data, "test")
    return evaluate_arrays(model, x, y)


def read_input(spec: str, cfg) -> torch.Tensor:
    """``gen:K`` (example of class K), a file of numbers, or literal comma-separated numbers."""
    if spec.startswith("gen:"):
        try:
            k = int(spec[4:])
        except ValueError:
            raise UserError(f"bad input {spec!r}: use gen:<class>, e.g. gen:2") from None
        return example(k, cfg.data)
    p = Path(spec)
    if p.is_file():
        if p.stat().st_size > 10_000_000:
            raise UserError(f"{p} is larger than 10 MB; the template expects one short series")
        return parse_series(p.read_text(), str(p))
    if "," in spec or spec.replace(".", "", 1).replace("-", "", 1).isdigit():
        return parse_series(spec, "input")
    raise UserError(f"input {spec!r} is not gen:<class>, an existing file, or comma-separated numbers")


@torch.no_grad()
def predict(checkpoint: str, inputs: list[str], out: str | None = None) -> list[dict[str, Any]]:
    """Classify each input series; returns ``[{"input", "label", "probs"}]`` (also written to ``out``)."""
    from .model import from_pretrained, predict_proba

    model = from_pretrained(checkpoint)
    results = []
    for spec in inputs:
        x = read_input(spec, model.cfg)
        if len(x) < 2:
            raise UserError(f"input {spec!r} has {len(x)} value(s); give at least 2")
        probs = predict_proba(model, x)[0]
        results.append({"input": spec, "label": int(probs.argmax()), "probs": [round(float(p), 4) for p in probs]})
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    return results
