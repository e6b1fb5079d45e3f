"""Evaluation of forecasters: TSLib metrics on the normalised scale, intervals, backtests.

Metric names (stable; documented in this pipeline's README):

- ``mse``, ``mae``: mean squared / absolute error over every test window, horizon step
  and target variable, on the scale of the train-split StandardScaler (TSLib's
  convention; the numbers papers report).
- ``n_windows``: test windows counted (TSLib: rows - seq_len - pred_len + 1, no batch
  dropped); ``seq_len``, ``pred_len``: the task.
- ``coverage``: share of targets inside the outermost quantile interval (e.g. 0.1-0.9,
  nominal 0.8) and ``interval``: its nominal level; ``pinball``: mean quantile loss.
  Only for models with a quantile head.
- ``val_mse``, ``val_mae``: the same on the validation split (written at training time).
- backtest: ``mse``, ``mae`` over all folds plus ``folds`` (list of per-origin dicts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longstream.pipelines.common import DEMOS_DIR, check_finite_output, check_finite_result

from .data import Split, UserError, iterate_windows, load_series, make_splits, scale_checked
from .model import Forecaster, pinball_loss

__all__ = ["evaluate_split", "evaluate", "backtest", "predict", "best_shipped", "METRIC_KEYS", "EXAMPLE_INPUTS",
           "DEFAULT_CHECKPOINT", "make_extreme"]

METRIC_KEYS = ["mse", "mae", "n_windows", "seq_len", "pred_len"]
"""Keys ``evaluate`` always returns (``coverage``, ``interval``, ``pinball`` too for quantile models)."""

_DEMO_DIR = DEMOS_DIR / "timeseries"
EXAMPLE_INPUTS = [str(_DEMO_DIR / "example_hourly.csv")]
"""A small synthetic hourly CSV in the ETT layout, accepted by the shipped checkpoints."""


DEFAULT_CHECKPOINT = "timeseries/etth1-ensemble-h96"
"""The shipped model the demo and the contract tests use."""


def make_extreme(spec: str, value: float, tmp_dir: Path) -> str:
    """Contract hook: a copy of the CSV ``spec`` in ``tmp_dir`` whose last cell (last row, last column) is ``value``.

    The last row is inside every model's input window, so the value reaches the model.
    """
    src = Path(spec)
    lines = src.read_text().rstrip("\n").split("\n")
    cells = lines[-1].split(",")
    cells[-1] = repr(float(value))
    lines[-1] = ",".join(cells)
    out = Path(tmp_dir) / f"{src.stem}_extreme.csv"
    out.write_text("\n".join(lines) + "\n")
    return str(out)


SHIPPED_CANDIDATES = ("timeseries/etth1-ensemble-h{h}", "timeseries/etth1-cyclelinear-h{h}")


def best_shipped(horizon: int) -> str | None:
    """The shipped ETTh1 model for ``horizon`` with the lowest recorded *validation* MSE (or None)."""
    from longstream.pipelines.hub import default_hub

    hub = default_hub()
    entries = hub.entries()
    scored = []
    for c in SHIPPED_CANDIDATES:
        name = c.format(h=int(horizon))
        if name in entries:
            try:
                meta = json.loads((Path(hub.resolve(name)) / "config.json").read_text())
                scored.append((float(meta["metrics"]["val_mse"]), name))
            except (OSError, KeyError, ValueError, UserError):
                continue
    return min(scored)[1] if scored else None


def predict(checkpoint: str, inputs: list[str], out: str | None = None) -> Any:
    """CLI ``predict``: forecast past the end of each CSV; writes CSV + PNG (see ``forecast.py``)."""
    from .forecast import predict as _predict

    return _predict(checkpoint, inputs, out)


@torch.no_grad()
def evaluate_split(
    model: Forecaster,
    split: Split,
    *,
    target_idx: list[int] | None = None,
    batch_size: int = 256,
    indices: torch.Tensor | None = None,
) -> dict[str, float]:
    """MSE / MAE (and interval metrics) of ``model`` over every window of ``split``."""
    model.eval()
    se = ae = 0.0
    count = 0
    cover = pin = 0.0
    n_win = 0
    for x, y, ph in iterate_windows(split, batch_size, indices=indices):
        point, quant = model(x, ph)
        if not (torch.isfinite(point).all() and (quant is None or torch.isfinite(quant).all())):
            # name the most extreme cell of the split (what overflowed inside the model)
            check_finite_output((point, quant), source=split.source or f"the {split.name} split",
                                model_input=split.data, locate=split.locate, what="forecast")
        if target_idx is not None:
            point, y = point[..., target_idx], y[..., target_idx]
            quant = quant[..., target_idx, :] if quant is not None else None
        err = (point - y).double()
        se += float((err**2).sum())
        ae += float(err.abs().sum())
        count += err.numel()
        n_win += x.shape[0]
        if quant is not None:
            lo, hi = quant[..., 0], quant[..., -1]
            cover += float(((y >= lo) & (y <= hi)).double().sum())
            pin += float(pinball_loss(quant, y, model.quantiles).double()) * err.numel()
    if n_win == 0:
        raise UserError(f"the {split.name} split has no complete window (input {split.seq_len} + horizon {split.pred_len})")
    out: dict[str, float] = {
        "mse": se / count,
        "mae": ae / count,
        "n_windows": n_win,
        "seq_len": split.seq_len,
        "pred_len": split.pred_len,
    }
    if model.n_out > 1:
        q = model.quantiles
        out["coverage"] = cover / count
        out["interval"] = round(float(q[-1] - q[0]), 6)
        out["pinball"] = pin / count
    return check_finite_result(out, what=f"{split.name}-split metrics")


def evaluate(checkpoint: str, data: str | None = None) -> dict[str, Any]:
    """CLI ``evaluate``: load ``checkpoint``, rebuild its splits on ``data``, score the test split."""
    from .model import load_forecaster

    model, cfg, meta = load_forecaster(checkpoint)
    path = data or cfg.data.path or None
    series = load_series(cfg.data, path)
    _check_columns(series.columns, meta, path)
    splits = make_splits(cfg.data, series, model.period)
    metrics = evaluate_split(model, splits.test, target_idx=series.target_idx, batch_size=cfg.train.eval_batch_size)
    metrics["checkpoint"] = meta.get("name", str(checkpoint))
    metrics["data"] = Path(series.source).name
    return metrics


def _check_columns(columns: list[str], meta: dict[str, Any], path: Any) -> None:
    want = (meta.get("scaler") or {}).get("columns")
    if want and list(columns) != list(want):
        raise UserError(
            f"{path}: columns {list(columns)} do not match the checkpoint's {want}; "
            "pass the file the checkpoint was trained on, or train on this one"
        )


@torch.no_grad()
def backtest(
    checkpoint: str,
    data: str | None = None,
    *,
    folds: int = 5,
    step: int = 0,
) -> dict[str, Any]:
    """Rolling-origin evaluation of a checkpoint on the last ``folds`` origins of the series.

    Origins are ``step`` rows apart (default: one horizon), the last one ending at the
    last row; each fold forecasts ``pred_len`` steps from the ``seq_len`` rows before its
    origin with the checkpoint's train-split scaler. Errors are on the scaled values.
    """
    from .model import load_forecaster

    model, cfg, meta = load_forecaster(checkpoint)
    series = load_series(cfg.data, data or cfg.data.path or None)
    _check_columns(series.columns, meta, data)
    mean, std = _scaler(meta, series)
    scaled = scale_checked(series, mean, std, "after scaling with the checkpoint's scaler")
    from .data import phase_index

    phase = torch.from_numpy(phase_index(series.timestamps, series.freq, model.period))
    l, h = cfg.data.seq_len, cfg.data.pred_len
    step = step or h
    if folds < 1:
        raise UserError("--folds must be at least 1")
    last_origin = len(series) - h
    origins = [last_origin - k * step for k in range(folds)][::-1]
    if origins[0] < l:
        raise UserError(
            f"{series.source}: {folds} folds {step} rows apart need {l + h + (folds - 1) * step} rows, "
            f"the file has {len(series)}; use fewer --folds or a smaller --step"
        )
    tidx = series.target_idx
    model.eval()
    out_folds = []
    se = ae = 0.0
    for o in origins:
        x = scaled[o - l : o].unsqueeze(0)
        y = scaled[o : o + h].unsqueeze(0)[..., tidx]
        point, quant = model(x, phase[o - l : o - l + 1])
        check_finite_output((point, quant), source=series.source, model_input=x[0],
                            raw_input=series.values[o - l : o], locate=series.locator(o - l), what="forecast")
        err = (point[..., tidx] - y).double()
        f = {
            "origin": str(series.timestamps[o]),
            "mse": float((err**2).mean()),
            "mae": float(err.abs().mean()),
        }
        if quant is not None:
            q = quant[..., tidx, :]
            f["coverage"] = float(((y >= q[..., 0]) & (y <= q[..., -1])).double().mean())
        se += f["mse"]
        ae += f["mae"]
        out_folds.append(f)
    res: dict[str, Any] = {"mse": se / len(origins), "mae": ae / len(origins), "n_folds": len(origins)}
    if out_folds and "coverage" in out_folds[0]:
        res["coverage"] = float(np.mean([f["coverage"] for f in out_folds]))
    res["folds"] = out_folds
    return check_finite_result(res, what="backtest metrics")


def _scaler(meta: dict[str, Any], series: Any) -> tuple[np.ndarray, np.ndarray]:
    sc = meta.get("scaler") or {}
    if sc.get("mean") is None:
        raise UserError("checkpoint has no scaler in config.json; retrain it with this version")
    return np.asarray(sc["mean"], dtype=np.float64), np.asarray(sc["std"], dtype=np.float64)
