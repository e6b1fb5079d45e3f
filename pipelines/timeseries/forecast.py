"""Forecast past the end of a CSV with a trained checkpoint; write the CSV and the plot.

Used by ``longstream timeseries predict`` and the Gradio tab. The checkpoint's own
train-split scaler is applied, the last ``seq_len`` rows are the input window, the
forecast is mapped back to the data's units, and the timestamps continue the file's
frequency. Outputs are written atomically (temp file + rename).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from longstream.backbones.io import atomic_file
from longstream.pipelines.common import check_finite_output

from .data import Series, UserError, future_timestamps, load_series, phase_index, scale_checked
from .model import Forecaster

__all__ = ["forecast_series", "forecast_frame", "write_forecast", "plot_forecast", "predict"]


@torch.no_grad()
def forecast_series(model: Forecaster, series: Series, scaler: dict[str, Any]) -> pd.DataFrame:
    """Forecast ``model.pred_len`` steps after the last row of ``series``.

    Returns a frame indexed by the future timestamps with one column per target and,
    for quantile models, ``<target>_q<level>`` columns (in the data's units).
    """
    l, h = model.seq_len, model.pred_len
    if len(series) < l:
        raise UserError(
            f"{series.source} has {len(series)} rows but the model reads the last {l}; give at least {l} "
            "rows of history (or train a model with a shorter --data.seq_len)"
        )
    mean = np.asarray(scaler["mean"], dtype=np.float64)
    std = np.asarray(scaler["std"], dtype=np.float64)
    rows = slice(len(series) - l, len(series))
    x = scale_checked(series, mean, std, "after scaling with the checkpoint's scaler", rows)  # (l, c) float32
    phase = phase_index(series.timestamps[-l:], series.freq, model.period)[:1]
    model.eval()
    point, quant = model(x[None], torch.from_numpy(phase))
    # a value that passed the input check can still overflow inside the model (1e30): name it
    check_finite_output((point, quant), source=series.source, model_input=x, raw_input=series.values[rows],
                        locate=series.locator(rows.start), what="forecast")
    tidx = series.target_idx
    p = point[0].double().numpy() * std + mean  # (h, c)
    future = future_timestamps(series.timestamps[-1], series.freq, h)
    cols: dict[str, np.ndarray] = {}
    for j in tidx:
        name = series.columns[j]
        cols[name] = p[:, j]
        if quant is not None:
            qv = quant[0, :, j].double().numpy() * std[j] + mean[j]  # (h, q)
            for k, lev in enumerate(model.quantiles.tolist()):
                cols[f"{name}_q{lev:g}"] = qv[:, k]
    frame = pd.DataFrame(cols, index=pd.DatetimeIndex(future, name="date"))
    # back in the data's units (float64); never write an empty / inf cell
    check_finite_output(frame.to_numpy(dtype=np.float64), source=series.source, what="forecast (in the data's units)")
    return frame


def write_forecast(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the forecast frame as CSV, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=True, float_format="%.6g")
    return path


def plot_forecast(
    series: Series, frame: pd.DataFrame, path: str | os.PathLike | None = None, *, history: int = 0, title: str = ""
) -> Any:
    """History + forecast (+ interval) per target; saved atomically to ``path`` if given.

    Returns the matplotlib figure (closed after saving when ``path`` is given).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    all_targets = [series.columns[j] for j in series.target_idx]
    targets = all_targets[-8:]  # at most 8 panels (the last columns: ETT's OT is last)
    history = history or min(len(series), max(3 * len(frame), 96))
    fig, axes = plt.subplots(len(targets), 1, figsize=(10, 2.6 * len(targets) + 0.6), squeeze=False, sharex=True)
    ts_hist = series.timestamps[-history:]
    for ax, t in zip(axes[:, 0], targets):
        j = series.columns.index(t)
        ax.plot(ts_hist, series.values[-history:, j], color="0.25", lw=1.0, label="history")
        ax.plot(frame.index, frame[t], color="C1", lw=1.4, label="forecast")
        qcols = [c for c in frame.columns if c.startswith(f"{t}_q")]
        if len(qcols) >= 2:
            lo, hi = qcols[0], qcols[-1]
            ax.fill_between(frame.index, frame[lo], frame[hi], color="C1", alpha=0.25,
                            label=f"{lo.split('_q')[-1]}-{hi.split('_q')[-1]} interval")
        ax.axvline(series.timestamps[-1], color="0.6", ls="--", lw=0.8)
        ax.set_ylabel(t)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    more = f" (last {len(targets)} of {len(all_targets)} targets)" if len(targets) < len(all_targets) else ""
    axes[0, 0].set_title((title or f"{Path(series.source).name}: {len(frame)}-step forecast") + more)
    fig.autofmt_xdate()
    fig.tight_layout()
    if path is not None:
        try:
            with atomic_file(path) as tmp:
                fig.savefig(tmp, dpi=100, format="png")
        finally:
            plt.close(fig)
    return fig


def forecast_frame(checkpoint: str, csv: str | os.PathLike) -> tuple[Series, pd.DataFrame, dict[str, Any]]:
    """Load ``checkpoint``, read ``csv`` with its column layout, forecast -> (series, frame, config.json)."""
    from .model import load_forecaster

    model, cfg, meta = load_forecaster(checkpoint)
    sc = meta.get("scaler") or {}
    dcfg = replace(cfg.data, path=str(csv))
    if sc.get("columns") and not cfg.data.targets:
        # a multivariate model: the file must have the same variables, in any order
        dcfg = replace(dcfg, targets=list(sc["columns"]), covariates=[])
    series = load_series(dcfg, csv)
    if sc.get("columns") and list(series.columns) != list(sc["columns"]):
        raise UserError(
            f"{csv}: columns {series.columns} do not match the checkpoint's {sc['columns']}; "
            "train a model on this file first (`longstream timeseries train --data.path FILE`)"
        )
    series.targets = list(sc.get("targets") or series.targets)
    series.target_idx = [series.columns.index(t) for t in series.targets]
    if sc.get("freq") and series.freq != sc["freq"]:
        try:
            same = pd.tseries.frequencies.to_offset(series.freq) == pd.tseries.frequencies.to_offset(sc["freq"])
        except ValueError:
            same = False
        if not same:
            raise UserError(
                f"{csv}: frequency {series.freq!r} differs from the checkpoint's {sc['freq']!r}; "
                "resample the file or train on it"
            )
    return series, forecast_series(model, series, sc), meta


def predict(checkpoint: str, inputs: list[str], out: str | None = None) -> dict[str, Any]:
    """CLI ``predict``: one forecast CSV + PNG per input.

    ``--out FILE`` (one input only) is exactly the CSV written; the plot is derived from it
    (``f.csv`` -> ``f.png``, ``f`` -> ``f.png``) and both paths are in the result. Without
    ``--out`` each input's files are ``<stem>.forecast.csv`` / ``.png`` in the current folder.
    Every output path is checked (``common.resolve_out``) before any model runs.
    """
    from longstream.pipelines.common import resolve_out

    results = []
    if out and len(inputs) > 1:
        raise UserError("--out names one CSV; with several inputs leave it out (files go beside each input's name)")
    targets = [resolve_out(out if out else Path.cwd() / f"{Path(csv).stem}.forecast.csv", extra_suffixes=(".png",))
               for csv in inputs]
    for csv, (csv_out, png_out) in zip(inputs, targets):
        series, frame, meta = forecast_frame(checkpoint, csv)
        write_forecast(frame, csv_out)
        plot_forecast(series, frame, png_out, title=f"{Path(csv).name}: {meta.get('name', checkpoint)}")
        results.append({
            "input": str(csv),
            "forecast_csv": str(csv_out),
            "plot": str(png_out),
            "horizon": len(frame),
            "start": str(frame.index[0]),
            "end": str(frame.index[-1]),
            "targets": list(series.targets),
        })
    return results[0] if len(results) == 1 else {"forecasts": results}
