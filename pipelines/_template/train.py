"""Template training loop: explicit, on the helpers of ``longstream.pipelines.common``.

:class:`~longstream.pipelines.common.TrainRun` is the frame (distributed set-up and
cleanup, resume or fresh start, train-state saves); the loop is written out here.
Works single-process and under ``torchrun --nproc_per_node N`` unchanged: every rank
draws the same global batch of indices for a step (a deterministic function of the
seed and the step), takes its contiguous share, and DDP averages the gradients, so N
processes with global batch B follow the single-process run with batch B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longstream.pipelines.common import (
    EarlyStopping,
    TrainRun,
    UserError,
    all_reduce_mean,
    data_fingerprint,
    make_scheduler,
    optimizer_step,
    param_groups,
    progress,
    seed_everything,
    set_threads,
    shard_indices,
    wrap_ddp,
)

from .config import Config
from .data import make_split
from .evaluate import evaluate_arrays
from .model import build_model


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """The global batch of step ``step``: same on every rank, resumable (no iterator state)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (batch_size,), generator=g)


def train(
    cfg: Config, *, out_dir: str | Path, resume: bool = False, preset: str | None = None,
    max_steps_this_run: int = 0, overwrite: bool = False,
) -> dict[str, Any]:
    """Train, save the checkpoint into ``out_dir`` (rank 0) and return the final test metrics.

    ``max_steps_this_run`` stops early after that many steps, leaving a resumable
    ``train_state.pt`` and returning ``{"status": "paused", ...}``. ``overwrite`` replaces
    a finished run in ``out_dir`` (refused otherwise).
    """
    tc = cfg.train
    if tc.batch_size < 1 or tc.steps < 1:
        raise UserError("--train.batch_size and --train.steps must be >= 1")
    with TrainRun(out_dir, resume=resume, device=tc.device, total_steps=tc.steps, save_every=tc.save_every,
                  max_steps_this_run=max_steps_this_run, config=cfg, preset=preset, overwrite=overwrite) as run:
        env = run.env
        set_threads(tc.threads or None)
        seed_everything(tc.seed)
        x_tr, y_tr = make_split(cfg.data, "train")
        x_val, y_val = make_split(cfg.data, "val")
        model = build_model(cfg).to(env.device)
        net = wrap_ddp(model, env)
        opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
        sched = make_scheduler(opt, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
        stopper = EarlyStopping(tc.patience, mode="min") if tc.patience > 0 else None
        extra = run.restore(model=model, optimizer=opt, scheduler=sched)
        if stopper and extra.get("stopper"):
            stopper.load_state_dict(extra["stopper"])

        def state() -> dict[str, Any]:
            return {"model": model, "optimizer": opt, "scheduler": sched,
                    "extra": {"stopper": stopper.state_dict() if stopper else None}}

        done = run.start
        net.train()
        for step in progress(run.steps(), desc="train"):
            idx = shard_indices(batch_indices(step, tc.batch_size, len(x_tr), tc.seed), env)
            xb, yb = x_tr[idx].to(env.device), y_tr[idx].to(env.device)
            loss = F.cross_entropy(net(xb), yb)
            optimizer_step(loss, opt, model=model, scheduler=sched, grad_clip=tc.grad_clip)
            done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                run.log.log(done, loss=all_reduce_mean(loss.item(), env), lr=sched.get_last_lr()[0])
            stop = False
            if tc.eval_every and (done % tc.eval_every == 0 or done == tc.steps):
                val = evaluate_arrays(model, x_val, y_val, device=env.device)
                run.log.log(done, val_loss=val["loss"], val_accuracy=val["accuracy"])
                net.train()
                stop = bool(stopper and stopper.step(val["loss"]))
            if stop:  # early stopping ends the run here: a complete run, not a pause
                break
            run.checkpoint(done, **state())
        else:
            paused = run.pause(done, **state())
            if paused:
                return paused

        x_te, y_te = make_split(cfg.data, "test")
        metrics = evaluate_arrays(model, x_te, y_te, device=env.device)
        metrics["steps"] = done
        if run.is_main:
            model.save_pretrained(
                out_dir, preset=preset, metrics=metrics,
                data={"name": "generated:sine", "sha256": data_fingerprint(x_tr, y_tr), "seed": cfg.data.seed},
                extra={"training": {"world_size": env.world_size, "backend": env.backend}},
            )
        run.finish()
        return metrics
