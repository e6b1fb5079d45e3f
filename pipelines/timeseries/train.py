"""Training loop of the time-series pipeline (explicit; helpers from ``pipelines/common.py``).

Under ``torchrun --nproc_per_node N -m longstream.apps.cli timeseries train ...`` each of the N CPU
processes (gloo) takes an equal share of every global batch and DDP averages the
gradients; only rank 0 writes logs, resumable states and the checkpoint.

Adam, per-epoch validation on the validation split, early stopping on validation MSE,
the best epoch's weights kept (model selection never looks at the test split). After
every epoch ``train_state.pt`` (model, optimizer, epoch, RNG, best weights) is written
atomically, so ``--resume`` continues an interrupted run. At the end the best model is
scored on the validation and test splits and saved as a checkpoint in ``out_dir``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from longstream.pipelines.common import (
    EarlyStopping,
    MetricLogger,
    init_distributed,
    load_train_state,
    progress,
    save_train_state,
    seed_everything,
    set_threads,
    sha256_file,
    shard_indices,
    wrap_ddp,
)

from .config import TimeseriesConfig
from .data import Series, Splits, UserError, gather_windows, load_series, make_splits, window_order
from .evaluate import evaluate_split
from .model import Forecaster, build_model, forecast_loss, resolve_period, save_forecaster

__all__ = ["prepare", "fit", "train", "scaler_record"]


def prepare(cfg: TimeseriesConfig, path: str | Path | None = None) -> tuple[Series, Splits, int]:
    """Load and split the data of ``cfg`` -> (series, splits, cycle period)."""
    series = load_series(cfg.data, path)
    period = resolve_period(cfg.model, series.freq)
    if cfg.model.kind == "seasonal_naive" and not 0 < period <= cfg.data.seq_len:
        raise UserError(
            f"seasonal_naive needs a cycle period between 1 and the input length {cfg.data.seq_len}; "
            f"frequency {series.freq!r} gives {period}; pass --model.cycle N"
        )
    return series, make_splits(cfg.data, series, period), period


def scaler_record(splits: Splits, period: int) -> dict[str, Any]:
    """What ``predict`` needs to reuse the training scaler and calendar phase."""
    s = splits.series
    return {
        "columns": list(s.columns),
        "targets": list(s.targets),
        "mean": [float(v) for v in splits.mean],
        "std": [float(v) for v in splits.std],
        "freq": s.freq,
        "period": int(period),
        "n_vars": len(s.columns),
        "split": splits.scheme,
    }


def _lr_factor(kind: str, epoch: int, step: int, total_steps: int) -> float:
    if kind == "type1":  # TSLib: halve every epoch after the first
        return 0.5 ** epoch
    if kind == "type3":  # TSLib: constant for 3 epochs, then x0.9 per epoch
        return 1.0 if epoch < 3 else 0.9 ** (epoch - 2)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))
    return 1.0


def fit(
    model: Forecaster,
    splits: Splits,
    cfg: TimeseriesConfig,
    *,
    out_dir: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> dict[str, float]:
    """Train ``model`` in place; returns the best validation metrics (``val_mse``, ``val_mae``, ``epochs``)."""
    tc = cfg.train
    tidx = splits.series.target_idx
    env = init_distributed("cpu")  # under torchrun: gloo, each rank takes its share of every batch
    if not env.is_main:
        out_dir = None  # only rank 0 writes
    net = wrap_ddp(model, env)
    if not model.trainable or tc.epochs <= 0:
        m = evaluate_split(model, splits.val, target_idx=tidx, batch_size=tc.eval_batch_size)
        return {"val_mse": m["mse"], "val_mae": m["mae"], "epochs": 0}
    # the linear skip and the learned cycle may take a larger learning rate than the backbone
    fast = [p for n, p in model.named_parameters() if n.startswith(("skip.", "cycle."))]
    slow = [p for n, p in model.named_parameters() if not n.startswith(("skip.", "cycle."))]
    groups = [{"params": slow, "lr_mult": 1.0}]
    if fast:
        groups.append({"params": fast, "lr_mult": tc.linear_lr_mult})
    opt = torch.optim.Adam(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    n = splits.train.n_windows
    sub = None
    if cfg.data.max_train_windows and cfg.data.max_train_windows < n:
        sub = torch.randperm(n, generator=torch.Generator().manual_seed(tc.seed))[: cfg.data.max_train_windows]
        n = len(sub)
    steps_per_epoch = math.ceil(n / tc.batch_size)
    total = steps_per_epoch * tc.epochs
    stopper = EarlyStopping(patience=tc.patience)
    best_state = copy.deepcopy(model.state_dict())
    best: dict[str, float] = {}
    start_epoch, step = 0, 0
    state_path = out_dir / "train_state.pt" if out_dir is not None else None
    log = MetricLogger(out_dir / "metrics.jsonl" if out_dir is not None else None, rank=env.rank)
    if resume and state_path is not None:
        best_model = copy.deepcopy(model)
        if (out_dir / "best_state.pt").exists():
            load_train_state(out_dir / "best_state.pt", model=best_model, restore_rng=False)
            best_state = copy.deepcopy(best_model.state_dict())
        step, extra = load_train_state(state_path, model=model, optimizer=opt)
        start_epoch = int(extra.get("epoch", 0))
        stopper.load_state_dict(extra.get("stopper") or {})
        best = dict(extra.get("best") or {})
        if extra.get("generator") is not None:
            gen.set_state(extra["generator"])
        if extra.get("stopped"):
            start_epoch = tc.epochs
    for epoch in range(start_epoch, tc.epochs):
        model.train()
        t0 = time.time()
        run_loss, seen = 0.0, 0
        order = window_order(splits.train, shuffle=True, generator=gen, indices=sub)
        for i in progress(range(0, len(order), tc.batch_size), desc=f"epoch {epoch + 1}/{tc.epochs}"):
            b = order[i : i + tc.batch_size]
            if env.distributed:  # equal shares per rank (a ragged last batch is trimmed)
                b = b[: len(b) - len(b) % env.world_size]
                if len(b) == 0:
                    continue
                b = torch.as_tensor(shard_indices(b, env), dtype=torch.long)
            x, y, ph = gather_windows(splits.train, b)
            for g in opt.param_groups:
                g["lr"] = tc.lr * g.get("lr_mult", 1.0) * _lr_factor(tc.lradj, epoch, step, total)
            point, quant = net(x, ph)
            loss = forecast_loss(point, quant, y, model.quantiles, kind=tc.loss, target_idx=tidx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            run_loss += loss.item() * x.shape[0]
            seen += x.shape[0]
        val = evaluate_split(model, splits.val, target_idx=tidx, batch_size=tc.eval_batch_size)
        stop = stopper.step(val["mse"])
        if stopper.bad == 0:
            best_state = copy.deepcopy(model.state_dict())
            best = {"val_mse": val["mse"], "val_mae": val["mae"], "epochs": epoch + 1}
            if out_dir is not None:
                save_train_state(out_dir / "best_state.pt", model=model)
        rec = log.log(step, epoch=epoch + 1, train_loss=run_loss / max(1, seen), val_mse=val["mse"],
                      val_mae=val["mae"], seconds=round(time.time() - t0, 2))
        if not quiet and env.is_main:
            print(
                f"epoch {epoch + 1}: train {rec['train_loss']:.4f} val_mse {val['mse']:.4f} "
                f"val_mae {val['mae']:.4f} ({rec['seconds']}s)",
                flush=True,
            )
        if state_path is not None:
            save_train_state(state_path, model=model, optimizer=opt, step=step,
                             extra={"epoch": epoch + 1, "stopper": stopper.state_dict(), "best": best,
                                    "stopped": bool(stop), "generator": gen.get_state()})
        if stop:
            break
    model.load_state_dict(best_state)
    return best


def train(
    cfg: TimeseriesConfig,
    out_dir: str | Path,
    resume: bool = False,
    preset: str | None = None,
    *,
    name: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """CLI ``train``: fit on ``cfg.data``, score val + test, save a checkpoint in ``out_dir``."""
    out_dir = Path(out_dir)
    if preset:
        cfg.preset = preset
    set_threads(cfg.train.threads or None)
    seed_everything(cfg.train.seed)
    series, splits, period = prepare(cfg)
    model = build_model(cfg, len(series.columns), period)
    t0 = time.time()
    best = fit(model, splits, cfg, out_dir=out_dir, resume=resume, quiet=quiet)
    train_s = time.time() - t0
    tidx = series.target_idx
    test = evaluate_split(model, splits.test, target_idx=tidx, batch_size=cfg.train.eval_batch_size)
    metrics: dict[str, Any] = {
        "mse": test["mse"],
        "mae": test["mae"],
        **{k: v for k, v in test.items() if k not in ("mse", "mae")},
        **best,
        "train_seconds": round(train_s, 1),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    data_info = {"name": Path(series.source).name, "rows": len(series), "split": splits.scheme}
    try:
        data_info["sha256"] = sha256_file(series.source)
    except OSError:
        pass
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes the checkpoint
        return metrics
    save_forecaster(
        model, cfg, out_dir, scaler=scaler_record(splits, period), metrics=metrics, data=data_info,
        name=name, card=model_card(cfg, metrics, data_info, name or f"timeseries/{out_dir.name}"),
    )
    for tmp in ("train_state.pt", "best_state.pt"):
        p = out_dir / tmp
        if p.exists():
            p.unlink()
    return metrics


def model_card(cfg: TimeseriesConfig, metrics: dict[str, Any], data: dict[str, Any], name: str) -> str:
    """A short model card (README.md of the checkpoint)."""
    m = cfg.model
    if m.kind == "backbone":
        what = (f"{m.tokens}-token backbone `{m.backbone}` (pattern {m.pattern}, d_model {m.d_model}, "
                f"{m.n_layers} layers, bidirectional={m.bidirectional}), RevIN={m.revin}, cycle={m.cycle}")
    else:
        what = f"`{m.kind}` (RevIN={m.revin}, cycle={m.cycle})"
    rows = "\n".join(
        f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    )
    credit = ""
    if data.get("name", "").lower().startswith("ett"):
        credit = ("\nData: ETT (Electricity Transformer Temperature), Zhou et al., \"Informer\", AAAI 2021, "
                  "github.com/zhouhaoyi/ETDataset, CC BY-ND 4.0. Not redistributed here.\n")
    return f"""# {name}

longstream time-series forecaster: input {cfg.data.seq_len} steps, horizon {cfg.data.pred_len}.

Model: {what}. Preset `{cfg.preset}`.
Trained on `{data.get('name')}` ({data.get('rows')} rows, split `{data.get('split')}`: TSLib protocol,
scaler fit on the train split; selection on validation MSE; metrics on the test split,
normalised scale, every window counted).
{credit}
| metric | value |
|---|---|
{rows}

```bash
longstream timeseries evaluate --checkpoint {name} --data path/to/{data.get('name')} --json
longstream timeseries predict --checkpoint {name} path/to/{data.get('name')} --out forecast.csv
```
"""
