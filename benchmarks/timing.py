"""Helpers shared by the benchmarks: interleaved timing (candidates alternate under the same
load) and the CPU name recorded in each report.

``interleaved({"a": fa, "b": fb}, repeats)`` runs every function once as a warm-up, then
``repeats`` rounds of a, b, a, b, ... (a ``gc.collect()`` before each) and keeps the minimum
per function (the least noisy estimate on a shared machine). With ``self_timed=True`` each
function returns its own elapsed seconds (for loops that time only their inner part).
"""

from __future__ import annotations

import gc
import platform
import time
from collections.abc import Callable
from pathlib import Path


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, *, self_timed: bool = False) -> dict[str, dict]:
    """``{name: {"time_s": min, "times_s": [...]}}`` of the functions timed alternately."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            r = f()
            times[k].append(float(r) if self_timed else time.perf_counter() - t0)
    return {k: {"time_s": min(v), "times_s": [round(t, 4) for t in v]} for k, v in times.items()}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (``platform.processor()`` where that is unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
