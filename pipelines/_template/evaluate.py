"""Template evaluation and prediction.

Metrics (stable keys): ``accuracy`` (fraction correct), ``macro_f1`` (unweighted mean F1
over classes), ``mcc`` (multi-class Matthews correlation), ``loss`` (mean
cross-entropy), ``n`` (number of series). Computed with the shared
``longstream.pipelines.common`` metrics, like every pipeline's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longstream.pipelines.common import (
    UserError,
    accuracy,
    as_file,
    check_finite_output,
    check_finite_result,
    dumps_strict,
    macro_f1,
    mcc,
    pad_sequences,
    read_text_file,
    resolve_out,
    write_out,
)

from .data import example, load_csv, make_split, parse_series

METRIC_KEYS = ["accuracy", "macro_f1", "mcc", "loss", "n"]
EXAMPLE_INPUTS = ["gen:0", "gen:3"]
DEFAULT_CHECKPOINT = "template/sine-attn"


def make_extreme(spec: str, value: float, tmp_dir: Path) -> str:
    """Contract hook: an input like ``spec`` (one of :data:`EXAMPLE_INPUTS`) whose last number is ``value``.

    ``gen:K`` becomes a file of that generated series in ``tmp_dir`` with its last value replaced.
    """
    from .config import DataConfig

    x = (example(int(spec[4:]), DataConfig()) if spec.startswith("gen:") else parse_series(spec, spec)).tolist()
    x[-1] = value
    path = Path(tmp_dir) / f"{spec.replace(':', '_')}_extreme.txt"
    path.write_text(",".join(repr(float(v)) for v in x) + "\n")
    return str(path)


@torch.no_grad()
def evaluate_arrays(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
                    device: torch.device | str = "cpu", source: str = "the data") -> dict[str, float]:
    """Metrics of ``model`` on series ``x`` (N, L) with labels ``y`` (N,) (see :data:`METRIC_KEYS`).

    ``source`` names the data in the error raised when the model's output is not finite.
    """
    was = model.training
    model.eval()
    preds, loss_sum = [], 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits = model(xb)
        check_finite_output(logits, source=[f"{source}: series {i + k + 1}" for k in range(len(xb))],
                            model_input=xb, what="class scores")
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        preds.append(logits.argmax(-1).cpu())
    model.train(was)
    pred = torch.cat(preds)
    return check_finite_result({"accuracy": accuracy(y, pred), "macro_f1": macro_f1(y, pred), "mcc": mcc(y, pred),
                                "loss": loss_sum / len(x), "n": len(x)}, what="template metrics")


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
    return evaluate_arrays(model, x, y, source=data or "the generated test split")


def read_input(spec: str, cfg) -> torch.Tensor:
    """``gen:K`` (example of class K), a file of numbers, or literal comma-separated numbers."""
    if spec.startswith("gen:"):
        try:
            k = int(spec[4:])
        except ValueError:
            raise UserError(f"bad input {spec!r}: use gen:<class>, e.g. gen:2") from None
        return example(k, cfg.data)
    p = as_file(spec)  # an existing file (a directory is an error), else a literal
    if p is not None:
        text = read_text_file(p, what="input", max_bytes=10_000_000,
                              hint="the template expects a text file of comma- or space-separated numbers")
        return parse_series(text, str(p))
    if "," in spec or spec.replace(".", "", 1).replace("-", "", 1).isdigit():
        return parse_series(spec, f"input {spec!r}")
    raise UserError(f"input {spec!r} is not gen:<class>, an existing file, or comma-separated numbers")


@torch.no_grad()
def predict(checkpoint: str, inputs: list[str], out: str | None = None) -> list[dict[str, Any]]:
    """Classify each input series; returns ``[{"input", "label", "probs"}]`` (also written to ``out``).

    Series of different lengths run as one right-padded batch with a mask (the shared head
    pools only the valid steps).
    """
    from .model import from_pretrained, predict_proba

    out_file = resolve_out(out)[0] if out else None  # the shared --out rule, before any work
    model = from_pretrained(checkpoint)
    series = [read_input(spec, model.cfg) for spec in inputs]
    for spec, x in zip(inputs, series):
        if len(x) < 2:
            raise UserError(f"input {spec!r} has {len(x)} value(s); give at least 2")
    x, mask = pad_sequences(series, what="input series")
    probs = predict_proba(model, x, mask)
    check_finite_output(probs, source=[f"input {s!r}" for s in inputs], model_input=x, what="class probabilities")
    results = [{"input": spec, "label": int(p.argmax()), "probs": [round(float(v), 4) for v in p]}
               for spec, p in zip(inputs, probs)]
    if out_file is not None:
        write_out(out_file, dumps_strict(results, indent=2) + "\n")
    return results
