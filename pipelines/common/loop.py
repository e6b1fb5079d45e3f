"""The frame of a training run, written once: a context and an optimiser-step helper.

Not a trainer: the loop itself stays in each pipeline's ``train.py``. What every loop
repeats is here:

- :class:`TrainRun` (``with TrainRun(out_dir, resume=..., device=..., total_steps=...) as run:``)
  initialises ``torch.distributed`` (under ``torchrun``) and always cleans it up; refuses
  ``--resume`` when there is nothing to resume (the run already finished / no
  ``train_state.pt``); makes a fresh run delete a stale ``train_state.pt`` and
  ``metrics.jsonl``; loads the train state (model, optimizer, scheduler, step, RNG,
  extra) on resume; saves it on rank 0 every ``save_every`` steps and when
  ``max_steps_this_run`` pauses the run, each save followed by a barrier.
- :func:`optimizer_step`: zero_grad, backward, optional gradient clipping, step,
  scheduler step.
- :func:`data_fingerprint`: the sha256 recorded in a checkpoint's ``data`` section.

A sketch of a loop::

    with TrainRun(out_dir, resume=resume, device=tc.device, total_steps=tc.steps,
                  save_every=tc.save_every, max_steps_this_run=max_steps_this_run) as run:
        model = build_model(cfg).to(run.env.device)
        opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
        sched = make_scheduler(opt, tc.steps, tc.warmup_steps)
        run.restore(model=model, optimizer=opt, scheduler=sched)
        for step in run.steps():
            loss = ...
            optimizer_step(loss, opt, scheduler=sched, model=model, grad_clip=tc.grad_clip)
            run.log.log(step + 1, loss=loss.item())
            run.checkpoint(step + 1, model=model, optimizer=opt, scheduler=sched)
        if (paused := run.pause(model=model, optimizer=opt, scheduler=sched)):
            return paused
        ...save the checkpoint on rank 0...
        run.finish()
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import DistEnv, barrier, cleanup_distributed, init_distributed
from .errors import UserError
from .progress import MetricLogger
from .train_state import load_train_state, save_train_state

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"

__all__ = ["METRICS_FILE", "STATE_FILE", "TrainRun", "data_fingerprint", "optimizer_step"]


class TrainRun:
    """One training run in ``out_dir``: distributed set-up, resume / fresh start, train-state saves.

    ``total_steps`` is the run's full length (0: nothing to train, e.g. a seasonal-naive
    forecaster; the frame still applies); ``max_steps_this_run > 0`` ends this
    process after that many steps (from where it resumed), leaving a resumable state.
    ``save_every > 0`` also saves every that many steps. After ``__enter__``: ``env``
    (:class:`DistEnv`), ``log`` (:class:`MetricLogger` on ``metrics.jsonl``, rank 0
    writes), ``state_path`` and ``start`` (the step :meth:`restore` resumed at).
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        resume: bool = False,
        device: str = "cpu",
        total_steps: int,
        save_every: int = 0,
        max_steps_this_run: int = 0,
    ) -> None:
        if total_steps < 0:
            raise UserError(f"a training run cannot have {total_steps} steps; raise --train.steps")
        self.out_dir = Path(out_dir)
        self.resume = bool(resume)
        self.device = device
        self.total_steps = int(total_steps)
        self.save_every = max(0, int(save_every))
        self.max_steps_this_run = max(0, int(max_steps_this_run))
        self.state_path = self.out_dir / STATE_FILE
        self.start = 0
        self.env = DistEnv()
        self.log = MetricLogger(None)

    # ------------------------------------------------------------------ context
    def __enter__(self) -> TrainRun:
        self.env = init_distributed(self.device)
        try:
            if self.resume and not self.state_path.exists():
                finished = (self.out_dir / "config.json").exists()
                why = "the run already finished" if finished else f"no {STATE_FILE}"
                raise UserError(f"nothing to resume in {self.out_dir}: {why}; drop --resume")
            if not self.resume and self.env.is_main:  # a fresh run must not mix with an older one
                self.state_path.unlink(missing_ok=True)
                (self.out_dir / METRICS_FILE).unlink(missing_ok=True)
            barrier(self.env)
            self.log = MetricLogger(self.out_dir / METRICS_FILE, rank=self.env.rank)
        except BaseException:
            cleanup_distributed()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        cleanup_distributed()

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    # ------------------------------------------------------------------ state
    def restore(
        self, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None
    ) -> dict[str, Any]:
        """On ``--resume``: load model, optimizer, scheduler and RNG; returns the saved ``extra``
        (``{}`` on a fresh run). Sets :attr:`start` to the saved step."""
        if not self.resume:
            return {}
        # loaded on the CPU (the RNG states must stay CPU tensors); load_state_dict moves weights
        self.start, extra = load_train_state(self.state_path, model=model, optimizer=optimizer, scheduler=scheduler)
        return extra

    @property
    def stop_at(self) -> int:
        """The step this process stops at: ``total_steps`` or ``start + max_steps_this_run``."""
        if self.max_steps_this_run <= 0:
            return self.total_steps
        return min(self.total_steps, self.start + self.max_steps_this_run)

    def steps(self) -> range:
        """The steps this process runs (0-based): ``range(start, stop_at)``."""
        return range(self.start, self.stop_at)

    def save(
        self,
        step: int,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write the train state after ``step`` steps (rank 0), then a barrier."""
        if self.is_main:
            save_train_state(self.state_path, model=model, optimizer=optimizer, scheduler=scheduler,
                             step=step, extra=extra)
        barrier(self.env)

    def checkpoint(self, step: int, **state: Any) -> bool:
        """:meth:`save` when ``step`` is a multiple of ``save_every`` short of the end; True if saved."""
        if self.save_every and step % self.save_every == 0 and step < self.total_steps:
            self.save(step, **state)
            return True
        return False

    def pause(self, step: int | None = None, **state: Any) -> dict[str, Any] | None:
        """If this process stops short of ``total_steps`` (``max_steps_this_run``): save and
        return ``{"status": "paused", ...}``; else ``None`` (the run is complete)."""
        step = self.stop_at if step is None else step
        if step >= self.total_steps:
            return None
        self.save(step, **state)
        return {"status": "paused", "step": step, "resume": f"train --out {self.out_dir} --resume"}

    def finish(self) -> None:
        """The run is complete (checkpoint written): drop the train state (rank 0), barrier."""
        if self.is_main:
            self.state_path.unlink(missing_ok=True)
        barrier(self.env)


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    model: nn.Module | None = None,
    scheduler: Any = None,
    grad_clip: float = 0.0,
) -> None:
    """zero_grad, ``loss.backward()`` (DDP averages gradients here), optional clipping of the
    gradient norm of ``model``'s parameters to ``grad_clip``, optimizer step, scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        params = model.parameters() if model is not None else [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def data_fingerprint(*arrays: torch.Tensor | np.ndarray) -> str:
    """sha256 over the bytes of ``arrays`` (tensors or NumPy arrays), in order."""
    h = hashlib.sha256()
    for a in arrays:
        arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
