"""Forecasters for long-term time-series forecasting, all behind one interface.

``make_forecaster(cfg.model, n_vars, seq_len, pred_len, period, cfg.backbone)`` (or
``build_model(cfg)``) builds the forecaster of ``cfg.model.kind``, one class per kind
(:data:`FORECASTERS`); each maps an input window
``x (B, L, C)`` (scaled values, time major) and the cycle phase of its first step
``phase (B,)`` to ``(point (B, H, C), quantiles (B, H, C, Q) | None)``.

Kinds (``ModelConfig.kind``):

- ``backbone``: RevIN (Kim et al., ICLR 2022) -> optional learned cycle removal
  (CycleNet, Lin et al., NeurIPS 2024) -> tokens from ``longstream.encoders.timeseries`` ->
  a backbone stack from the registry, built from the config's ``backbone`` section
  (Mamba, Mamba-2, attention, S4D, hybrids) ->
  forecasting head. With ``tokens="variate"`` and a bidirectional Mamba this is
  S-Mamba (Wang et al., "Is Mamba Effective for Time Series Forecasting?", 2024);
  with ``tokens="patch"`` a PatchTST-style channel-independent model (Nie et al., 2023).
- ``dlinear``: DLinear (Zeng et al., "Are Transformers Effective for Time Series
  Forecasting?", AAAI 2023): moving-average trend / seasonal decomposition, one linear
  map per component over time, shared across variables.
- ``linear``: RLinear-style (Li et al., "Revisiting Long-term Time Series Forecasting",
  2023) RevIN + one linear map (+ the cycle, which makes it CycleNet/Linear).
- ``seasonal_naive``: repeat the last observed cycle.

Quantile option: with ``quantiles`` (e.g. 0.1/0.5/0.9) the head emits ``1 + Q``
values per step: the point forecast (trained with MSE) and Q positive gaps that place
the quantiles, in order, around the detached point forecast (trained with the pinball
loss), so the point forecast is not degraded by the interval and intervals never cross.

Axis legend: b batch, l input length, h horizon, c variables, d model width,
n tokens, q quantiles.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longstream.backbones.config import BackboneConfig
from longstream.encoders.timeseries import CycleBasis, PatchTokens, RevIN, TimeTokens, VariateTokens

from .config import ModelConfig, TimeseriesConfig, migrate_config

__all__ = [
    "FORECASTERS",
    "BackboneForecaster",
    "DLinearForecaster",
    "EnsembleForecaster",
    "Forecaster",
    "LinearForecaster",
    "SeasonalNaive",
    "build_model",
    "example_batch",
    "make_forecaster",
    "pinball_loss",
    "series_decomp",
    "forecast_loss",
    "save_forecaster",
    "load_forecaster",
    "from_pretrained",
]

TOKENS = ("variate", "patch", "time")


def series_decomp(x: Tensor, kernel: int) -> tuple[Tensor, Tensor]:
    """DLinear's decomposition of ``x`` (B, L, C): (seasonal, trend), trend = moving average.

    The window is padded by repeating the first / last values so the trend has length L.
    """
    front = x[:, :1].expand(-1, (kernel - 1) // 2, -1)
    end = x[:, -1:].expand(-1, kernel // 2, -1)
    padded = torch.cat([front, x, end], dim=1).transpose(1, 2)  # (b, c, l + k - 1)
    trend = F.avg_pool1d(padded, kernel_size=kernel, stride=1).transpose(1, 2)  # (b, l, c)
    return x - trend, trend


def pinball_loss(pred: Tensor, target: Tensor, quantiles: Tensor) -> Tensor:
    """Mean pinball (quantile) loss; ``pred`` (..., Q), ``target`` (...), ``quantiles`` (Q,)."""
    diff = target.unsqueeze(-1) - pred
    return torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean()


def forecast_loss(
    point: Tensor,
    quant: Tensor | None,
    y: Tensor,
    quantiles: Tensor,
    *,
    kind: str = "mse",
    target_idx: list[int] | None = None,
) -> Tensor:
    """MSE (or MAE) of ``point`` (B, H, C) on the target channels + pinball loss of ``quant``."""
    if target_idx is not None and len(target_idx) != point.shape[-1]:
        point, y = point[..., target_idx], y[..., target_idx]
        quant = quant[..., target_idx, :] if quant is not None else None
    loss = F.l1_loss(point, y) if kind == "mae" else F.mse_loss(point, y)
    if quant is not None:
        loss = loss + pinball_loss(quant, y, quantiles)
    return loss


class Forecaster(nn.Module):
    """Base of the forecasters: the quantile levels and the shared helpers.

    Subclasses (one per ``ModelConfig.kind``, see :data:`FORECASTERS`) take
    ``(cfg, n_vars, seq_len, pred_len, period, backbone)`` and implement a plain
    ``forward(x (B, L, C), phase (B,) | None) -> (point (B, H, C), quantiles (B, H, C, Q) | None)``.
    """

    def __init__(self, cfg: ModelConfig, n_vars: int, seq_len: int, pred_len: int, period: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_vars, self.seq_len, self.pred_len, self.period = n_vars, seq_len, pred_len, period
        q = sorted(float(v) for v in cfg.quantiles)
        if any(not 0 < v < 1 for v in q):
            raise ValueError(f"quantiles must lie in (0, 1), got {q}")
        self.register_buffer("quantiles", torch.tensor(q, dtype=torch.float32), persistent=False)
        self.n_out = 1 + len(q)
        # initial gap between neighbouring quantiles: ~0.6 window-std spread on each side
        n_side = max(1, sum(v < 0.5 for v in q), sum(v > 0.5 for v in q))
        self.register_buffer("q_init", torch.tensor(math.log(math.expm1(0.6 / n_side))), persistent=False)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.seq_len or x.shape[2] != self.n_vars:
            raise ValueError(f"expected input (B, {self.seq_len}, {self.n_vars}), got {tuple(x.shape)}")

    def loss(self, x: Tensor, y: Tensor, phase: Tensor | None, *, kind: str = "mse",
             target_idx: list[int] | None = None) -> Tensor:
        """Training loss: MSE (or MAE) of the point forecast + pinball loss of the quantiles."""
        point, quant = self(x, phase)
        return forecast_loss(point, quant, y, self.quantiles, kind=kind, target_idx=target_idx)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())


class _Normalised(Forecaster):
    """A forecaster that works on RevIN-normalised, de-cycled windows (linear, dlinear, backbone).

    ``forward`` = :meth:`_enter` (normalise, remove the cycle) -> the kind's map to
    ``(B, H, C, 1 + Q)`` -> :meth:`_leave` (add the cycle back, quantiles, denormalise).
    """

    def __init__(self, cfg: ModelConfig, n_vars: int, seq_len: int, pred_len: int, period: int = 0,
                 *, cycle: bool = True) -> None:
        super().__init__(cfg, n_vars, seq_len, pred_len, period)
        self.revin = RevIN(n_vars, affine=cfg.revin_affine) if cfg.revin else None
        self.cycle = CycleBasis(period, n_vars) if period > 0 and cycle else None

    def _enter(self, x: Tensor, phase: Tensor | None) -> tuple[Tensor, tuple[Tensor, Any]]:
        self._check(x)
        if phase is None:
            phase = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        stats = None
        if self.revin is not None:
            x, stats = self.revin.normalize(x)
        if self.cycle is not None:
            x = x - self.cycle(phase, self.seq_len)
        return x, (phase, stats)

    def _leave(self, y: Tensor, ctx: tuple[Tensor, Any]) -> tuple[Tensor, Tensor | None]:
        phase, stats = ctx
        point = y[..., 0]  # (b, h, c)
        if self.cycle is not None:
            point = point + self.cycle((phase + self.seq_len) % self.period, self.pred_len)
        quant = self._quantiles(point, y[..., 1:]) if self.n_out > 1 else None
        if stats is not None:
            point = self.revin.denormalize(point, stats)
            quant = self.revin.denormalize(quant, stats) if quant is not None else None
        return point, quant

    def _quantiles(self, point: Tensor, raw: Tensor) -> Tensor:
        """Ordered quantiles around the (detached) point forecast, in the normalised space.

        ``raw`` (B, H, C, Q) -> positive gaps (softplus) accumulated outward from the point:
        levels below 0.5 sit below it, levels above 0.5 above it, 0.5 on it. So the
        intervals are always ordered and the pinball loss never moves the point forecast.
        """
        lv = self.quantiles
        gaps = F.softplus(raw + self.q_init)  # (b, h, c, q)
        below = (lv < 0.5).to(gaps.dtype)
        above = (lv > 0.5).to(gaps.dtype)
        down = torch.flip(torch.cumsum(torch.flip(gaps * below, [-1]), -1), [-1])  # sum over j >= k
        up = torch.cumsum(gaps * above, -1)  # sum over j <= k
        offsets = up * above - down * below
        return point.detach().unsqueeze(-1) + offsets


class LinearForecaster(_Normalised):
    """RLinear / CycleNet-Linear: one linear map over time per variable (shared weights)."""

    def __init__(self, cfg: ModelConfig, n_vars: int, seq_len: int, pred_len: int, period: int = 0,
                 backbone: BackboneConfig | None = None) -> None:
        super().__init__(cfg, n_vars, seq_len, pred_len, period)
        self.head = nn.Linear(seq_len, pred_len * self.n_out)

    def forward(self, x: Tensor, phase: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x, ctx = self._enter(x, phase)
        b, _, c = x.shape
        y = self.head(x.transpose(1, 2))  # (b, c, h * o)
        return self._leave(y.reshape(b, c, self.pred_len, self.n_out).transpose(1, 2), ctx)


class DLinearForecaster(_Normalised):
    """DLinear: trend / seasonal decomposition, one linear map over time per component."""

    def __init__(self, cfg: ModelConfig, n_vars: int, seq_len: int, pred_len: int, period: int = 0,
                 backbone: BackboneConfig | None = None) -> None:
        if cfg.quantiles:
            raise ValueError("dlinear has no quantile head; use kind linear or backbone")
        super().__init__(cfg, n_vars, seq_len, pred_len, period, cycle=False)
        c_w = n_vars if cfg.individual else 1
        init = torch.full((c_w, pred_len, seq_len), 1.0 / seq_len)
        self.w_seasonal = nn.Parameter(init.clone())
        self.w_trend = nn.Parameter(init.clone())
        self.b_seasonal = nn.Parameter(torch.zeros(c_w, pred_len))
        self.b_trend = nn.Parameter(torch.zeros(c_w, pred_len))

    def forward(self, x: Tensor, phase: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x, ctx = self._enter(x, phase)
        seas, trend = series_decomp(x, self.cfg.moving_avg)
        seas_t, trend_t = seas.transpose(1, 2), trend.transpose(1, 2)  # (b, c, l)
        ys = torch.einsum("bcl,chl->bch", seas_t, self.w_seasonal) + self.b_seasonal
        yt = torch.einsum("bcl,chl->bch", trend_t, self.w_trend) + self.b_trend
        return self._leave((ys + yt).transpose(1, 2).unsqueeze(-1), ctx)  # (b, h, c, 1)


class BackboneForecaster(_Normalised):
    """Tokens (variate / patch / time) -> registry backbone (``cfg.backbone``) -> head (+ linear skip)."""

    def __init__(self, cfg: ModelConfig, n_vars: int, seq_len: int, pred_len: int, period: int = 0,
                 backbone: BackboneConfig | None = None) -> None:
        from longstream.pipelines.common import build_backbone

        super().__init__(cfg, n_vars, seq_len, pred_len, period)
        if cfg.tokens not in TOKENS:
            raise ValueError(f"unknown token layout {cfg.tokens!r}; choose from {TOKENS}")
        bcfg = backbone if backbone is not None else BackboneConfig()
        d = bcfg.d_model
        if cfg.tokens == "variate":
            self.encoder = VariateTokens(seq_len, d, cfg.dropout)
            head_in = d
        elif cfg.tokens == "patch":
            self.encoder = PatchTokens(seq_len, cfg.patch_len, cfg.stride, d, cfg.dropout)
            head_in = self.encoder.n_patches * d
        else:
            self.encoder = TimeTokens(seq_len, d, cfg.dropout)
            self.squeeze = nn.Linear(d, 4)
            head_in = seq_len * 4
        self.backbone = build_backbone(bcfg)  # bad --backbone.* -> UserError (exit 2)
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(head_in, pred_len * self.n_out)
        # a direct linear map over time next to the backbone path (RLinear / CycleNet-Linear),
        # so the backbone only has to learn what a per-variable linear forecast misses
        self.skip = nn.Linear(seq_len, pred_len * self.n_out) if cfg.linear_skip else None
        if self.skip is not None:  # start from the linear forecast; the backbone learns a correction
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, phase: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x, ctx = self._enter(x, phase)
        b, _, c = x.shape
        z, _ = self.backbone(self.encoder(x))  # variate (b, c, d); patch (b*c, n, d); time (b*c, l, d)
        if self.cfg.tokens == "variate":
            y = self.head(self.head_drop(z))  # (b, c, h * o)
        elif self.cfg.tokens == "patch":
            y = self.head(self.head_drop(z.reshape(b * c, -1))).reshape(b, c, -1)
        else:
            y = self.head(self.head_drop(self.squeeze(z).reshape(b * c, -1))).reshape(b, c, -1)
        if self.skip is not None:
            y = y + self.skip(x.transpose(1, 2))  # (b, c, h * o)
        return self._leave(y.reshape(b, c, self.pred_len, self.n_out).transpose(1, 2), ctx)  # (b, h, c, o)


class SeasonalNaive(Forecaster):
    """Repeat the last observed cycle of ``period`` steps; nothing to train."""

    def __init__(self, cfg: ModelConfig, n_vars: int, seq_len: int, pred_len: int, period: int = 0,
                 backbone: BackboneConfig | None = None) -> None:
        if period <= 0 or period > seq_len:
            raise ValueError(f"seasonal_naive needs 0 < period <= seq_len, got period {period}")
        if cfg.quantiles:
            raise ValueError("seasonal_naive has no quantile head")
        super().__init__(cfg, n_vars, seq_len, pred_len, period)

    def forward(self, x: Tensor, phase: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        self._check(x)
        p = self.period
        idx = self.seq_len - p + torch.arange(self.pred_len, device=x.device) % p
        return x[:, idx], None


class EnsembleForecaster(Forecaster):
    """The mean forecast of ``cfg.members`` (each ``{"model": ..., "backbone": ...}``)."""

    def __init__(self, cfg: ModelConfig, n_vars: int, seq_len: int, pred_len: int, period: int = 0,
                 backbone: BackboneConfig | None = None) -> None:
        from longstream.pipelines.common import config_from_dict

        from .config import migrate_member

        if not cfg.members:
            raise ValueError("an ensemble needs members (ModelConfig dicts)")
        super().__init__(cfg, n_vars, seq_len, pred_len, period)
        members = [migrate_member(m) for m in cfg.members]
        self.members = nn.ModuleList(
            make_forecaster(config_from_dict(ModelConfig, m["model"]), n_vars, seq_len, pred_len, period,
                            config_from_dict(BackboneConfig, m["backbone"]))
            for m in members
        )
        self.n_out = self.members[0].n_out
        self.quantiles = self.members[0].quantiles

    def forward(self, x: Tensor, phase: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        self._check(x)
        outs = [m(x, phase) for m in self.members]
        point = torch.stack([o[0] for o in outs]).mean(0)
        quants = [o[1] for o in outs if o[1] is not None]
        quant = torch.stack(quants).mean(0) if len(quants) == len(outs) else None
        return point, quant


#: ``ModelConfig.kind`` -> its forecaster class.
FORECASTERS: dict[str, type[Forecaster]] = {
    "backbone": BackboneForecaster,
    "dlinear": DLinearForecaster,
    "linear": LinearForecaster,
    "seasonal_naive": SeasonalNaive,
    "ensemble": EnsembleForecaster,
}
KINDS = tuple(FORECASTERS)


def make_forecaster(cfg: ModelConfig, n_vars: int, seq_len: int, pred_len: int, period: int = 0,
                    backbone: BackboneConfig | None = None) -> Forecaster:
    """The forecaster of kind ``cfg.kind`` (``backbone`` is the config's backbone section)."""
    if cfg.kind not in FORECASTERS:
        raise ValueError(f"unknown model kind {cfg.kind!r}; choose from {KINDS}")
    return FORECASTERS[cfg.kind](cfg, n_vars, seq_len, pred_len, period, backbone)


def default_shape(cfg: TimeseriesConfig) -> tuple[int, int]:
    """``(n_vars, period)`` for a config without data at hand: the listed targets and
    covariates (else ETTh1's 7 columns) and ``model.cycle`` (else the hourly 24)."""
    n_vars = len(cfg.data.targets) + len(cfg.data.covariates) if cfg.data.targets else 7
    period = cfg.model.cycle if cfg.model.cycle >= 0 else 24
    if cfg.model.kind == "seasonal_naive" and not 0 < period <= cfg.data.seq_len:
        period = cfg.data.seq_len
    return n_vars, period


def build_model(cfg: TimeseriesConfig, n_vars: int | None = None, period: int | None = None) -> Forecaster:
    """The forecaster described by ``cfg`` for ``n_vars`` channels and cycle ``period``
    (defaults: :func:`default_shape`). The backbone comes from ``cfg.backbone``."""
    dn, dp = default_shape(cfg)
    return make_forecaster(cfg.model, dn if n_vars is None else n_vars, cfg.data.seq_len, cfg.data.pred_len,
                           dp if period is None else period, cfg.backbone)


def example_batch(cfg: TimeseriesConfig, batch_size: int = 2) -> dict[str, Tensor]:
    """Keyword arguments of a forward pass on a small input: ``x`` (B, seq_len, n_vars), ``phase`` (B,).

    A forecaster takes exactly ``seq_len`` steps (96 for the ETTh1 presets), so the
    input is that window of the default number of variables (:func:`default_shape`).
    """
    n_vars, _ = default_shape(cfg)
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(batch_size, cfg.data.seq_len, n_vars, generator=g),
            "phase": torch.zeros(batch_size, dtype=torch.long)}


