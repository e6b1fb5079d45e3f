"""Resumable training state: model, optimizer, scheduler, step and RNG in one atomic file.

The file is written through :func:`longstream.backbones.io.atomic_write` and holds only
tensors and plain containers, so it is read back with ``torch.load(weights_only=True)``
(the optimizer/RNG state has no safetensors form; no arbitrary pickle is ever loaded)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longstream.backbones.io import atomic_write

from .distributed import unwrap
from .errors import UserError


def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        s = np.random.get_state()
        st["numpy"] = [s[0], torch.from_numpy(s[1].astype("int64")), int(s[2]), int(s[3]), float(s[4])]
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    if "python" in st:
        py = st["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "torch" in st:
        torch.set_rng_state(st["torch"])
    if "numpy" in st:
        import numpy as np

        s = st["numpy"]
        np.random.set_state((s[0], s[1].numpy().astype("uint32"), s[2], s[3], s[4]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_train_state(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a resumable training state (model, optimizer, scheduler, step, RNG).

    Saved with ``torch.save`` of tensors and plain containers only, so it loads with
    ``weights_only=True`` (no arbitrary pickles). ``extra`` must hold plain values; ``run``
    is the frame's record (the run's config and preset, the size of its log), written by
    :class:`~longstream.pipelines.common.TrainRun`.
    """
    path = Path(path)
    state = {
        "step": int(step),
        "run": run or {},
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state(),
        "extra": extra or {},
    }
    with atomic_write(path, "wb", perms=0o600) as f:  # private: a run's state, not a published file
        torch.save(state, f)
    return path


def read_train_state(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw dict of a state written by :func:`save_train_state` (a :class:`UserError` if unreadable)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no training state at {path}; drop --resume to start a new run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"training state {path} is unreadable ({e}); delete it or drop --resume") from e
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(f"training state {path} is not a longstream train state; delete it or drop --resume")
    return state


def load_train_state(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
    state: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Load a state written by :func:`save_train_state` (or the already-read ``state`` dict of
    :func:`read_train_state`); returns ``(step, extra)``."""
    if state is None:
        state = read_train_state(path, map_location=map_location)
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng and state.get("rng"):
        _set_rng_state(state["rng"])
    return int(state["step"]), dict(state.get("extra") or {})


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


def _show(v: Any) -> str:
    return "<absent>" if v is _ABSENT else (v if isinstance(v, str) else json.dumps(v, default=str))


_ABSENT = object()


def config_diff(old: dict[str, Any], new: dict[str, Any], *, ignore: frozenset[str] = frozenset()) -> list[str]:
    """``["train.lr 0.001 -> 0.003", ...]``: the dotted fields where two config dicts differ.

    A field whose last name is in ``ignore`` (e.g. ``threads``) is not compared."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k.rsplit(".", 1)[-1] in ignore:
            continue
        va, vb = a.get(k, _ABSENT), b.get(k, _ABSENT)
        if va is _ABSENT or vb is _ABSENT or type(va) is not type(vb) or va != vb:
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va == vb:
                continue  # 1 and 1.0: the same value
            out.append(f"{k} {_show(va)} -> {_show(vb)}")
    return out
