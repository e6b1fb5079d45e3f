"""``longstream timeseries ensemble``: one checkpoint averaging trained forecasters.

Its own module (not ``model.py``) because it scores the ensemble with ``evaluate``,
which itself imports ``model``: keeping it here leaves no import cycle.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from longstream.pipelines.common import UserError, config_to_dict, sha256_file

from .data import load_series, make_splits
from .evaluate import evaluate_split
from .model import build_model, load_forecaster, save_forecaster

__all__ = ["make_ensemble"]


def make_ensemble(members: list[str], out_dir: Any, *, data: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Average the forecasts of trained checkpoints ``members`` into one checkpoint in ``out_dir``.

    The members must share the data layout, scaler, input length and horizon. The
    ensemble is scored on the validation and test splits of ``data`` (default: the
    members' training file) and saved self-contained (all member weights).
    """
    if len(members) < 2:
        raise UserError("an ensemble needs at least two --members checkpoints")
    loaded = [load_forecaster(m) for m in members]
    m0, cfg0, meta0 = loaded[0]
    sc0 = meta0.get("scaler") or {}
    for (_, cfg, meta), nm in zip(loaded[1:], members[1:]):
        sc = meta.get("scaler") or {}
        same = (cfg.data.seq_len, cfg.data.pred_len, sc.get("columns"), sc.get("mean"), sc.get("period")) == (
            cfg0.data.seq_len, cfg0.data.pred_len, sc0.get("columns"), sc0.get("mean"), sc0.get("period"))
        if not same:
            raise UserError(f"member {nm} does not match {members[0]} (input, horizon, columns, scaler, cycle); "
                            "ensemble checkpoints trained on the same data and task")
    mcfg = dataclasses.replace(
        cfg0.model, kind="ensemble", quantiles=[],
        members=[{"model": config_to_dict(c.model), "backbone": config_to_dict(c.backbone)} for _, c, _ in loaded],
    )
    cfg = dataclasses.replace(cfg0, preset="ensemble", model=mcfg)
    model = build_model(cfg, m0.n_vars, m0.period)
    for dst, (src, _, _) in zip(model.members, loaded):
        dst.load_state_dict(src.state_dict())
    model.eval()
    series = load_series(cfg.data, data or cfg.data.path or None)
    splits = make_splits(cfg.data, series, model.period)
    val = evaluate_split(model, splits.val, target_idx=series.target_idx)
    test = evaluate_split(model, splits.test, target_idx=series.target_idx)
    metrics: dict[str, Any] = {"mse": test["mse"], "mae": test["mae"],
                               **{k: v for k, v in test.items() if k not in ("mse", "mae")},
                               "val_mse": val["mse"], "val_mae": val["mae"],
                               "members": ",".join(str(m) for m in members),
                               "n_params": sum(p.numel() for p in model.parameters())}
    data_info = {"name": Path(series.source).name, "rows": len(series), "split": splits.scheme,
                 "sha256": sha256_file(series.source)}
    save_forecaster(model, cfg, Path(out_dir), scaler=sc0, metrics=metrics, data=data_info, name=name)
    return metrics
