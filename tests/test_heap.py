"""ops/heap.py: with the glibc settings applied, a freed 64 MiB tensor's pages are reused by the next
tensor of that size (no page faults); with LONGSTREAM_HEAP=0 they are faulted in again (as huge
pages: ``import longstream`` sets THP_MEM_ALLOC_ENABLE). Each case runs
in a fresh interpreter, since mallopt settings are process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")

_PROBE = r"""
import json, resource, torch
import longstream.backbones.ops as ops
applied = ops.heap.keep_freed_memory()
n = 16 << 20  # 64 MiB of float32
faults = []
for _ in range(4):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(n)
    t.fill_(1.0)  # touch every page
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    del t
print(json.dumps({"applied": applied, "faults": faults, "released": ops.heap.release() in (True, False)}))
"""


def _probe(env_heap: str) -> dict:
    env = {**os.environ, "LONGSTREAM_HEAP": env_heap, "LONGSTREAM_NO_EXT": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_large_blocks_are_reused_without_page_faults():
    on = _probe("1")
    assert on["applied"] is True
    assert on["faults"][0] >= 32  # the first 64 MiB is faulted in (4 KiB or 2 MiB pages)
    # then the freed block is reused in place (the second block may still grow the heap once: PyTorch
    # asks for 2 MiB alignment, which the first freed chunk need not offer)
    assert max(on["faults"][2:]) <= 8, on
    assert on["released"]


def test_heap_env_off_keeps_glibc_defaults():
    off = _probe("0")
    assert off["applied"] is False
    # glibc unmaps each block: every page faults again (32 faults for 64 MiB even on 2 MiB huge pages,
    # which `import longstream` asks PyTorch for)
    assert min(off["faults"]) >= 32, off
