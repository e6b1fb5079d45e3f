"""Synthetic checkpoints in the exact upstream layouts, built from the pinned key lists in
``tests/fixtures/upstream_keys/`` (see its README), never from longstream's own models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "upstream_keys"


def fixture(name: str) -> dict[str, Any]:
    """One pinned layout (``mamba_ssm_mamba1``, ``transformers_mamba2``, ``hyenadna_hf``, ...)."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _dim(expr: Any, dims: dict[str, int]) -> int:
    if isinstance(expr, int):
        return expr
    return int(eval(expr, {"__builtins__": {}}, dict(dims)))  # noqa: S307 - our own fixture expressions


def shapes(name: str, dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of layout ``name`` for ``dims`` (which must include ``n_layer``)."""
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in fixture(name)["keys"].items():
        for i in range(dims["n_layer"]) if "{i}" in key else [None]:
            out[key.format(i=i) if i is not None else key] = tuple(_dim(s, dims) for s in shape)
    return out


def state_dict(name: str, dims: dict[str, int], seed: int = 0, scale: float = 0.2) -> dict[str, torch.Tensor]:
    """Random tensors for every key of layout ``name``: ``A_log`` / norms are kept well-behaved."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes(name, dims).items():
        t = torch.randn(*shape, generator=g) * scale
        if key.endswith(("norm.weight", "norm_f.weight", "norm1.weight", "norm2.weight", "ln_f.weight")):
            t = 1 + t
        elif key.endswith("A_log"):
            t = torch.log(torch.rand(*shape, generator=g) * 3 + 0.5)
        out[key] = t
    return out
