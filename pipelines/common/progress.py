"""Progress bars and JSONL metric logs; quiet mode for ``--quiet`` and non-terminals."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("longstream_quiet", default=False)


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Within this block progress bars are off (``--quiet``); restored on exit, thread-safe."""
    token = _QUIET.set(bool(enabled) or _QUIET.get())
    try:
        yield
    finally:
        _QUIET.reset(token)


def is_quiet() -> bool:
    """True inside :func:`quiet`, with ``LONGSTREAM_QUIET=1``, or when stderr is not a terminal."""
    if _QUIET.get() or os.environ.get("LONGSTREAM_QUIET") == "1":
        return True
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):
        return True


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None, **kw: Any):
    """A tqdm bar on stderr, disabled when quiet (see :func:`is_quiet`) or on non-zero ranks."""
    from tqdm.auto import tqdm

    disable = is_quiet() or int(os.environ.get("RANK", "0")) != 0
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False, **kw)


def _strict(v: Any) -> Any:
    """``v`` with NaN / infinite floats as ``None`` (strict JSON: the log stays parseable)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    return v


class MetricLogger:
    """Append one JSON object per call to ``path`` (JSONL, strict: a non-finite value is
    written as ``null``); only rank 0 writes."""

    def __init__(self, path: str | os.PathLike | None, *, rank: int = 0) -> None:
        self.path = Path(path) if path is not None else None
        self.rank = rank
        if self.path is not None and rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int | None = None, **metrics: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"time": round(_dt.datetime.now(_dt.timezone.utc).timestamp(), 3)}
        if step is not None:
            rec["step"] = step
        for k, v in metrics.items():
            rec[k] = v.item() if isinstance(v, torch.Tensor) else v
        if self.path is not None and self.rank == 0:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(_strict(rec), allow_nan=False) + "\n")
        return rec

    @staticmethod
    def step_of(line: str | bytes) -> int | None:
        """The ``step`` of one JSONL record (None: no step, or not a JSON object)."""
        try:
            rec = json.loads(line)
        except ValueError:
            return None
        step = rec.get("step") if isinstance(rec, dict) else None
        return step if isinstance(step, int) else None

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict[str, Any]]:
        p = Path(path)
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
