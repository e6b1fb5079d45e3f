"""Recall training loop: explicit, fresh generated batches every step, optional LR sweep.

Each step draws a new batch (a deterministic function of seed and step, so runs resume
exactly and every DDP rank agrees), computes cross-entropy only at the scored positions,
and (with a memory) streams the batch through the segment runner with truncated BPTT.
Recurrent models are sensitive to the learning rate (Zoology sweeps it), so
``train.lr_sweep`` tries each rate for ``train.sweep_steps`` steps from the same
initialisation and continues with the best (highest validation accuracy, then lowest
loss). Training stops early once validation accuracy reaches ``train.target_accuracy``;
at the end the full evaluation grid runs and its metrics go into the checkpoint. The run's
frame (resume, fresh start, train-state saves, distributed cleanup) is
:class:`~longstream.pipelines.common.TrainRun`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longstream.pipelines import common
from longstream.pipelines.common import MetricLogger, TrainRun, UserError

from .config import Config
from .data import check_config, split
from .evaluate import evaluate_model, score
from .model import build_model


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


@torch.no_grad()
def validate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    was = model.training
    model.eval()
    got, units, loss_sum, nb = 0.0, 0, 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        sel = yb != -100
        logits = model(xb, yb)  # (k, v) at the scored positions
        loss_sum += loss_fn(logits, yb[sel]).item() * len(xb)
        preds = torch.full_like(yb, -100)
        preds[sel] = logits.argmax(-1)
        a, u = score(preds, yb, model.cfg.data.task)
        got, units, nb = got + a, units + u, nb + len(xb)
    model.train(was)
    return {"val_accuracy": got / max(units, 1), "val_loss": loss_sum / max(nb, 1)}


def _phase(tc, step: int):
    for entry in sorted(tc.curriculum, key=lambda e: e[0]):
        if step < entry[0]:
            return entry
    return None


def train_data(cfg: Config, step: int):
    """The DataConfig that generates the training batch of ``step``: ``data`` with the
    curriculum phase's overrides (a length, or a dict of DataConfig fields) applied."""
    e = _phase(cfg.train, step)
    if e is None:
        return cfg.data
    over = dict(e[1]) if isinstance(e[1], dict) else {"seq_len": int(e[1])}
    bad = set(over) - set(dataclasses.asdict(cfg.data))
    if bad:
        raise UserError(f"--train.curriculum: unknown data fields {sorted(bad)}")
    return dataclasses.replace(cfg.data, **over)


def _fingerprint(cfg: Config) -> str:
    return common.data_fingerprint(*split(cfg.data, "train", 4, 0))


