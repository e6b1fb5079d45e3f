"""Training loop of the time-series pipeline (explicit; the frame is ``common.TrainRun``).

Under ``torchrun --nproc_per_node N -m longstream.apps.cli timeseries train ...`` each of
the N processes takes an equal share of every global batch and DDP averages the
gradients; only rank 0 writes logs, resumable states and the checkpoint.

Adam on :func:`~longstream.pipelines.common.param_groups` (the linear skip and the
learned cycle may take a larger rate), one of TSLib's LR schedules
(:func:`~longstream.pipelines.common.tslib_lr`), per-epoch validation, early stopping on
validation MSE, the best epoch's weights kept (model selection never looks at the test
split). ``train_state.pt`` (model, optimizer, scheduler, RNG, epoch, position in the
epoch, best weights) is written at each epoch's end and every ``train.save_every``
steps, so ``--resume`` continues an interrupted run bit for bit. At the end the best
model is scored on the validation and test splits and saved as a checkpoint.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch

from longstream.pipelines.common import (
    EarlyStopping,
    MetricLogger,
    TrainRun,
    all_reduce_mean,
    build_backbone,
    make_epoch_scheduler,
    optimizer_step,
    param_groups,
    progress,
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

__all__ = ["prepare", "fit", "train", "scaler_record", "steps_per_epoch"]


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


def _train_subset(splits: Splits, cfg: TimeseriesConfig) -> torch.Tensor | None:
    n = splits.train.n_windows
    m = cfg.data.max_train_windows
    if m and m < n:
        return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.train.seed))[:m]
    return None


def steps_per_epoch(splits: Splits, cfg: TimeseriesConfig) -> int:
    """Optimizer steps in one epoch over the (possibly subsampled) training windows."""
    sub = _train_subset(splits, cfg)
    return math.ceil((len(sub) if sub is not None else splits.train.n_windows) / cfg.train.batch_size)


def fit(model: Forecaster, splits: Splits, cfg: TimeseriesConfig, *, run: TrainRun | None = None,
        quiet: bool = False) -> dict[str, Any]:
    """Train ``model`` in place; returns the best validation metrics (``val_mse``, ``val_mae``, ``epochs``).

    With ``run`` the fit resumes from and saves train states (and may pause: then the
    result is ``{"status": "paused", ...}``); without one it is a plain in-memory fit.
    """
    tc = cfg.train
    tidx = splits.series.target_idx
    env = run.env if run is not None else None
    log = run.log if run is not None else MetricLogger(None)
    if not model.trainable or tc.epochs <= 0:
        m = evaluate_split(model, splits.val, target_idx=tidx, batch_size=tc.eval_batch_size)
        return {"val_mse": m["mse"], "val_mae": m["mae"], "epochs": 0}
    net = wrap_ddp(model, env) if env is not None else model
    mult = {"skip.": tc.linear_lr_mult, "cycle.": tc.linear_lr_mult}
    opt = torch.optim.Adam(param_groups(model, tc.weight_decay, lr=tc.lr, lr_mult=mult), lr=tc.lr)
    spe = steps_per_epoch(splits, cfg)
    sched = make_epoch_scheduler(opt, tc.lradj, spe, tc.epochs)
    gen = torch.Generator().manual_seed(tc.seed)
    sub = _train_subset(splits, cfg)
    stopper = EarlyStopping(patience=tc.patience)
    best_state = copy.deepcopy(model.state_dict())
    best: dict[str, Any] = {}
    extra = run.restore(model=model, optimizer=opt, scheduler=sched) if run is not None else {}
    step = run.start if run is not None else 0
    start_epoch, first_batch = int(extra.get("epoch", 0)), int(extra.get("batch", 0))
    run_loss, seen = float(extra.get("run_loss", 0.0)), int(extra.get("seen", 0))
    if extra:
        stopper.load_state_dict(extra["stopper"])
        best, best_state = dict(extra["best"]), dict(extra["best_state"])
        gen.set_state(extra["generator"])

    def state(epoch: int, batch: int, epoch_gen: torch.Tensor) -> dict[str, Any]:
        return {"model": model, "optimizer": opt, "scheduler": sched,
                "extra": {"epoch": epoch, "batch": batch, "generator": epoch_gen, "run_loss": run_loss,
                          "seen": seen, "stopper": stopper.state_dict(), "best": best, "best_state": best_state}}

    for epoch in range(start_epoch, tc.epochs):
        model.train()
        t0 = time.time()
        epoch_gen = gen.get_state()  # the shuffle of this epoch is redrawn from it on resume
        order = window_order(splits.train, shuffle=True, generator=gen, indices=sub)
        batches = range(first_batch * tc.batch_size, len(order), tc.batch_size)
        for bi, i in enumerate(progress(batches, desc=f"epoch {epoch + 1}/{tc.epochs}"), start=first_batch):
            if run is not None and step >= run.stop_at:  # max_steps_this_run reached mid-run
                return run.pause(step, **state(epoch, bi, epoch_gen)) or {}
            b = order[i : i + tc.batch_size]
            if env is not None and env.distributed:  # equal shares per rank (a ragged last batch is trimmed)
                b = b[: len(b) - len(b) % env.world_size]
                if len(b) == 0:
                    continue
                b = torch.as_tensor(shard_indices(b, env), dtype=torch.long)
            x, y, ph = gather_windows(splits.train, b)
            point, quant = net(x, ph)
            loss = forecast_loss(point, quant, y, model.quantiles, kind=tc.loss, target_idx=tidx)
            optimizer_step(loss, opt, model=model, scheduler=sched)
            step += 1
            run_loss += loss.item() * x.shape[0]
            seen += x.shape[0]
            if step % tc.log_every == 0:
                log.log(step, loss=all_reduce_mean(loss.item(), env) if env else loss.item(),
                        lr=sched.get_last_lr()[0])
            if run is not None and bi + 1 < spe:
                run.checkpoint(step, **state(epoch, bi + 1, epoch_gen))
        first_batch = 0
        val = evaluate_split(model, splits.val, target_idx=tidx, batch_size=tc.eval_batch_size)
        stop = stopper.step(val["mse"])
        if stopper.bad == 0:
            best_state = copy.deepcopy(model.state_dict())
            best = {"val_mse": val["mse"], "val_mae": val["mae"], "epochs": epoch + 1}
        rec = log.log(step, epoch=epoch + 1, train_loss=run_loss / max(1, seen), val_mse=val["mse"],
                      val_mae=val["mae"], seconds=round(time.time() - t0, 2))
        run_loss, seen = 0.0, 0
        if not quiet and (run is None or run.is_main):
            print(f"epoch {epoch + 1}: train {rec['train_loss']:.4f} val_mse {val['mse']:.4f} "
                  f"val_mae {val['mae']:.4f} ({rec['seconds']}s)", flush=True)
        if stop:
            break
        if run is not None and epoch + 1 < tc.epochs:
            run.save(step, **state(epoch + 1, 0, gen.get_state()))
    model.load_state_dict(best_state)
    return best


def train(cfg: TimeseriesConfig, *, out_dir: str | Path, resume: bool = False, preset: str | None = None,
          max_steps_this_run: int = 0, name: str | None = None, quiet: bool = False,
          overwrite: bool = False) -> dict[str, Any]:
    """CLI ``train``: fit on ``cfg.data``, score val + test, save a checkpoint in ``out_dir``.

    ``max_steps_this_run > 0`` stops after that many optimizer steps with a resumable
    ``train_state.pt`` and returns ``{"status": "paused", ...}``. ``overwrite`` replaces
    a finished run in ``out_dir`` (refused otherwise).
    """
    out_dir = Path(out_dir)
    if preset:
        cfg.preset = preset
    tc = cfg.train
    if tc.batch_size < 1:
        raise UserError("--train.batch_size must be >= 1")
    set_threads(tc.threads or None)
    build_backbone(cfg.backbone)  # a bad --backbone.* is an error even for kinds that do not use it
    seed_everything(tc.seed)
    series, splits, period = prepare(cfg)
    model = build_model(cfg, len(series.columns), period)
    total = steps_per_epoch(splits, cfg) * max(tc.epochs, 0) if model.trainable else 0
    with TrainRun(out_dir, resume=resume, device=tc.device, total_steps=total, save_every=tc.save_every,
                  max_steps_this_run=max_steps_this_run, config=cfg, preset=preset, overwrite=overwrite) as run:
        model.to(run.env.device)
        t0 = time.time()
        best = fit(model, splits, cfg, run=run, quiet=quiet)
        if best.get("status") == "paused":
            return best
        train_s = time.time() - t0
        test = evaluate_split(model, splits.test, target_idx=series.target_idx, batch_size=tc.eval_batch_size)
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
        if run.is_main:
            save_forecaster(model, cfg, out_dir, scaler=scaler_record(splits, period), metrics=metrics,
                            data=data_info, name=name)
        run.finish()
        return metrics
