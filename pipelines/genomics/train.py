"""Genomics training loop (species / lm / cds), explicit, inside ``common.TrainRun``.

Every batch is a function of ``(train.seed, step)`` (:mod:`.data`), so a paused run resumes
bit-identically and DDP ranks agree on the global batch (each takes its contiguous share).
``--model.init DIR`` starts the embedding and backbone from a ``longstream hub import``
output dir (the imported backbone's settings replace the preset's ``backbone`` section, so
the saved checkpoint rebuilds without that dir).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longstream.backbones.config import BackboneConfig
from longstream.pipelines.common import (
    TokenClassifier,
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
from .model import build_model, imported_backbone, init_from_imported


def _task_data(cfg: Config):
    root = str(D.genomics_root(cfg.data))
    return D.load_cds(root) if cfg.model.task == "cds" else D.load_species(root)


def _detach(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {k: _detach(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_detach(v) for v in state)
    return state


def batch_loss(net, cfg: Config, data, step: int, env) -> torch.Tensor:
    """The training loss of ``step`` (this rank's share of the global batch)."""
    task = cfg.model.task
    idx = shard_indices(torch.arange(cfg.train.batch_size), env)
    if task == "species":
        x, y = D.species_batch(data, cfg, step)
        x, y, ls, aux = x[idx].to(env.device), y[idx].to(env.device), cfg.model.label_smoothing, cfg.model.kmer_aux
        if aux <= 0:
            return F.cross_entropy(net(x), y, label_smoothing=ls)
        # deep supervision of the k-mer branch: without it, once the backbone has memorised the
        # training strains the summed logits leave the composition read-out almost no gradient
        logits, composition = net(x, kmer_part=True)
        return F.cross_entropy(logits, y, label_smoothing=ls) + aux * F.cross_entropy(composition, y, label_smoothing=ls)
    if task == "lm":
        w = D.lm_batch(data, cfg, step)[idx].to(env.device)  # (b, k l + 1)
        k = max(1, cfg.data.lm_train_chunks)
        if k == 1:
            logits = net(w[:, :-1])  # (b, l, v)
            return F.cross_entropy(logits.transpose(1, 2).float(), w[:, 1:])
        # truncated BPTT: k chunks of l bases, the state carried (detached) from chunk to chunk
        n, state, total = (w.shape[1] - 1) // k, None, 0.0
        for c in range(k):
            seg = w[:, c * n : (c + 1) * n + 1]
            logits, state = net(seg[:, :-1], state=state, return_state=True)
            state = _detach(state)
            total = total + F.cross_entropy(logits.transpose(1, 2).float(), seg[:, 1:])
        return total / k
    x, y = D.cds_batch(data, cfg, step)
    logits, y = net(x[idx].to(env.device)), y[idx].to(env.device)  # (b, l, 3), (b, l)
    cw = cfg.model.cds_class_weights
    if cw and len(cw) != 3:
        raise UserError(f"--model.cds_class_weights needs 3 numbers (non-coding, plus, minus), got {cw}")
    if cfg.model.label_smoothing > 0 or cw:
        weight = torch.tensor(cw, dtype=logits.dtype, device=logits.device) if cw else None
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), weight=weight,
                               label_smoothing=cfg.model.label_smoothing)
    return TokenClassifier.loss(logits, y)


