"""Keep freed large blocks in the process (glibc): no page faults for the next tensor of that size.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and unmaps it on ``free``. A long-sequence training step makes and frees dozens of such
tensors (the loss's gradient, autograd's temporaries, the weight gradients' inputs), so each step
faults all of their pages in again: ~2.7 us per 4 KiB page on the virtual machines of
``benchmarks/results/backbones.md`` (45 ms per 64 MiB tensor, 4 ms to refill the same buffer), more
where the hypervisor takes freed guest pages back (virtio-balloon free page reporting) and must
fault them in too. ``y.float().pow(2).mean().backward()`` on a (1, 65536, 256) tensor measured
220-240 ms there with glibc's defaults and 43-46 ms with this module's settings.

:func:`keep_freed_memory` sets ``M_MMAP_MAX`` to 0 (large blocks come from the heap, whose freed
chunks are reused) and ``M_TRIM_THRESHOLD`` to ``LONGSTREAM_POOL_MB`` MiB (default 2048, capped at
2 GiB - 1 byte; the same budget as the compiled kernels' block pool, ``ops/bigbuf.py``): up to that
much free memory at the top of the heap stays with the process instead of going back to the OS,
as with PyTorch's CUDA caching allocator. A process's resident memory therefore stays near its
peak after a long forward; :func:`release` (``malloc_trim``) hands the free pages back.
``LONGSTREAM_HEAP=0`` (or ``LONGSTREAM_POOL_MB=0``) leaves glibc's defaults; off glibc it does nothing.
It runs once, when ``longstream.backbones.ops`` is imported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "release"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
_STATE: dict[str, object] = {}


def _libc():
    if "libc" not in _STATE:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.mallopt  # noqa: B018 - glibc (musl has no mallopt)
                lib.malloc_trim  # noqa: B018
            except (OSError, AttributeError):
                lib = None
        _STATE["libc"] = lib
    return _STATE["libc"]


def _budget_bytes() -> int:
    if os.environ.get("LONGSTREAM_HEAP", "1").lower() in ("0", "false", "no", "off"):
        return 0
    try:
        mb = int(os.environ.get("LONGSTREAM_POOL_MB", "2048") or 2048)
    except ValueError:
        mb = 2048
    return min(max(mb, 0) << 20, (1 << 31) - 1)


def keep_freed_memory() -> bool:
    """Apply the settings above once per process; True when they are in effect."""
    if "applied" in _STATE:
        return bool(_STATE["applied"])
    lib, budget = _libc(), _budget_bytes()
    ok = bool(lib is not None and budget > 0 and lib.mallopt(_M_MMAP_MAX, 0) == 1
              and lib.mallopt(_M_TRIM_THRESHOLD, budget) == 1)
    _STATE["applied"] = ok
    return ok


def release() -> bool:
    """Return the heap's free pages to the OS now (``malloc_trim(0)``); True if any were released."""
    lib = _libc()
    return bool(lib is not None and lib.malloc_trim(0))
