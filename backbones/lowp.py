"""Opt-in low-precision weights for CPU decoding: int8 or bf16 projections and LM head.

Decoding one token of a Mamba language model reads every projection weight once, so on a
CPU it is bound by memory bandwidth; weights stored in 8 or 16 bits are read 4x / 2x faster.
Post-training quantisation of selective SSMs follows Quamba (Chiang et al., "Quamba: A
Post-Training Quantization Recipe for Selective State Space Models", 2024) in spirit: only
the linear projections (Mamba's ``in_proj`` / ``out_proj``) and the head are quantised,
while the conv, ``x_proj`` / ``dt_proj``, the SSM recurrence and its state stay float32.

- ``"int8"``: symmetric per-output-channel int8 weights (scale = max|w| / 127). With the
  compiled kernels the weights are widened to float32 in registers and multiplied by float32
  activations (``decode_linear``); otherwise activations are quantised per tensor on the fly
  for an int8 GEMM (fbgemm's ``torch.ops.quantized.linear_dynamic``, or
  ``torch._weight_int8pack_mm`` on bf16 activations).
- ``"bf16"``: bfloat16 weights and a float32 result with the compiled kernels; on CPUs with
  AVX512-BF16 the activations are rounded to bf16 for its pairwise dot products (``vdpbf16ps``,
  float32 sums; llama.cpp's bf16 path does the same), elsewhere they stay float32 (bf16
  activations through ``F.linear`` without the kernels).

The low-precision copies serve :meth:`Mamba.step` (its compiled CPU path: float32, no
autograd) and :meth:`LanguageModel.step` / ``generate``'s decode loop; ``forward`` (training,
prefill) keeps the float32 parameters, which stay in the module untouched (``state_dict`` and
checkpoints are unchanged). Re-run ``quantize`` after changing the weights.

Axis legend: b batch, i input width, o output width.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOWP_MODES", "LowpLinear", "quantize_decode"]

LOWP_MODES = ("int8", "bf16")


def _fbgemm_int8() -> bool:
    try:
        return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")
    except (AttributeError, RuntimeError):
        return False


def _kernel() -> bool:
    from .ops import cpu_kernels

    return cpu_kernels.has_op("decode_linear")


class LowpLinear:
    """``y = x W^T + bias`` for x (b, i) float32 -> y (b, o) float32 with W held in ``mode``.

    With the compiled kernels (``torch.ops.longstream_ops.decode_linear``) the bf16 / int8 weight
    is streamed by a bandwidth-bound GEMV that widens it to float32 in registers (activations
    stay float32; threaded on the decode pool, see ``csrc/decode_cpu.cpp``); without them bf16
    is ``F.linear`` in bfloat16 and int8 is fbgemm's dynamic quantised linear (or
    ``torch._weight_int8pack_mm``)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, mode: str) -> None:
        if mode not in LOWP_MODES:
            raise ValueError(f"low-precision mode must be one of {LOWP_MODES}, got {mode!r}")
        w = weight.detach().float().cpu()  # (o, i)
        self.mode = mode
        self.out_features = w.shape[0]
        self.bias = None if bias is None else bias.detach().float().cpu().contiguous()
        self._fn: Callable[[Tensor], Tensor]
        self.kernel_args: tuple[Tensor, Tensor, Tensor] | None = None  # (w, scale, bias) of the compiled GEMV
        use_kernel = _kernel() and w.shape[1] % 8 == 0
        if mode == "bf16":
            wb = _on_hugepages(w.to(torch.bfloat16).contiguous())
            self.nbytes = wb.numel() * 2
            if use_kernel:
                self._fn = _kernel_fn(wb, None, self.bias)
                self.kernel_args = (wb, _EMPTY, _EMPTY if self.bias is None else self.bias)
                self.bias = None
            else:
                self._fn = lambda x: F.linear(x.to(torch.bfloat16), wb).float()
            return
        scale = (w.abs().amax(1) / 127.0).clamp(min=1e-12)  # (o,) per output channel
        self.nbytes = w.numel()
        if use_kernel:
            q = _on_hugepages(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())  # (o, i)
            self._fn = _kernel_fn(q, scale.contiguous(), self.bias)
            self.kernel_args = (q, scale.contiguous(), _EMPTY if self.bias is None else self.bias)
            self.bias = None
        elif _fbgemm_int8():
            with warnings.catch_warnings():  # quantised-tensor creation is deprecated upstream
                warnings.simplefilter("ignore")
                qw = torch.quantize_per_channel(
                    w, scale.double(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8
                )
                packed = torch.ops.quantized.linear_prepack(qw, self.bias)
            self.bias = None  # inside the packed op
            self._fn = lambda x: torch.ops.quantized.linear_dynamic(x, packed)
        else:
            q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()  # (o, i)
            sb = scale.to(torch.bfloat16)
            self._fn = lambda x: torch._weight_int8pack_mm(x.to(torch.bfloat16), q, sb).float()

    def __call__(self, x: Tensor) -> Tensor:
        y = self._fn(x.contiguous())  # (b, o)
        return y if self.bias is None else y + self.bias


_EMPTY = torch.empty(0)


def _on_hugepages(t: Tensor) -> Tensor:
    """``t`` copied onto transparent huge pages when large enough (see :mod:`.hugepages`)."""
    from .hugepages import MIN_BYTES, hugepage_copy

    return hugepage_copy(t) if t.numel() * t.element_size() >= MIN_BYTES else t


def _kernel_fn(w: Tensor, scale: Tensor | None, bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    """x (b, i) float32 -> (b, o) through the compiled low-precision GEMV."""
    from .ops import cpu_kernels

    op = cpu_kernels.ops().decode_linear
    empty = torch.empty(0)
    s = empty if scale is None else scale
    b = empty if bias is None else bias
    return lambda x: op(x, w, s, b)


def quantize_decode(lm: nn.Module, mode: str | None) -> int:
    """Give ``lm``'s Mamba layers and head low-precision decode weights (``None`` removes them).

    Returns the bytes of the low-precision weights (0 when removed)."""
    from .mamba import Mamba

    if mode is not None and mode not in LOWP_MODES:
        raise ValueError(f"quantize mode must be one of {LOWP_MODES} or None, got {mode!r}")
    total = 0
    for mod in lm.modules():
        if isinstance(mod, Mamba):
            if mode is None:
                mod._lowp_linears = None
                continue
            lin_in = LowpLinear(mod.in_proj.weight, mod.in_proj.bias, mode)
            lin_out = LowpLinear(mod.out_proj.weight, mod.out_proj.bias, mode)
            mod._lowp_linears = (lin_in, lin_out)
            total += lin_in.nbytes + lin_out.nbytes
    head = getattr(lm, "lm_head", None)
    if mode is None or head is None:
        lm._lowp_head = None
    else:
        lm._lowp_head = LowpLinear(head.weight, head.bias, mode)
        total += lm._lowp_head.nbytes
    return total
