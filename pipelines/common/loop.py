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
  Run safety: a finished run dir is not trained into again without ``overwrite``;
  ``--resume`` with another config or preset is refused (with the diff); a resumed run
  says so on stderr and its ``metrics.jsonl`` drops what was logged after the state it
  resumes from; a diverged run (non-finite loss, weights or final metrics) stops with
  a :class:`UserError` and keeps its last good train state.
- :func:`optimizer_step`: zero_grad, backward, optional gradient clipping, step,
  scheduler step; a non-finite loss raises :class:`TrainingDiverged` before anything
  is updated.
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

import contextvars
import hashlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from longstream.backbones.io import NonFiniteValueError, atomic_write_bytes

from .config import config_to_dict
from .distributed import DistEnv, barrier, cleanup_distributed, init_distributed, unwrap
from .errors import UserError
from .progress import MetricLogger
from .train_state import config_diff, load_train_state, read_train_state, save_train_state

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"

#: Config fields (by their last name, in any section) that may differ on ``--resume``:
#: where and how fast the run computes, and how often it saves, not what it computes.
RESUME_MAY_DIFFER = frozenset({"device", "threads", "save_every"})

__all__ = [
    "METRICS_FILE",
    "RESUME_MAY_DIFFER",
    "STATE_FILE",
    "TrainRun",
    "TrainingDiverged",
    "data_fingerprint",
    "optimizer_step",
]

_ACTIVE: contextvars.ContextVar[TrainRun | None] = contextvars.ContextVar("longstream_train_run", default=None)


class TrainingDiverged(UserError):
    """A training loss (or the weights) became NaN / infinite: the run stops here.

    Raised by :func:`optimizer_step` before the update; inside a :class:`TrainRun` it is
    re-raised with the step and the last good train state named."""

    def __init__(self, what: str, step: int | None = None) -> None:
        self.what, self.step = what, step
        at = f" at step {step}" if step is not None else ""
        super().__init__(f"training diverged{at} ({what}); lower --train.lr or set --train.grad_clip")


def _first_nonfinite(model: nn.Module) -> str | None:
    for name, p in unwrap(model).named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()):
            return name
    return None


