"""Optimisation helpers: AdamW parameter groups, LR schedules (warmup-cosine and TSLib's), early stopping."""

from __future__ import annotations

import math
from typing import Any

import torch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    *,
    lr: float | None = None,
    lr_mult: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices only. Vectors (norm scales, biases)
    and parameters flagged ``_no_weight_decay`` (Mamba's ``A_log``, ``D``, ``dt_bias``) are
    not decayed: decaying ``A_log`` pulls every SSM timescale to 1 step and shortens memory.

    ``lr_mult`` maps a parameter-name prefix to a learning-rate multiplier (the first
    matching prefix wins); with it, each group also carries ``lr = lr * multiplier`` and
    ``lr_mult``. Without it the result is always ``[decayed, not decayed]``.
    """
    mults = dict(lr_mult or {})
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = next((m for pre, m in mults.items() if name.startswith(pre)), 1.0)
        decay = not (p.dim() < 2 or getattr(p, "_no_weight_decay", False))
        groups.setdefault((mult, decay), []).append(p)
    out = []
    for (mult, decay), params in groups.items():
        if not params and (mults or mult != 1.0):
            continue
        g: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if mults:
            g["lr_mult"] = mult
            if lr is not None:
                g["lr"] = lr * mult
        out.append(g)
    return out


#: TSLib's ``--lradj`` schedules (Time-Series-Library ``utils/tools.adjust_learning_rate``)
#: next to a cosine over all steps and a constant rate.
TSLIB_SCHEDULES = ("type1", "type3", "cosine", "constant")


def tslib_lr(kind: str, epoch: int, step: int = 0, total_steps: int = 1) -> float:
    """LR multiplier of TSLib schedule ``kind`` at ``epoch`` (0-based) / ``step`` of ``total_steps``.

    ``type1`` halves the rate every epoch after the first; ``type3`` keeps it for three
    epochs, then multiplies it by 0.9 per epoch; ``cosine`` decays over
    ``total_steps``; ``constant`` is 1.
    """
    if kind == "type1":
        return 0.5**epoch
    if kind == "type3":
        return 1.0 if epoch < 3 else 0.9 ** (epoch - 2)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))
    if kind == "constant":
        return 1.0
    from .errors import UserError

    raise UserError(f"unknown learning-rate schedule {kind!r} (--train.lradj); choose from {TSLIB_SCHEDULES}")


def make_epoch_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`tslib_lr` (``.step()`` once per optimizer step)."""
    tslib_lr(kind, 0)  # unknown kind -> UserError now, not at the first step
    spe, total = max(1, steps_per_epoch), max(1, steps_per_epoch * epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: tslib_lr(kind, s // spe, s, total))


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`warmup_cosine` (call ``.step()`` once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps, min_ratio)
    )


class EarlyStopping:
    """Stop when the monitored value has not improved by ``min_delta`` for ``patience`` checks."""

    def __init__(self, patience: int = 5, mode: str = "min", min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.best: float | None = None
        self.bad = 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float) -> bool:
        """Record ``value``; return True when training should stop."""
        if self.improved(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.best, self.bad = d.get("best"), int(d.get("bad", 0))
