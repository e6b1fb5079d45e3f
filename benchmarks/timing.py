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
    """The CPU model from /proc/cpuinfo with its family / model numbers and widest vector ISA, e.g.
    ``AMD EPYC (family 25, model 1, AVX2)``: the virtual machines of one name differ (Zen 3 with AVX2
    only, Zen 4 with AVX-512), and so do the GEMM libraries' and kernels' paths on them.
    ``platform.processor()`` where /proc/cpuinfo is unreadable."""
    try:
        info: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (p.strip() for p in line.split(":", 1))
                info.setdefault(k, v)
            elif info:
                break  # the first processor's block is enough
    except OSError:
        return platform.processor()
    flags = set(info.get("flags", "").split())
    isa = "AVX-512" if {"avx512f", "avx512bw", "avx512vl"} <= flags else "AVX2" if "avx2" in flags else "SSE"
    if "avx512_bf16" in flags:
        isa += " + BF16"
    return f"{info.get('model name', platform.processor())} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}, {isa})"
