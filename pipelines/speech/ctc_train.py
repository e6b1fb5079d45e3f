"""Training of the connected-digit CTC recogniser on synthetic streams of train takes.

Step ``k`` builds its batch from nothing but ``(train.seed, k)``: one stream length in
``[stream.min_seconds, stream.max_seconds]`` for the batch, then ``batch_size`` streams
(``streams.make_stream``, train takes 5-49, all speakers) with seeds derived from the step, so
a resumed run sees exactly the batches it would have seen. Loss: CTC (blank + 10 digits)
plus ``model.vad_weight`` times the per-token speech/pause cross-entropy (a token is
speech when its centre lies inside a word's trimmed span). After the last step the word-time
offsets are calibrated on ``train.calib_streams`` 60 s train-take streams (median errors,
``ctc_evaluate.calibrate``) and
the checkpoint's metrics are those of ``ctc_evaluate.evaluate_model`` on test streams.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longstream.pipelines.common import (
    TrainRun,
    UserError,
    data_fingerprint,
    make_scheduler,
    optimizer_step,
    param_groups,
    progress,
    seed_everything,
    set_threads,
)

from .config import CTCConfig, speakers
from .ctc_model import CTCDigitModel, build_ctc_model
from .streams import Clip, StreamSpec, load_clips, make_stream

_VAL_SEED = 7_000_000
_CALIB_SEED = 8_000_000
_NORM_SEED = 9_000_000


def stream_spec(cfg: CTCConfig, seconds: float) -> StreamSpec:
    s = cfg.stream
    return StreamSpec(seconds=seconds, pause_min=s.pause_min, pause_max=s.pause_max, lead_min=s.lead_min,
                      lead_max=s.lead_max, snr_min=s.snr_min, snr_max=s.snr_max, clip_gain_db=s.clip_gain_db,
                      clip_level_db=s.clip_level_db, noise=s.noise)


def make_batch(model: CTCDigitModel, clips: list[Clip], cfg: CTCConfig, step: int, batch_size: int,
               seed: int) -> dict[str, torch.Tensor]:
    """Waves, CTC targets and per-token speech labels of one training step."""
    rng = np.random.default_rng([seed, step])
    seconds = float(rng.uniform(cfg.stream.min_seconds, cfg.stream.max_seconds))
    spec = stream_spec(cfg, seconds)
    streams = [make_stream(clips, spec, seed=int(rng.integers(2**62))) for _ in range(batch_size)]
    wave = torch.from_numpy(np.stack([s.audio for s in streams]))  # (b, t)
    n_tok = model.n_tokens(wave.shape[1])
    centers = np.array([model.token_center(j) for j in range(n_tok)])  # (l,)
    vad = np.zeros((batch_size, n_tok), np.int64)
    for i, s in enumerate(streams):
        for w in s.words:
            vad[i, (centers >= w.start) & (centers < w.end)] = 1
    lens = [len(s.words) for s in streams]
    targets = torch.zeros(batch_size, max(1, max(lens)), dtype=torch.long)
    for i, s in enumerate(streams):
        targets[i, : lens[i]] = torch.tensor([d + 1 for d in s.digits], dtype=torch.long)
    return {"wave": wave, "targets": targets, "target_lengths": torch.tensor(lens), "vad": torch.from_numpy(vad)}


@torch.no_grad()
def fit_feature_stats(model: CTCDigitModel, clips: list[Clip], cfg: CTCConfig, n: int = 16) -> None:
    """Set the fixed log-mel normalisation from ``n`` 8 s training streams."""
    spec = stream_spec(cfg, 8.0)
    feats = torch.cat([model.features(torch.from_numpy(make_stream(clips, spec, _NORM_SEED + i).audio)[None])[0]
                       for i in range(n)])  # (f, m)
    model.feat_mean.copy_(feats.mean(0))
    model.feat_std.copy_(feats.std(0).clamp_min(1e-3))


def init_from(model: CTCDigitModel, name_or_dir: str) -> None:
    """Copy the weights of the CTC checkpoint ``name_or_dir`` into ``model`` (same architecture)."""
    from longstream.pipelines.common import load_pretrained, load_weights

    from .ctc_model import is_ctc_checkpoint

    sd, meta, path = load_pretrained(name_or_dir, pipeline="speech")
    if not is_ctc_checkpoint(meta):
        raise UserError(f"--train.init {name_or_dir} is not a CTC checkpoint; give a ctc-release run dir")
    load_weights(model, sd, path, meta)


def losses(model: CTCDigitModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits, vad_logits, _ = model(batch["wave"])  # (b, l, 11), (b, l, 2)
    b, l, _ = logits.shape
    ctc = model.ctc_head.ctc_loss(logits, torch.full((b,), l, dtype=torch.long), batch["targets"],
                                  batch["target_lengths"])
    vad = F.cross_entropy(vad_logits.reshape(b * l, 2), batch["vad"][:, :l].reshape(-1))
    return ctc, vad


def train(cfg: CTCConfig, *, out_dir: str | Path, resume: bool = False, preset: str | None = None,
          max_steps_this_run: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Train, calibrate word times, save the checkpoint into ``out_dir``; returns its test metrics."""
    from .ctc_evaluate import val_der

    tc = cfg.train
    if preset == "ctc-finetune" and not tc.init:
        raise UserError("--preset ctc-finetune continues a trained model: pass --train.init <CTC checkpoint dir>")
    if cfg.stream.min_seconds <= 0 or cfg.stream.max_seconds < cfg.stream.min_seconds:
        raise UserError("--stream.min_seconds must be > 0 and <= --stream.max_seconds")
    t0 = time.time()
    with TrainRun(out_dir, resume=resume, device=tc.device, total_steps=tc.steps, save_every=tc.save_every,
                  max_steps_this_run=max_steps_this_run, config=cfg, preset=preset, overwrite=overwrite) as run:
        set_threads(tc.threads or None)
        seed_everything(tc.seed)
        clips = load_clips("train", cfg.data.root or None, speakers=speakers(cfg))
        model = build_ctc_model(cfg)
        if tc.init:  # continue from a trained CTC checkpoint (weights and feature statistics)
            init_from(model, tc.init)
        else:
            fit_feature_stats(model, clips, cfg, n=16 if tc.steps > 50 else 2)
        opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
        sched = make_scheduler(opt, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
        run.restore(model=model, optimizer=opt, scheduler=sched)

        def state() -> dict[str, Any]:
            return {"model": model, "optimizer": opt, "scheduler": sched}

        done = run.start
        model.train()
        for step in progress(run.steps(), desc="train ctc"):
            batch = make_batch(model, clips, cfg, step, tc.batch_size, tc.seed)
            ctc, vad = losses(model, batch)
            loss = ctc + cfg.model.vad_weight * vad
            optimizer_step(loss, opt, model=model, scheduler=sched, grad_clip=tc.grad_clip)
            done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                run.log.log(done, loss=loss.item(), ctc=ctc.item(), vad=vad.item(), lr=sched.get_last_lr()[0])
            if tc.eval_every and (done % tc.eval_every == 0 or done == tc.steps):
                run.log.log(done, val_der=val_der(model, clips, cfg, _VAL_SEED))
                model.train()
            run.checkpoint(done, **state())
        else:
            paused = run.pause(done, **state())
            if paused:
                return paused
        train_seconds = round(time.time() - t0, 1)
        names = "\n".join(f"{c.digit}_{c.speaker}_{c.take}" for c in clips)
        data = {"name": "fsdd:streams(train takes 5-49)",
                "sha256": data_fingerprint(np.frombuffer(names.encode(), np.uint8)), "seed": tc.seed}
        metrics = finalize(model, clips, out_dir, preset=preset, steps=done, train_seconds=train_seconds, data=data,
                           save=run.is_main)
        run.finish()
        return metrics


def finalize(model: CTCDigitModel, clips: list[Clip], out_dir: str | Path, *, preset: str | None, steps: int,
             train_seconds: float, data: dict, save: bool = True) -> dict[str, Any]:
    """Calibrate the word-time offsets, evaluate, and save the checkpoint (the end of :func:`train`)."""
    from .ctc_evaluate import calibrate, evaluate_model

    model.eval()
    calib = calibrate(model, clips, model.cfg, _CALIB_SEED)  # sets model.cfg.model's word-time offsets
    t1 = time.time()
    metrics = evaluate_model(model)
    metrics["eval_seconds"] = round(time.time() - t1, 1)
    metrics["train_seconds"] = train_seconds
    metrics["steps"] = steps
    if save:
        model.save_pretrained(out_dir, preset=preset, metrics=metrics, data=data, extra={"calibration": calib})
    return metrics


def add_calibrate_args(p) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a CTC checkpoint directory (rewritten)")
    p.add_argument("--threads", type=int, default=1)


def calibrate_command(args) -> dict[str, Any]:
    """``longstream speech calibrate --checkpoint DIR``: re-fit the word-time offsets of a trained CTC
    checkpoint and re-record its metrics (weights unchanged), e.g. after the decoder changed."""
    from longstream.pipelines.common import read_checkpoint_config

    from .ctc_model import ctc_from_pretrained

    path = Path(args.checkpoint)
    if not path.is_dir():
        raise UserError(f"--checkpoint {path} is not a checkpoint directory; calibrate rewrites a local checkpoint "
                        "dir (copy a hub checkpoint first)")
    set_threads(args.threads)
    meta = read_checkpoint_config(path)
    model = ctc_from_pretrained(str(path))
    clips = load_clips("train", model.cfg.data.root or None, speakers=speakers(model.cfg))
    old = meta.get("metrics", {})
    return finalize(model, clips, path, preset=meta.get("preset"), steps=int(old.get("steps", 0)),
                    train_seconds=float(old.get("train_seconds", 0.0)), data=meta.get("data", {}))
