"""Scan and convolution kernels for the backbones (imported by ``backbones``, never the reverse).

- :mod:`.selective_scan`: Mamba's selective scan (compiled AVX2 kernel, chunked PyTorch path,
  float64 reference).
- :mod:`.causal_conv`: causal depthwise conv1d with a streaming cache.
- :mod:`.ssd`: Mamba-2's chunked SSD scan.
- :mod:`.fftconv`: FFT long convolutions (S4D, Hyena, long conv).
- :mod:`.diag_ssm`: chunked diagonal LTI SSM (S4D's sequence mode: Toeplitz + state matmuls).
- :mod:`.cpu_kernels`: JIT build / load of the C++ CPU kernels (optional).
- :mod:`.cuda`: lazy dispatch to ``mamba_ssm`` / ``causal_conv1d`` for CUDA tensors.
- :mod:`.heap`: glibc keeps freed large blocks in the process (applied on import; ``LONGSTREAM_HEAP=0`` off).

Axis legend: b batch, l length, e channels, n state size, h heads, p head dim, g groups.
"""

from . import heap
from .causal_conv import causal_conv1d, causal_conv1d_ref, causal_conv1d_update
from .selective_scan import selective_scan, selective_scan_ref
from .ssd import ssd_scan, ssd_scan_ref

__all__ = [
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "selective_scan",
    "selective_scan_ref",
    "ssd_scan",
    "ssd_scan_ref",
]

heap.keep_freed_memory()
