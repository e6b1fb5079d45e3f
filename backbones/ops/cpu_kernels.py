"""Optional compiled CPU kernels (``csrc/scan_cpu.cpp``), JIT-built once and cached.

The C++ files hold the sequential selective-scan recurrence (forward and a chunked
recompute backward) and a causal depthwise conv1d (``scan_cpu.cpp``), and the fused
one-token Mamba decode step (``decode_cpu.cpp``), Mamba-2's chunked SSD scan forward and
backward (``ssd_cpu.cpp``, MKL ``sgemm`` inside chunks) and its gated RMSNorm
(``gated_norm_cpu.cpp``), vectorised with AVX2 + FMA. Their work is written as
``at::parallel_for`` loops, but the library is built without ``-fopenmp``, and ATen's
``parallel_for`` is inline: without ``_OPENMP`` it runs the whole range on the calling thread. So
these kernels are single-threaded whatever ``torch.set_num_threads`` says; only the MKL GEMMs they
call and the decode GEMVs (``decode_cpu.cpp``'s own thread pool) use more threads. Every
``csrc/*.cpp`` is compiled into the one library.

It is built with ``torch.utils.cpp_extension.load`` on first use (about a minute) into
``$LONGSTREAM_CACHE`` (default ``~/.cache/longstream``)/``ext-<hash>``, keyed by the
source, the torch version and the CPU; ``make setup`` builds it ahead of time. If the
compiler, ninja or AVX2 is missing, or ``LONGSTREAM_NO_EXT=1`` is set, :func:`available`
returns False and every op falls back to its pure-PyTorch path (same results, slower).
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["available", "built_with_openmp", "has_op", "load", "ops"]

_SRC = Path(__file__).with_name("csrc") / "scan_cpu.cpp"
_SRCS = sorted(_SRC.parent.glob("*.cpp"))  # every kernel source, built into one library
_HEADERS = sorted(_SRC.parent.glob("*.h"))  # shared by them (part of the cache key)
# -fopenmp: at::parallel_for is a header template whose OpenMP region only exists when the caller is
# compiled with OpenMP; without it every kernel's parallel_for runs on the calling thread alone.
# The extension then uses the libgomp that PyTorch has already loaded (same soname).
_CFLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-Wno-ignored-attributes"]
_LDFLAGS = ["-fopenmp"]
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def _cpu_has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() in ("x86_64", "AMD64") and torch.backends.cpu.get_cpu_capability() != "DEFAULT"
    return " avx2" in flags and " fma" in flags


def _build_dir(cflags: list[str], ldflags: list[str]) -> Path:
    h = hashlib.sha256()
    for src in (*_SRCS, *_HEADERS):
        h.update(src.read_bytes())
    h.update(torch.__version__.encode())
    h.update(" ".join(cflags + ldflags).encode())
    h.update(platform.machine().encode())
    root = Path(os.environ.get("LONGSTREAM_CACHE", Path.home() / ".cache" / "longstream"))
    d = root / f"ext-{h.hexdigest()[:16]}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _load_or_build(cflags: list[str], ldflags: list[str], verbose: bool) -> bool:
    """Load the cached library built with these flags, or build it; raises when the build fails."""
    build_dir = _build_dir(cflags, ldflags)
    so = build_dir / "longstream_cpu_ops.so"
    if so.exists():  # built before for this source + torch + flags + arch: skip the ninja check
        try:
            torch.ops.load_library(str(so))
            if hasattr(torch.ops.longstream_ops, "scan_fwd"):
                return True
        except (OSError, RuntimeError):
            pass  # stale or broken: rebuild below
    from torch.utils import cpp_extension

    cpp_extension.load(
        name="longstream_cpu_ops",
        sources=[str(p) for p in _SRCS],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=verbose,
    )
    return hasattr(torch.ops.longstream_ops, "scan_fwd")


def load(verbose: bool = False) -> bool:
    """Build (or load the cached) extension; return True when its ops are usable. A compiler without
    OpenMP (``-fopenmp`` fails) gets the same kernels built without it: correct, one thread each."""
    with _LOCK:
        if "ok" in _STATE:
            return bool(_STATE["ok"])
        ok = False
        if os.environ.get("LONGSTREAM_NO_EXT", "0") not in ("", "0") or not _cpu_has_avx2():
            _STATE["ok"] = False
            return False
        serial = [f for f in _CFLAGS if f != "-fopenmp"]
        for cflags, ldflags in ((_CFLAGS, _LDFLAGS), (serial, [])):
            try:
                ok = _load_or_build(cflags, ldflags, verbose)
                _STATE["openmp"] = ok and "-fopenmp" in cflags
                break
            except Exception as e:  # noqa: BLE001 - any build failure means "try without OpenMP, then PyTorch"
                err = e
        else:
            warnings.warn(
                f"longstream: compiled CPU kernels unavailable ({type(err).__name__}: {str(err)[:200]}); "
                "using the pure-PyTorch path (slower). Install a C++ compiler and ninja to enable them.",
                stacklevel=2,
            )
        _STATE["ok"] = ok
        return ok


def built_with_openmp() -> bool:
    """True when the loaded kernels were built with OpenMP (their parallel regions use torch's threads)."""
    return load() and bool(_STATE.get("openmp"))


def available() -> bool:
    """True when the compiled kernels are built and loaded (builds them on first call)."""
    return load()


def has_op(name: str) -> bool:
    """True when the kernels are available and hold the op ``name`` (e.g. ``"mamba_step"``)."""
    key = "op:" + name
    if key not in _STATE:
        _STATE[key] = load() and hasattr(torch.ops.longstream_ops, name)
    return bool(_STATE[key])


def ops():
    """The ``torch.ops.longstream_ops`` namespace (call :func:`available` first)."""
    return torch.ops.longstream_ops


if __name__ == "__main__":  # `python -m longstream.backbones.ops.cpu_kernels` builds the extension
    print("compiled CPU kernels available:", load(verbose=True))
