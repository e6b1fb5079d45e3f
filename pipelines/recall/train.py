"""Recall training loop: explicit, fresh generated batches every step, optional LR sweep.

Each step draws a new batch (a deterministic function of seed and step, so runs resume
exactly and every DDP rank agrees), computes cross-entropy only at the scored positions,
and (with a memory) streams the batch through the segment runner with truncated BPTT.
Recurrent models are sensitive to the learning rate (Zoology sweeps it), so
``train.lr_sweep`` tries each rate for ``train.sweep_steps`` steps from the same
initialisation and continues with the best (highest validation accuracy, then lowest
loss). Training stops early once validation accuracy reaches ``train.target_accuracy``;
at the end the full evaluation grid runs and its metrics go into the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longstream.pipelines.common import (
    MetricLogger,
    UserError,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    load_train_state,
    make_scheduler,
    param_groups,
    progress,
    save_train_state,
    seed_everything,
    set_threads,
    shard_indices,
    wrap_ddp,
)

from .config import Config
from .data import check_config, split
from .evaluate import evaluate_model, score
from .model import build_model

STATE_FILE = "train_state.pt"


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
    x, y = split(cfg.data, "train", 4, 0)
    return hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()


def _run(cfg: Config, model, env, steps: int, *, out_dir: Path | None, resume: bool, log: MetricLogger | None,
         tag: str = "train") -> dict[str, Any]:
    """Train ``model`` for ``steps``; returns the last validation metrics."""
    tc = cfg.train
    net = wrap_ddp(model, env)
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.98))
    sched = make_scheduler(opt, steps, min(tc.warmup_steps, max(steps // 10, 1)), tc.min_lr_ratio)
    state_path = out_dir / STATE_FILE if out_dir is not None else None
    start = 0
    if resume and state_path is not None:
        start, _ = load_train_state(state_path, model=model, optimizer=opt, scheduler=sched)
    x_val, y_val = split(cfg.data, "val", cfg.data.n_val)
    val: dict[str, Any] = {}
    done = start
    carried = None  # stream state handed from batch to batch (train.state_passing)
    net.train()
    for step in progress(range(start, steps), total=steps - start, desc=tag):
        xb, yb = split(train_data(cfg, step), "train", tc.batch_size, step + 1 + 10_000 * (tag != "train"))
        idx = shard_indices(torch.arange(tc.batch_size), env)
        xr, yr = xb[idx], yb[idx]
        if tc.state_passing:  # start from the (detached) final state of the previous batch
            logits, carried = net(xr, yr, carried, return_state=True)
            carried = model.runner().detach(carried)
        else:
            logits = net(xr, yr)  # (k, v): logits only where a target is scored
        loss = loss_fn(logits, yr[yr != -100])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        done = step + 1
        if log is not None and (done % 10 == 0 or done == steps):
            log.log(done, phase=tag, loss=all_reduce_mean(loss.item(), env), lr=sched.get_last_lr()[0])
        last = done == steps
        if tc.eval_every and (done % tc.eval_every == 0 or last):
            val = validate(model, x_val, y_val)
            if log is not None:
                log.log(done, phase=tag, **val)
            net.train()
            # never stop before min_full_len_steps steps at the full training length
            full_from = max((u for u, _ in tc.curriculum), default=0)
            if val["val_accuracy"] >= tc.target_accuracy and done - full_from >= tc.min_full_len_steps:
                break
        if state_path is not None and env.is_main and tc.save_every and done % tc.save_every == 0 and not last:
            save_train_state(state_path, model=model, optimizer=opt, scheduler=sched, step=done)
    if not val:
        val = validate(model, x_val, y_val)
    val["steps"] = done
    return val


def train(cfg: Config, *, out_dir: str | Path, resume: bool = False, preset: str | None = None,
          evaluate_at_end: bool = True) -> dict[str, Any]:
    """Train (optionally after an LR sweep), save the checkpoint into ``out_dir``, return its metrics."""
    out_dir = Path(out_dir)
    tc = cfg.train
    if tc.batch_size < 1 or tc.steps < 1:
        raise UserError("--train.batch_size and --train.steps must be >= 1")
    check_config(cfg.data)
    for e in tc.curriculum:
        check_config(train_data(cfg, e[0] - 1))
    env = init_distributed(tc.device)
    try:
        set_threads(tc.threads or None)
        state_path = out_dir / STATE_FILE
        if resume and not state_path.exists():
            done = (out_dir / "config.json").exists()
            raise UserError(f"nothing to resume in {out_dir}: "
                            + ("the run already finished" if done else f"no {STATE_FILE}") + "; drop --resume")
        if not resume and env.is_main:
            state_path.unlink(missing_ok=True)
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
        barrier(env)
        log = MetricLogger(out_dir / "metrics.jsonl", rank=env.rank)
        sweep: dict[str, Any] = {}
        if tc.lr_sweep and not resume:
            best = None
            for lr in tc.lr_sweep:
                seed_everything(tc.seed)
                c = dataclasses.replace(cfg, train=dataclasses.replace(tc, lr=lr))
                m = build_model(c).to(env.device)
                v = _run(c, m, env, tc.sweep_steps, out_dir=None, resume=False, log=log, tag=f"sweep lr={lr:g}")
                sweep[f"{lr:g}"] = round(v["val_accuracy"], 4)
                key = (v["val_accuracy"], -v["val_loss"])
                if best is None or key > best[0]:
                    best = (key, lr)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(tc, lr=best[1]))
            log.log(0, phase="sweep", chosen_lr=best[1], sweep=sweep)
        seed_everything(cfg.train.seed)
        model = build_model(cfg).to(env.device)
        val = _run(cfg, model, env, cfg.train.steps, out_dir=out_dir, resume=resume, log=log)
        metrics: dict[str, Any] = {}
        if evaluate_at_end:
            metrics = evaluate_model(model, cfg.eval)
        metrics.update({"val_accuracy": round(val["val_accuracy"], 4), "val_loss": round(val["val_loss"], 4),
                        "steps": val["steps"], "lr": cfg.train.lr})
        if sweep:
            metrics["lr_sweep"] = sweep
        if env.is_main:
            model.save_pretrained(out_dir, preset=preset, metrics=metrics,
                                  data={"name": f"generated:{cfg.data.task}", "sha256": _fingerprint(cfg),
                                        "seed": cfg.data.seed})
            state_path.unlink(missing_ok=True)
        barrier(env)
        return metrics
    finally:
        cleanup_distributed()
