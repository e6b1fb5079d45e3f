"""Vision training loop, explicit, inside ``common.TrainRun``.

AdamW (no decay on norms / biases / SSM vectors), linear warm-up then cosine decay, label
smoothing, gradient clipping; light augmentation (random crop of the zero-padded image,
horizontal flip). Each step's batch and augmentation are a function of ``(train.seed, step)``
(:mod:`.data`), so a paused run resumes bit-identically and DDP ranks agree on the global
batch (each takes its contiguous share). The checkpoint records the test-set metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longstream.pipelines.common import (
    TrainRun,
    UserError,
    all_reduce_mean,
    make_scheduler,
    optimizer_step,
    param_groups,
    progress,
    seed_everything,
    set_threads,
    shard_indices,
    wrap_ddp,
)

from . import data as D
from .config import Config
from .model import build_model


def train(
    cfg: Config, *, out_dir: str | Path, resume: bool = False, preset: str | None = None,
    max_steps_this_run: int = 0, overwrite: bool = False,
) -> dict[str, Any]:
    """Train, save the checkpoint into ``out_dir`` (rank 0) and return the test metrics."""
    from .evaluate import evaluate_split

    tc = cfg.train
    if tc.batch_size < 1 or tc.steps < 1:
        raise UserError("--train.batch_size and --train.steps must be >= 1")
    build_model(cfg)  # a bad --model.* / --backbone.* fails here, before anything is written
    tr = D.load_split(cfg, "train")
    if tr.x.shape[0] < tc.batch_size:
        raise UserError(f"the training data has {tr.x.shape[0]} images, fewer than --train.batch_size {tc.batch_size}")
    names = cfg.data.class_names
    with TrainRun(out_dir, resume=resume, device=tc.device, total_steps=tc.steps, save_every=tc.save_every,
                  max_steps_this_run=max_steps_this_run, config=cfg, preset=preset, overwrite=overwrite) as run:
        env = run.env
        set_threads(tc.threads or None)
        seed_everything(tc.seed)
        val = D.load_split(cfg, "val") if cfg.data.val_size > 0 and tc.eval_every else None
        model = build_model(cfg).to(env.device)
        net = wrap_ddp(model, env)
        opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
        sched = make_scheduler(opt, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
        run.restore(model=model, optimizer=opt, scheduler=sched)

        def state() -> dict[str, Any]:
            return {"model": model, "optimizer": opt, "scheduler": sched}

        done = run.start
        net.train()
        for step in progress(run.steps(), desc=f"train {cfg.model.kind}"):
            idx = shard_indices(D.batch_indices(step, tc.batch_size, len(tr.x), tc.seed), env)
            xb = D.normalize(D.augment(tr.x[idx], cfg.data, step, tc.seed), cfg.data).to(env.device)
            loss = F.cross_entropy(net(xb).float(), tr.y[idx].to(env.device), label_smoothing=cfg.model.label_smoothing)
            optimizer_step(loss, opt, model=model, scheduler=sched, grad_clip=tc.grad_clip)
            done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                run.log.log(done, loss=all_reduce_mean(loss.item(), env), lr=sched.get_last_lr()[0])
            if val is not None and (done % tc.eval_every == 0 or done == tc.steps):
                m = evaluate_split(model, val, cfg, device=env.device, with_report=False)
                run.log.log(done, val_loss=m["loss"], val_accuracy=m["accuracy"])
                net.train()
            run.checkpoint(done, **state())
        else:
            paused = run.pause(done, **state())
            if paused:
                return paused

        te = D.load_split(cfg, "test")
        metrics = evaluate_split(model, te, cfg, device=env.device)
        metrics["steps"] = done
        if run.is_main:
            model.save_pretrained(
                out_dir, preset=preset, metrics=metrics,
                data={"name": Path(tr.source).name, "sha256": tr.fingerprint(), "seed": tc.seed,
                      "classes": names, "n_train": int(tr.x.shape[0]), "n_test": int(te.x.shape[0])},
                extra={"training": {"world_size": env.world_size, "backend": env.backend}},
            )
        run.finish()
        return metrics
