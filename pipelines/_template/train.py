"""Template training loop: explicit, using the helpers of ``pipelines/common.py``.

Works single-process and under ``torchrun --nproc_per_node N`` unchanged: every rank
draws the same global batch of indices for a step (a deterministic function of the
seed and the step), takes its contiguous share, and DDP averages the gradients, so N
processes with global batch B follow the single-process run with batch B.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longstream.pipelines.common import (
    EarlyStopping,
    MetricLogger,
    UserError,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    load_train_state,
    make_scheduler,
    progress,
    save_train_state,
    seed_everything,
    set_threads,
    shard_indices,
    wrap_ddp,
)

from .config import Config
from .data import make_split
from .evaluate import evaluate_arrays
from .model import build_model

STATE_FILE = "train_state.pt"


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """The global batch of step ``step``: same on every rank, resumable (no iterator state)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (batch_size,), generator=g)


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(x.numpy().tobytes())
    h.update(y.numpy().tobytes())
    return h.hexdigest()


def train(
    cfg: Config, *, out_dir: str | Path, resume: bool = False, preset: str | None = None,
    max_steps_this_run: int = 0,
) -> dict[str, Any]:
    """Train, save the checkpoint into ``out_dir`` (rank 0) and return the final test metrics.

    ``max_steps_this_run`` stops early after that many steps, leaving a resumable
    ``train_state.pt`` (for time-sliced jobs and the resume test).
    """
    out_dir = Path(out_dir)
    tc = cfg.train
    if tc.batch_size < 1 or tc.steps < 1:
        raise UserError("--train.batch_size and --train.steps must be >= 1")
    env = init_distributed(tc.device)
    try:
        set_threads(tc.threads or None)
        seed_everything(tc.seed)
        x_tr, y_tr = make_split(cfg.data, "train")
        x_val, y_val = make_split(cfg.data, "val")
        model = build_model(cfg).to(env.device)
        net = wrap_ddp(model, env)
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        sched = make_scheduler(opt, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
        stopper = EarlyStopping(tc.patience, mode="min") if tc.patience > 0 else None

        state_path = out_dir / STATE_FILE
        start = 0
        if resume:
            if not state_path.exists():
                done = (out_dir / "config.json").exists()
                raise UserError(
                    f"nothing to resume in {out_dir}: "
                    + ("the run already finished" if done else f"no {STATE_FILE}") + "; drop --resume"
                )
            start, extra = load_train_state(state_path, model=model, optimizer=opt, scheduler=sched)
            if stopper and extra.get("stopper"):
                stopper.load_state_dict(extra["stopper"])
        elif env.is_main and state_path.exists():
            state_path.unlink()  # a fresh run must not be resumed from an older one
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
        barrier(env)
        log = MetricLogger(out_dir / "metrics.jsonl", rank=env.rank)

        stop_at = tc.steps if max_steps_this_run <= 0 else min(tc.steps, start + max_steps_this_run)
        step = start
        net.train()
        for step in progress(range(start, stop_at), total=stop_at - start, desc="train", initial=0):
            idx = shard_indices(batch_indices(step, tc.batch_size, len(x_tr), tc.seed), env)
            xb, yb = x_tr[idx].to(env.device), y_tr[idx].to(env.device)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces (averages) gradients here
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            done = step + 1
            if done % 10 == 0 or done == tc.steps:
                log.log(done, loss=all_reduce_mean(loss.item(), env), lr=sched.get_last_lr()[0])
            stop = False
            if tc.eval_every and (done % tc.eval_every == 0 or done == tc.steps):
                val = evaluate_arrays(model, x_val, y_val, device=env.device)
                log.log(done, val_loss=val["loss"], val_accuracy=val["accuracy"])
                net.train()
                stop = bool(stopper and stopper.step(val["loss"]))
            if env.is_main and tc.save_every and (done % tc.save_every == 0 or stop) and done < tc.steps:
                save_train_state(state_path, model=model, optimizer=opt, scheduler=sched, step=done,
                                 extra={"stopper": stopper.state_dict() if stopper else None})
            if stop:
                break
        else:
            done = stop_at
        if done < tc.steps and not (stopper and stopper.bad >= stopper.patience):
            if env.is_main:
                save_train_state(state_path, model=model, optimizer=opt, scheduler=sched, step=done,
                                 extra={"stopper": stopper.state_dict() if stopper else None})
            barrier(env)
            return {"status": "paused", "step": done, "resume": f"train --out {out_dir} --resume"}

        x_te, y_te = make_split(cfg.data, "test")
        metrics = evaluate_arrays(model, x_te, y_te, device=env.device)
        metrics["steps"] = done
        if env.is_main:
            model.save_pretrained(
                out_dir, preset=preset, metrics=metrics,
                data={"name": "generated:sine", "sha256": data_fingerprint(x_tr, y_tr), "seed": cfg.data.seed},
                extra={"training": {"world_size": env.world_size, "backend": env.backend}},
            )
            state_path.unlink(missing_ok=True)
        barrier(env)
        return metrics
    finally:
        cleanup_distributed()