def resolve_period(cfg: ModelConfig, freq: str) -> int:
    """Cycle period: ``cfg.cycle`` if given (> 0), none if 0, else from the data frequency."""
    from .data import default_period

    if cfg.cycle >= 0:
        return cfg.cycle
    return default_period(freq)


# --------------------------------------------------------------------------- checkpoints

PIPELINE = "timeseries"


def save_forecaster(
    model: Forecaster,
    cfg: TimeseriesConfig,
    out_dir: Any,
    *,
    scaler: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    name: str | None = None,
) -> Any:
    """``model.safetensors`` + ``config.json`` (config, scaler, metrics) + the shared model card, atomically."""
    from longstream.pipelines.common import save_pretrained

    return save_pretrained(
        model,
        cfg,
        out_dir,
        pipeline=PIPELINE,
        preset=cfg.preset,
        backbone=cfg.backbone if cfg.model.kind == "backbone" else cfg.model.kind,
        task=f"forecast {cfg.data.pred_len} steps from {cfg.data.seq_len}",
        metrics=metrics,
        data=data,
        name=name,
        extra={"scaler": scaler},
    )


def load_forecaster(checkpoint: Any) -> tuple[Forecaster, TimeseriesConfig, dict[str, Any]]:
    """Resolve and load a timeseries checkpoint -> (model in eval mode, config, config.json)."""
    from longstream.pipelines.common import (
        UserError,
        checkpoint_errors,
        config_from_dict,
        load_pretrained,
        load_weights,
    )

    sd, meta, path = load_pretrained(str(checkpoint), pipeline=PIPELINE)
    with checkpoint_errors(path):  # an edited config.json -> one UserError naming the dir
        cfg = config_from_dict(TimeseriesConfig, migrate_config(meta.get("config") or {}))
        sc = meta.get("scaler") or {}
        lacking = [k for k in ("n_vars", "period") if k not in sc]
        if lacking:
            raise UserError(f"checkpoint {path}: config.json lacks scaler.{lacking[0]}; retrain it")
        if cfg.model.kind not in KINDS:
            raise UserError(f"checkpoint {path}: config.json has unknown model kind {cfg.model.kind!r} "
                            f"(known: {', '.join(KINDS)}); re-download it or retrain it")
        model = build_model(cfg, int(sc["n_vars"]), int(sc["period"]))
        load_weights(model, sd, path, meta)
    return model, cfg, meta


def from_pretrained(name_or_dir: str) -> Forecaster:
    """The forecaster of a checkpoint dir or hub name (``timeseries/<name>``), in eval mode."""
    return load_forecaster(name_or_dir)[0]
