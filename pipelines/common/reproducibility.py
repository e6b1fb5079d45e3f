"""Seeds, thread count and device choice."""

from __future__ import annotations

import os
import random

import torch

from .errors import UserError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if installed) and torch (CPU and CUDA)."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_threads(n: int | None = None) -> int:
    """Set torch intra-op threads (``None``: ``$LONGSTREAM_THREADS`` or leave as is). Returns the count."""
    if n is None:
        env = os.environ.get("LONGSTREAM_THREADS")
        n = int(env) if env else None
    if n is not None and n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def pick_device(pref: str = "auto") -> torch.device:
    """``"auto"`` -> cuda if available else cpu; otherwise the named device."""
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError as e:
        raise UserError(f"unknown device {pref!r}: use auto, cpu or cuda[:N]") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {pref!r} requested but CUDA is not available; use --device cpu")
    return dev