def _run(cfg: Config, model, env, steps: int, *, run: TrainRun | None, log: MetricLogger,
         tag: str = "train") -> dict[str, Any]:
    """Train ``model`` for ``steps`` (resumable through ``run``; ``None`` for a sweep trial).

    Returns the last validation metrics, or ``{"status": "paused", ...}`` when ``run``
    stops this process early (``max_steps_this_run``).
    """
    tc = cfg.train
    net = common.wrap_ddp(model, env)
    opt = torch.optim.AdamW(common.param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.98))
    sched = common.make_scheduler(opt, steps, min(tc.warmup_steps, max(steps // 10, 1)), tc.min_lr_ratio)
    if run is not None:
        run.restore(model=model, optimizer=opt, scheduler=sched)
    x_val, y_val = split(cfg.data, "val", cfg.data.n_val)
    val: dict[str, Any] = {}
    done = run.start if run is not None else 0
    carried = None  # stream state handed from batch to batch (train.state_passing)
    net.train()
    for step in common.progress(run.steps() if run is not None else range(steps), desc=tag):
        xb, yb = split(train_data(cfg, step), "train", tc.batch_size, step + 1 + 10_000 * (tag != "train"))
        idx = common.shard_indices(torch.arange(tc.batch_size), env)
        xr, yr = xb[idx], yb[idx]
        if tc.state_passing:  # start from the (detached) final state of the previous batch
            logits, carried = net(xr, yr, carried, return_state=True)
            carried = model.runner().detach(carried)
        else:
            logits = net(xr, yr)  # (k, v): logits only where a target is scored
        loss = loss_fn(logits, yr[yr != -100])
        common.optimizer_step(loss, opt, model=model, scheduler=sched, grad_clip=tc.grad_clip)
        done = step + 1
        if done % tc.log_every == 0 or done == steps:
            log.log(done, phase=tag, loss=common.all_reduce_mean(loss.item(), env), lr=sched.get_last_lr()[0])
        if tc.eval_every and (done % tc.eval_every == 0 or done == steps):
            val = validate(model, x_val, y_val)
            log.log(done, phase=tag, **val)
            net.train()
            # never stop before min_full_len_steps steps at the full training length
            full_from = max((u for u, _ in tc.curriculum), default=0)
            if val["val_accuracy"] >= tc.target_accuracy and done - full_from >= tc.min_full_len_steps:
                break  # reached the target: a complete run
        if run is not None:
            run.checkpoint(done, model=model, optimizer=opt, scheduler=sched, extra={"lr": tc.lr})
    else:
        paused = run.pause(done, model=model, optimizer=opt, scheduler=sched, extra={"lr": tc.lr}) if run else None
        if paused:
            return paused
    if not val:
        val = validate(model, x_val, y_val)
    val["steps"] = done
    return val


def _sweep(cfg: Config, env, log: MetricLogger) -> tuple[float, dict[str, float]]:
    """Try each rate of ``train.lr_sweep`` for ``sweep_steps`` from the same initialisation;
    returns (best rate, {rate: validation accuracy})."""
    tc, sweep, best = cfg.train, {}, None
    for lr in tc.lr_sweep:
        common.seed_everything(tc.seed)
        c = dataclasses.replace(cfg, train=dataclasses.replace(tc, lr=lr))
        try:
            v = _run(c, build_model(c).to(env.device), env, tc.sweep_steps, run=None, log=log, tag=f"sweep lr={lr:g}")
        except common.TrainingDiverged:  # a rate that diverges loses the sweep; it does not end the run
            v = {"val_accuracy": 0.0, "val_loss": float("inf")}
        sweep[f"{lr:g}"] = round(v["val_accuracy"], 4)
        key = (v["val_accuracy"], -v["val_loss"])
        if best is None or key > best[0]:
            best = (key, lr)
    log.log(0, phase="sweep", chosen_lr=best[1], sweep=sweep)
    return best[1], sweep


def train(cfg: Config, *, out_dir: str | Path, resume: bool = False, preset: str | None = None,
          max_steps_this_run: int = 0, evaluate_at_end: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train (optionally after an LR sweep), save the checkpoint into ``out_dir``, return its metrics.

    ``max_steps_this_run > 0`` stops after that many steps with a resumable
    ``train_state.pt`` and returns ``{"status": "paused", ...}``. ``overwrite`` replaces
    a finished run in ``out_dir`` (refused otherwise).
    """
    tc = cfg.train
    if tc.batch_size < 1 or tc.steps < 1:
        raise UserError("--train.batch_size and --train.steps must be >= 1")
    check_config(cfg.data)
    for e in tc.curriculum:
        check_config(train_data(cfg, e[0] - 1))
    with TrainRun(out_dir, resume=resume, device=tc.device, total_steps=tc.steps, save_every=tc.save_every,
                  max_steps_this_run=max_steps_this_run, config=cfg, preset=preset, overwrite=overwrite) as run:
        common.set_threads(tc.threads or None)
        sweep: dict[str, Any] = {}
        if resume and tc.lr_sweep:  # the sweep ran before the pause: continue with its choice
            lr = float(torch.load(run.state_path, weights_only=True)["extra"].get("lr", tc.lr))
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(tc, lr=lr))
        elif tc.lr_sweep:
            lr, sweep = _sweep(cfg, run.env, run.log)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(tc, lr=lr))
        common.seed_everything(cfg.train.seed)
        model = build_model(cfg).to(run.env.device)
        val = _run(cfg, model, run.env, cfg.train.steps, run=run, log=run.log)
        if val.get("status") == "paused":
            return val
        metrics: dict[str, Any] = evaluate_model(model, cfg.eval) if evaluate_at_end else {}
        metrics.update({"val_accuracy": round(val["val_accuracy"], 4), "val_loss": round(val["val_loss"], 4),
                        "steps": val["steps"], "lr": cfg.train.lr})
        if sweep:
            metrics["lr_sweep"] = sweep
        if run.is_main:
            model.save_pretrained(out_dir, preset=preset, metrics=metrics,
                                  data={"name": f"generated:{cfg.data.task}", "sha256": _fingerprint(cfg),
                                        "seed": cfg.data.seed})
        run.finish()
        return metrics
