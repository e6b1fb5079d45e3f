"""Speech training loop: explicit, on the helpers of ``longstream.pipelines.common``.

Each step draws a global batch of clip indices and the augmentation (speed, shift, crop,
gain, noise; SpecAugment masks) from generators seeded by ``(seed, step)``, so a batch is a
function of the seed and the step: a paused and resumed run ends bit-identical, and under
``torchrun`` every rank takes its contiguous share of the same global batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longstream.pipelines.common import (
    TrainRun,
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

from .config import Config, CTCConfig
from .data import augment_batch, collate, load_split
from .evaluate import evaluate_waves
from .model import build_model


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """The global batch of step ``step``: same on every rank, resumable (no iterator state)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (batch_size,), generator=g)


def train(
    cfg: Config, *, out_dir: str | Path, resume: bool = False, preset: str | None = None,
    max_steps_this_run: int = 0, overwrite: bool = False,
) -> dict[str, Any]:
    """Train, save the checkpoint into ``out_dir`` (rank 0) and return the test metrics."""
    if isinstance(cfg, CTCConfig):  # --preset ctc-*: the long-stream CTC recogniser (ctc_train.py)
        from .ctc_train import train as train_ctc

        return train_ctc(cfg, out_dir=out_dir, resume=resume, preset=preset,
                         max_steps_this_run=max_steps_this_run, overwrite=overwrite)
    tc = cfg.train
    build_model(cfg)  # a bad --model.* / --backbone.* value fails here, before the run directory exists
    with TrainRun(out_dir, resume=resume, device=tc.device, total_steps=tc.steps, save_every=tc.save_every,
                  max_steps_this_run=max_steps_this_run, config=cfg, preset=preset, overwrite=overwrite) as run:
        env = run.env
        set_threads(tc.threads or None)
        seed_everything(tc.seed)
        waves, y_tr, clips_tr = load_split(cfg.data, "train")
        val = load_split(cfg.data, "val") if cfg.data.val_takes > 0 and cfg.data.split == "standard" else None
        model = build_model(cfg)
        model.set_feature_stats(waves)  # log-mel normalisation statistics of the training clips
        profiles = model.speaker_profiles(waves, [c.speaker for c in clips_tr])  # norm=speaker only
        model = model.to(env.device)
        net = wrap_ddp(model, env)
        opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
        sched = make_scheduler(opt, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
        run.restore(model=model, optimizer=opt, scheduler=sched)

        def state() -> dict[str, Any]:
            return {"model": model, "optimizer": opt, "scheduler": sched}

        done = run.start
        sr = cfg.data.sample_rate
        net.train()
        for step in progress(run.steps(), desc="train"):
            idx = torch.as_tensor(shard_indices(batch_indices(step, tc.batch_size, len(waves), tc.seed), env))
            g = torch.Generator().manual_seed(tc.seed * 7_000_003 + step + 1)
            batch = augment_batch([waves[i] for i in idx.tolist()], cfg.augment, sr, cfg.data.max_seconds, g)
            x, lengths = collate(batch)
            with torch.random.fork_rng(devices=[]):  # SpecAugment / dropout: a function of (seed, step)
                torch.manual_seed(tc.seed * 9_000_011 + step)
                prof = None if profiles is None else profiles[idx].to(env.device)
                logits = net(x.to(env.device), lengths, prof)
            loss = F.cross_entropy(logits, y_tr[idx].to(env.device), label_smoothing=cfg.model.label_smoothing)
            optimizer_step(loss, opt, model=model, scheduler=sched, grad_clip=tc.grad_clip)
            done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                run.log.log(done, loss=all_reduce_mean(loss.item(), env), lr=sched.get_last_lr()[0])
            if val is not None and tc.eval_every and (done % tc.eval_every == 0 or done == tc.steps):
                m = evaluate_waves(model, val[0], val[1], speakers=[c.speaker for c in val[2]],
                                   batch_size=tc.eval_batch_size, device=env.device)
                run.log.log(done, val_loss=m["loss"], val_accuracy=m["accuracy"])
                net.train()
            run.checkpoint(done, **state())
        else:
            paused = run.pause(done, **state())
            if paused:
                return paused

        x_te, y_te, clips_te = load_split(cfg.data, "test")
        metrics = evaluate_waves(model, x_te, y_te, speakers=[c.speaker for c in clips_te],
                                 batch_size=tc.eval_batch_size, device=env.device)
        metrics["steps"] = done
        if run.is_main:
            model.save_pretrained(
                out_dir, preset=preset, metrics=metrics,
                data={"name": "fsdd", "split": cfg.data.split,
                      "sha256": data_fingerprint(torch.tensor([len(w) for w in waves]), y_tr)},
                extra={"training": {"world_size": env.world_size, "backend": env.backend}},
            )
        run.finish()
        return metrics