class TrainRun:
    """One training run in ``out_dir``: distributed set-up, resume / fresh start, train-state saves.

    ``total_steps`` is the run's full length (0: nothing to train, e.g. a seasonal-naive
    forecaster; the frame still applies); ``max_steps_this_run > 0`` ends this
    process after that many steps (from where it resumed), leaving a resumable state.
    ``save_every > 0`` also saves every that many steps. ``config`` (the run's dataclass
    config) and ``preset`` are recorded in the train state and compared on ``resume``
    (fields named in :data:`RESUME_MAY_DIFFER` excepted). A ``out_dir`` that already holds
    a finished run (``config.json``) is refused unless ``overwrite`` (then the old log is
    removed now and the old checkpoint stays until the new one is swapped in). After
    ``__enter__``: ``env`` (:class:`DistEnv`), ``log`` (:class:`MetricLogger` on
    ``metrics.jsonl``, rank 0 writes), ``state_path`` and ``start`` (the step
    :meth:`restore` resumed at).
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
        config: Any = None,
        preset: str | None = None,
        overwrite: bool = False,
    ) -> None:
        if total_steps < 0:
            raise UserError(f"a training run cannot have {total_steps} steps; raise --train.steps")
        if resume and overwrite:
            raise UserError("--resume continues the run in --out and --overwrite replaces it; give one of them")
        self.out_dir = Path(out_dir)
        self.resume = bool(resume)
        self.overwrite = bool(overwrite)
        self.device = device
        self.total_steps = int(total_steps)
        self.save_every = max(0, int(save_every))
        self.max_steps_this_run = max(0, int(max_steps_this_run))
        self.config = config_to_dict(config) if config is not None else None
        self.preset = preset
        self.state_path = self.out_dir / STATE_FILE
        self.start = 0
        self.saved_step: int | None = None  # the step of the train state on disk (None: none)
        self.steps_done = 0  # optimizer steps counted by optimizer_step since restore()
        self.env = DistEnv()
        self.log = MetricLogger(None)
        self._state: dict[str, Any] | None = None
        self._token: contextvars.Token | None = None

    # ------------------------------------------------------------------ context
    def __enter__(self) -> TrainRun:
        self.env = init_distributed(self.device)
        try:
            metrics = self.out_dir / METRICS_FILE
            if self.resume:
                self._enter_resume(metrics)
            else:
                if (self.out_dir / "config.json").exists() and not self.overwrite:
                    raise UserError(f"{self.out_dir} holds a finished run; use --overwrite to replace it "
                                    "or a new --out")
                if self.env.is_main:  # a fresh run must not mix with an older one
                    self.state_path.unlink(missing_ok=True)
                    metrics.unlink(missing_ok=True)
            barrier(self.env)
            self.log = MetricLogger(metrics, rank=self.env.rank)
        except BaseException:
            cleanup_distributed()
            raise
        self._token = _ACTIVE.set(self)
        return self

    def _enter_resume(self, metrics: Path) -> None:
        if not self.state_path.exists():
            finished = (self.out_dir / "config.json").exists()
            why = "the run already finished" if finished else f"no {STATE_FILE}"
            raise UserError(f"nothing to resume in {self.out_dir}: {why}; drop --resume")
        self._state = read_train_state(self.state_path)
        rec = dict(self._state.get("run") or {})
        if self.config is not None and rec.get("config") is not None:
            diff = config_diff(rec["config"], self.config, ignore=RESUME_MAY_DIFFER)
            known = rec.get("preset") is not None and self.preset is not None  # None: not named (Python API)
            if known and rec.get("preset") != self.preset:  # the preset first: it explains the rest
                diff = [d for d in diff if not d.startswith("preset ")]
                diff.insert(0, f"preset {rec.get('preset')} -> {self.preset}")
            if diff:
                more = f", ... ({len(diff) - 6} more)" if len(diff) > 6 else ""
                raise UserError(f"the run in {self.out_dir} was made with a different config (diff: "
                                f"{', '.join(diff[:6])}{more}); drop --resume or use a new --out")
        step = int(self._state["step"])
        self.saved_step = step
        if self.env.is_main:
            print(f"resuming {self.out_dir} from step {step} of {self.total_steps}", file=sys.stderr, flush=True)
            self._truncate_log(metrics, rec.get("log_bytes"), step)

    @staticmethod
    def _truncate_log(metrics: Path, log_bytes: Any, step: int) -> None:
        """Drop the records written after the saved state, so the resumed log equals an uninterrupted one."""
        if not metrics.exists():
            return
        data = metrics.read_bytes()
        if isinstance(log_bytes, int):
            keep = data[:log_bytes] if 0 <= log_bytes < len(data) else data
        else:  # a state without the record: keep the records up to its step
            lines = data.splitlines(keepends=True)
            keep = b"".join(ln for ln in lines if MetricLogger.step_of(ln) is None or MetricLogger.step_of(ln) <= step)
        if keep != data:
            atomic_write_bytes(metrics, keep)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        cleanup_distributed()
        if isinstance(exc, TrainingDiverged):
            step = exc.step if exc.step is not None else self.start + self.steps_done + 1
            raise UserError(f"training diverged at step {step} ({exc.what}); {self._fix()}") from exc
        if isinstance(exc, NonFiniteValueError):
            raise UserError(f"the run in {self.out_dir} ended with non-finite final metrics ({exc.values}); "
                            f"no checkpoint was written; {self._fix()}") from exc

    def _fix(self) -> str:
        how = "train again with a lower --train.lr or a --train.grad_clip"
        if self.saved_step is not None and self.state_path.exists():
            return f"the last good state is {self.state_path} (step {self.saved_step}), kept; {how}"
        return f"no train state was saved before it; {how}"

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    # ------------------------------------------------------------------ state
    def restore(
        self, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None
    ) -> dict[str, Any]:
        """On ``--resume``: load model, optimizer, scheduler and RNG; returns the saved ``extra``
        (``{}`` on a fresh run). Sets :attr:`start` to the saved step."""
        self.steps_done = 0
        if not self.resume:
            return {}
        # loaded on the CPU (the RNG states must stay CPU tensors); load_state_dict moves weights
        state, self._state = self._state, None
        self.start, extra = load_train_state(self.state_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                             state=state)
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
        """Write the train state after ``step`` steps (rank 0), then a barrier.

        Weights that are not finite are never saved: :class:`TrainingDiverged` instead, and
        the state on disk stays the last good one."""
        bad = _first_nonfinite(model)  # every rank checks (DDP weights agree), so all raise together
        if bad is not None:
            raise TrainingDiverged(f"weight {bad} is not finite", step=step)
        if self.is_main:
            log = self.log.path
            run = {"config": self.config, "preset": self.preset, "total_steps": self.total_steps,
                   "log_bytes": log.stat().st_size if log is not None and log.exists() else 0}
            save_train_state(self.state_path, model=model, optimizer=optimizer, scheduler=scheduler,
                             step=step, extra=extra, run=run)
        self.saved_step = step
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


def _loss_finite(loss: torch.Tensor, run: TrainRun | None) -> tuple[bool, float]:
    value = float(loss.detach().float().item()) if loss.numel() == 1 else float("nan")
    ok = math.isfinite(value) if loss.numel() == 1 else bool(torch.isfinite(loss.detach()).all())
    if run is not None and run.env.distributed:  # every rank stops together, or none does
        import torch.distributed as dist

        flag = torch.tensor([1.0 if ok else 0.0], device=run.env.device if run.env.backend == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item() > 0)
    return ok, value


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    model: nn.Module | None = None,
    scheduler: Any = None,
    grad_clip: float = 0.0,
) -> None:
    """zero_grad, ``loss.backward()`` (DDP averages gradients here), optional clipping of the
    gradient norm of ``model``'s parameters to ``grad_clip``, optimizer step, scheduler step.

    A NaN / infinite ``loss`` (on any rank) raises :class:`TrainingDiverged` before the
    update, so the weights and optimizer state stay those of the last good step."""
    run = _ACTIVE.get()
    ok, value = _loss_finite(loss, run)
    if not ok:
        raise TrainingDiverged(f"loss {value}", step=run.start + run.steps_done + 1 if run is not None else None)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        params = model.parameters() if model is not None else [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if run is not None:
        run.steps_done += 1


def data_fingerprint(*arrays: torch.Tensor | np.ndarray) -> str:
    """sha256 over the bytes of ``arrays`` (tensors or NumPy arrays), in order."""
    h = hashlib.sha256()
    for a in arrays:
        arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
