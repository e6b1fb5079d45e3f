"""Gradio tab of the time-series pipeline: forecast a CSV, see the plot, download the forecast.

Upload a CSV (wide ``date, col1, col2, ...`` or long ``unique_id, ds, y``) or pick an
example, choose the target column and the horizon. A file in the ETTh1 layout (hourly,
``HUFL ... OT``) with a horizon of 96 / 192 / 336 / 720 is forecast by the shipped
checkpoint for that horizon; any other file gets a CycleNet-style linear forecaster
(RevIN + learned cycle + quantile head, Lin et al., NeurIPS 2024) fitted on it in
seconds, with a 10-90 % interval. ``build_demo()`` builds the tab; nothing runs on import.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from longstream.pipelines.common import DEMOS_DIR, UserError, connect, number_input

DEMO_TITLE = "Time series"
# For the registry-generated demo tests (pipelines/CONTRACT.md, "demo.py"): after the example
# ran, uploading this file and clicking Forecast gives exactly one error naming the file (not
# Gradio's temporary copy) and clears the plot.
DEMO_BAD_INPUT = {
    "elem_id": "timeseries-file",
    "file": ("my sales (bad).csv", "date,sales\n2024-01-01,1\n2024-01-02,oops\n2024-01-03,3\n"),
    "expect": "my sales (bad).csv",
}
_DEMOS = DEMOS_DIR / "timeseries"
EXAMPLES = {
    "hourly, ETT layout (shipped checkpoint)": _DEMOS / "example_hourly.csv",
    "daily sales of two stores (fitted on the fly)": _DEMOS / "example_daily_sales.csv",
}



def _columns(csv: str | Path) -> list[str]:
    from .config import DataConfig
    from .data import load_series

    return load_series(DataConfig(), csv).columns


def _shipped_for(columns: list[str], freq: str, horizon: int) -> str | None:
    from longstream.pipelines.hub import default_hub

    from .evaluate import best_shipped

    name = best_shipped(int(horizon))
    if name is None:
        return None
    meta = json.loads((Path(default_hub().resolve(name)) / "config.json").read_text())
    sc = meta.get("scaler") or {}
    return name if list(sc.get("columns") or []) == list(columns) and sc.get("freq", "").lower() == freq.lower() else None


def quick_fit(csv: str | Path, target: str, horizon: int, *, epochs: int = 15) -> tuple[Any, Any, dict[str, Any]]:
    """Fit a small linear forecaster with intervals on ``csv`` -> (model, splits, scaler record)."""
    from longstream.pipelines.common import seed_everything

    from .config import DataConfig, ModelConfig, TimeseriesConfig, TrainConfig
    from .data import load_series
    from .model import build_model, resolve_period
    from .train import fit, make_splits, scaler_record

    probe = load_series(DataConfig(targets=[target]), csv)
    n = len(probe)
    seq_len = max(8, min(96, n // 5))
    cfg = TimeseriesConfig(
        preset="demo",
        data=DataConfig(path=str(csv), targets=[target], seq_len=seq_len, pred_len=int(horizon), split="ratio"),
        model=ModelConfig(kind="linear", revin=True, cycle=-1, quantiles=[0.1, 0.5, 0.9]),
        train=TrainConfig(epochs=epochs, batch_size=64, lr=5e-3, lradj="type3", patience=3),
    )
    period = resolve_period(cfg.model, probe.freq)
    if period > seq_len:
        period = 0
    cfg.model = replace(cfg.model, cycle=period)
    seed_everything(0)
    splits = make_splits(cfg.data, probe, period)
    model = build_model(cfg, len(probe.columns), period)
    fit(model, splits, cfg, quiet=True)
    return model, splits, scaler_record(splits, period)


def forecast_file(csv: str | Path, target: str, horizon: int) -> tuple[str, str, str]:
    """Forecast ``target`` of ``csv`` ``horizon`` steps ahead -> (plot PNG, forecast CSV, summary)."""
    from .config import DataConfig
    from .data import load_series
    from .forecast import forecast_frame, forecast_series, plot_forecast, write_forecast

    csv = Path(csv)
    horizon = int(number_input(horizon, "horizon (steps)", lo=1, hi=2000, integer=True))
    full = load_series(DataConfig(), csv)
    target = target or full.columns[-1]
    if target not in full.columns:
        raise UserError(f"{csv.name}: unknown target {target!r}; columns are {full.columns}")
    out_dir = Path(tempfile.mkdtemp(prefix="longstream-ts-"))
    shipped = _shipped_for(full.columns, full.freq, horizon)
    if shipped is not None:
        series, frame, meta = forecast_frame(shipped, csv)
        how = f"shipped checkpoint `{shipped}` (test MSE {meta['metrics'].get('mse', float('nan')):.3f} on ETTh1)"
        keep = [target] + [c for c in frame.columns if c.startswith(f"{target}_q")]
        frame = frame[keep]
        series.targets, series.target_idx = [target], [series.columns.index(target)]
    else:
        model, splits, sc = quick_fit(csv, target, horizon)
        series = splits.series
        frame = forecast_series(model, series, sc)
        how = (f"linear + RevIN + learned cycle (period {sc['period']}) fitted on this file "
               f"(input {model.seq_len} steps); 10-90 % interval from a quantile head")
    plot_path = out_dir / f"{csv.stem}_forecast.png"
    plot_forecast(series, frame, plot_path, title=f"{csv.name}: {target}, {horizon} steps")
    csv_path = write_forecast(frame, out_dir / f"{csv.stem}_forecast.csv")
    summary = (f"**{target}**: {horizon}-step forecast from {frame.index[0]} to {frame.index[-1]} "
               f"(frequency `{series.freq}`), by {how}.")
    return str(plot_path), str(csv_path), summary


def build_demo():
    """The time-series tab as a ``gr.Blocks`` (not launched)."""
    import gradio as gr

    def pick_file(upload: Any, example: str) -> str:
        if upload is not None:
            return upload if isinstance(upload, str) else upload.name
        if example in EXAMPLES:
            return str(EXAMPLES[example])
        raise UserError("upload a CSV or pick an example")

    def on_source(upload: Any, example: str, current: str | None = None):
        # A new file: offer its columns and clear the old forecast. A file that cannot be read
        # offers none and says nothing here; Forecast then shows its one error (not two).
        try:
            cols = _columns(pick_file(upload, example))
        except UserError:
            cols = []
        value = current if current in cols else (cols[-1] if cols else None)
        return gr.update(choices=cols, value=value), None, None, ""

    def run(upload: Any, example: str, target: str, horizon: float):
        return forecast_file(pick_file(upload, example), target, horizon)

    first = next(iter(EXAMPLES))
    with gr.Blocks(title=DEMO_TITLE) as demo:
        gr.Markdown(
            "### Forecast a time series\n"
            "Upload a CSV — wide (`date` + one column per variable, the ETT layout) or long "
            "(`unique_id, ds, y`) — or pick an example; choose the target and the horizon. "
            "ETTh1-layout files use the shipped ETTh1 checkpoints (RevIN + learned cycle + linear; horizons 96/192/336/720); "
            "other files get a linear forecaster with a learned cycle fitted in seconds, with a 10-90 % interval."
        )
        with gr.Row():
            upload = gr.File(label="CSV file", file_types=[".csv"], elem_id="timeseries-file")
            example = gr.Dropdown(list(EXAMPLES), value=first, label="or an example", elem_id="timeseries-example")
        with gr.Row():
            target = gr.Dropdown(_safe_columns(EXAMPLES[first]), value="OT", label="target column",
                                 allow_custom_value=True, elem_id="timeseries-target")
            horizon = gr.Number(value=96, precision=0, label="horizon (steps)", elem_id="timeseries-horizon")
        btn = gr.Button("Forecast", variant="primary", elem_id="timeseries-run")
        plot = gr.Image(label="history and forecast", type="filepath", elem_id="timeseries-output")
        summary = gr.Markdown()
        download = gr.File(label="forecast CSV")
        shown = [target, plot, download, summary]
        connect(upload.change, on_source, [upload, example, target], shown, api_name="timeseries_columns_upload")
        connect(example.change, on_source, [upload, example, target], shown, api_name="timeseries_columns_example")
        connect(btn.click, run, [upload, example, target, horizon], [plot, download, summary],
                api_name="timeseries_forecast")
        gr.Examples([[None, first, "OT", 96], [None, list(EXAMPLES)[1], "store_a", 28]],
                    [upload, example, target, horizon])
    return demo


def _safe_columns(csv: Path) -> list[str]:
    try:
        return _columns(csv)
    except UserError:
        return []