def train(
    cfg: Config, *, out_dir: str | Path, resume: bool = False, preset: str | None = None,
    max_steps_this_run: int = 0, overwrite: bool = False,
) -> dict[str, Any]:
    """Train, save the checkpoint into ``out_dir`` (rank 0) and return the test metrics."""
    from .evaluate import evaluate_model

    tc = cfg.train
    if tc.batch_size < 1 or tc.steps < 1:
        raise UserError("--train.batch_size and --train.steps must be >= 1")
    if cfg.model.members != 1:
        return train_ensemble(cfg, out_dir=out_dir, resume=resume, preset=preset,
                              max_steps_this_run=max_steps_this_run, overwrite=overwrite)
    init_tensors = None
    if cfg.model.init:
        init_tensors = imported_backbone(cfg.model.init)
        cfg.backbone = BackboneConfig.from_dict(init_tensors.backbone_config.to_dict())
    build_model(cfg)  # a bad --model.task / --backbone.* fails here, before anything is written
    with TrainRun(out_dir, resume=resume, device=tc.device, total_steps=tc.steps, save_every=tc.save_every,
                  max_steps_this_run=max_steps_this_run, config=cfg, preset=preset, overwrite=overwrite) as run:
        env = run.env
        set_threads(tc.threads or None)
        seed_everything(tc.seed)
        data = _task_data(cfg)
        model = build_model(cfg)
        if cfg.model.task == "cds":
            model.fit_prior(data)  # --model.prior_features: the gene-finder prior of the training region
        if init_tensors is not None:
            init_from_imported(model, init_tensors, cfg.model.init)
        model = model.to(env.device)
        net = wrap_ddp(model, env)
        opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
        sched = make_scheduler(opt, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
        run.restore(model=model, optimizer=opt, scheduler=sched)

        def state() -> dict[str, Any]:
            return {"model": model, "optimizer": opt, "scheduler": sched}

        done = run.start
        net.train()
        for step in progress(run.steps(), desc=f"train {cfg.model.task}"):
            loss = batch_loss(net, cfg, data, step, env)
            optimizer_step(loss, opt, model=model, scheduler=sched, grad_clip=tc.grad_clip)
            done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                run.log.log(done, loss=all_reduce_mean(loss.item(), env), lr=sched.get_last_lr()[0])
            run.checkpoint(done, **state())
        else:
            paused = run.pause(done, **state())
            if paused:
                return paused

        metrics = evaluate_model(model, data, device=env.device)
        metrics["steps"] = done
        if run.is_main:
            name = "mtb-h37rv" if cfg.model.task == "cds" else "bacteria-genomes"
            model.save_pretrained(
                out_dir, preset=preset, metrics=metrics,
                data={"name": name, "sha256": data.fingerprint(), "seed": tc.seed},
                extra={"training": {"world_size": env.world_size, "backend": env.backend,
                                    "init": cfg.model.init or None}},
            )
        run.finish()
        return metrics


def train_ensemble(
    cfg: Config, *, out_dir: str | Path, resume: bool = False, preset: str | None = None,
    max_steps_this_run: int = 0, overwrite: bool = False,
) -> dict[str, Any]:
    """``model.members`` K: train member i as the single run of seed ``train.seed + i`` in
    ``OUT.members/seed-<s>`` (beside ``OUT``: saving swaps ``OUT`` whole; an unfinished member
    resumes, a finished one with the same config is reused), then save the ensemble (members' probabilities averaged) in ``OUT`` and return its
    test metrics. Each member's own metrics are recorded in the checkpoint's ``training.members``."""
    import os

    from .config import member_config
    from .evaluate import evaluate_model
    from .model import from_pretrained

    build_model(cfg)  # a bad --model.members / --backbone.* fails here, before anything is written
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--model.members trains its members one after another in one process; "
                        "run it without torchrun (or train single models with --model.members 1)")
    out = Path(out_dir)
    if (out / "config.json").exists() and not overwrite:
        raise UserError(f"{out} holds a finished run; use --overwrite to replace it (or another --out)")
    model = build_model(cfg)
    per_member: dict[str, Any] = {}
    weights: dict[str, torch.Tensor] = {}
    for i in range(len(model.members())):
        mcfg = member_config(cfg, i)
        mdir = members_dir(out) / f"seed-{mcfg.train.seed}"
        if (mdir / "config.json").exists() and not overwrite:
            done = from_pretrained(mdir)
            if _comparable_config(done.cfg) != _comparable_config(mcfg):
                raise UserError(f"{mdir} holds a finished member trained with another config; "
                                "use --overwrite to retrain the members (or another --out)")
        else:
            res = train(mcfg, out_dir=mdir, resume=(mdir / "train_state.pt").exists() and not overwrite,
                        preset=preset, max_steps_this_run=max_steps_this_run, overwrite=overwrite)
            if res.get("status") == "paused":
                return {**res, "resume": f"train --out {out} (member seed {mcfg.train.seed} resumes)"}
            done = from_pretrained(mdir)
        prefix = "" if i == 0 else f"extra.{i - 1}."  # member 0 is the ensemble module itself
        weights.update({prefix + k: v for k, v in done.state_dict().items()})
        per_member[str(mcfg.train.seed)] = _recorded_metrics(mdir)
    model.load_state_dict(weights, strict=True)
    set_threads(cfg.train.threads or None)
    data = _task_data(cfg)
    metrics = evaluate_model(model, data, device=cfg.train.device)
    metrics["steps"] = cfg.train.steps
    model.save_pretrained(
        out, preset=preset, metrics=metrics,
        data={"name": "bacteria-genomes", "sha256": data.fingerprint(), "seed": cfg.train.seed},
        extra={"training": {"members": per_member, "init": cfg.model.init or None}},
    )
    return metrics


def members_dir(out: str | Path) -> Path:
    """Where an ensemble in ``out`` keeps its members' runs: the sibling folder ``<out>.members``."""
    p = Path(out)
    return p.with_name(p.name + ".members")


def _comparable_config(cfg: Config) -> dict[str, Any]:
    """The config as saved (``config_to_dict``), minus the device / threads a run happened to use."""
    from longstream.pipelines.common import config_to_dict

    d = config_to_dict(cfg)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("device", "threads")}
    return d


def _recorded_metrics(ckpt_dir: Path) -> dict[str, Any]:
    """The metrics a finished run recorded in its ``config.json``."""
    import json

    return json.loads((ckpt_dir / "config.json").read_text()).get("metrics", {})
