"""Optimisation helpers: AdamW parameter groups, LR schedules, early stopping."""

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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices only. Vectors (norm scales, biases)
    and parameters flagged ``_no_weight_decay`` (Mamba's ``A_log``, ``D``, ``dt_bias``) are
    not decayed: decaying ``A_log`` pulls every SSM timescale to 1 step and shortens memory."""
    decay, keep = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (keep if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


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
