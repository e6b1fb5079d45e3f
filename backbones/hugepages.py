"""Decode weights on transparent huge pages (Linux): fewer TLB misses while a token streams them.

Decoding one token on a CPU reads every projection weight once (~0.5 GB for a 130M model in
float32), so it runs at the memory bandwidth, and with 4 KB pages every 4 KB of weights also
costs a page-table walk. Weights backed by 2 MB pages (``madvise(MADV_HUGEPAGE)`` on a 2 MB
aligned anonymous mapping, honoured when ``/sys/kernel/mm/transparent_hugepage/enabled`` is
``always`` or ``madvise``) made float32 decode of a 130M model 4-11% faster on the benchmark
machine (``benchmarks/decode.py`` reports both, mode ``fp32-4k``).

:func:`move_to_hugepages` re-homes a module's large float parameters there in place: the same
``Parameter`` objects, the same values, only the storage changes (``p.data`` is swapped), so
optimisers, ``state_dict``, saving and autograd are unaffected. :meth:`LanguageModel.step`'s
compiled decode path does it once for the model on its first token;
``LONGSTREAM_HUGEPAGES=0`` turns it off. Off Linux, or where the mapping fails, nothing moves.
"""

from __future__ import annotations

import mmap
import os
import sys

import torch
from torch import Tensor, nn

__all__ = ["MIN_BYTES", "enabled", "hugepage_copy", "move_to_hugepages"]

MIN_BYTES = 2 << 20  # smaller tensors gain nothing from a 2 MB page
_PAGE = 2 << 20


def enabled() -> bool:
    """Huge-page weights apply: Linux with ``MADV_HUGEPAGE`` and ``LONGSTREAM_HUGEPAGES`` not ``0``."""
    return (
        sys.platform.startswith("linux")
        and hasattr(mmap, "MADV_HUGEPAGE")
        and os.environ.get("LONGSTREAM_HUGEPAGES", "1") not in ("0", "false", "no")
    )


def on_hugepage_mapping(t: Tensor) -> bool:
    """``t`` was made by :func:`hugepage_copy` (its storage starts 2 MB aligned in one of our mappings)."""
    return getattr(t.untyped_storage(), "_longstream_hugepages", False) is True


def hugepage_copy(t: Tensor) -> Tensor:
    """A contiguous copy of CPU tensor ``t`` on a 2 MB aligned anonymous mapping advised for huge
    pages; ``t`` itself when :func:`enabled` is false or the mapping cannot be made."""
    if not enabled() or t.device.type != "cpu":
        return t
    n = t.numel() * t.element_size()
    try:
        m = mmap.mmap(-1, n + _PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zero-filled on first touch
        m.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return t
    with torch.inference_mode(False), torch.no_grad():  # an ordinary tensor, usable by autograd later
        raw = torch.frombuffer(m, dtype=torch.uint8)  # holds a reference to the mapping
        off = (-raw.data_ptr()) % _PAGE
        out = raw[off : off + n].view(t.dtype).view(t.shape)
        out.copy_(t)
    out.untyped_storage()._longstream_hugepages = True  # type: ignore[attr-defined]
    return out


def move_to_hugepages(module: nn.Module, min_bytes: int = MIN_BYTES) -> int:
    """Swap the storage of ``module``'s contiguous float CPU parameters of >= ``min_bytes`` for
    huge-page copies (:func:`hugepage_copy`); a tied parameter moves once. Returns the bytes moved."""
    if not enabled():
        return 0
    moved = 0
    seen: set[int] = set()
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        nbytes = p.numel() * p.element_size()
        if (
            nbytes < min_bytes
            or p.device.type != "cpu"
            or not p.is_floating_point()
            or not p.is_contiguous()
            or on_hugepage_mapping(p.data)
        ):
            continue
        q = hugepage_copy(p.data)
        if q is not p.data:
            p.data = q
            moved += nbytes
    return moved
