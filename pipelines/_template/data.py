"""Generated data: noisy sinusoids whose frequency falls in one of ``n_classes`` bins.

Class ``k`` has ``(k + 1) + U(-0.25, 0.25)`` cycles per series, a random phase and
amplitude in [0.5, 1.5], plus Gaussian noise. Every sample is a deterministic function
of ``(seed, split)``, so all DDP ranks agree on the data without communicating.
Files (``--data``): CSV, one series per row, ``label,x0,x1,...`` (``label`` may be -1
when unknown); see :func:`save_csv` / :func:`load_csv`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from longstream.pipelines.common import UserError, read_text_file, to_model_dtype

from .config import DataConfig

_SPLIT_OFFSET = {"train": 0, "val": 500_009, "test": 1_000_003}


def make_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x (N, L) float32, y (N,) int64)`` for ``split`` in train / val / test."""
    n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
    g = torch.Generator().manual_seed(cfg.seed + _SPLIT_OFFSET[split])
    y = torch.randint(0, cfg.n_classes, (n,), generator=g)
    return synth(y, cfg.seq_len, cfg.noise, g), y


def synth(y: torch.Tensor, seq_len: int, noise: float, g: torch.Generator | None = None) -> torch.Tensor:
    """Series for labels ``y`` (N,) -> (N, L)."""
    n = y.shape[0]
    cycles = (y.float() + 1) + (torch.rand(n, generator=g) - 0.5) * 0.5
    phase = torch.rand(n, generator=g) * 2 * math.pi
    amp = 0.5 + torch.rand(n, generator=g)
    t = torch.arange(seq_len).float() / seq_len
    x = amp[:, None] * torch.sin(2 * math.pi * cycles[:, None] * t[None] + phase[:, None])
    return x + noise * torch.randn(n, seq_len, generator=g)


def example(label: int, cfg: DataConfig, seed: int = 0) -> torch.Tensor:
    """One reproducible series of class ``label`` (L,)."""
    if not 0 <= label < cfg.n_classes:
        raise UserError(f"class {label} out of range 0..{cfg.n_classes - 1}")
    g = torch.Generator().manual_seed(10_000 + seed)
    return synth(torch.tensor([label]), cfg.seq_len, cfg.noise, g)[0]


def save_csv(path: str | Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    path = Path(path)
    rows = [",".join([str(int(lbl))] + [f"{v:.6g}" for v in row.tolist()]) for row, lbl in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")
    return path


def parse_series(text: str, where: str) -> torch.Tensor:
    """Comma/space/newline separated numbers -> (L,) float32 with a clear error."""
    toks = [t for t in text.replace(",", " ").split() if t]
    if not toks:
        raise UserError(f"{where}: no numbers found; give comma-separated values like '0.1,0.5,-0.2'")
    try:
        vals = [float(t) for t in toks]
    except ValueError as e:
        raise UserError(f"{where}: not a list of numbers ({e})") from None
    # checked in the model's dtype: 1e308 is a finite float64 but inf in float32
    return to_model_dtype(vals, source=where, fix="replace or rescale the value")


def load_csv(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a ``label,x0,...`` CSV; all rows must have the same length."""
    path = Path(path)
    text = read_text_file(path, what="data file", hint="the template reads a `label,x0,x1,...` CSV")
    xs, ys = [], []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            ys.append(int(float(parts[0])))
        except ValueError:
            raise UserError(f"{path}:{i}: first column must be the integer label, got {parts[0]!r}") from None
        xs.append(parse_series(",".join(parts[1:]), f"{path}:{i}"))
    if not xs:
        raise UserError(f"{path} has no rows")
    if len({len(x) for x in xs}) != 1:
        raise UserError(f"{path}: rows have different lengths; every series must have the same length")
    return torch.stack(xs), torch.tensor(ys)
