"""Forecasters for long-term time-series forecasting, all behind one interface.

``Forecaster(cfg, n_vars, seq_len, pred_len, period)`` maps an input window
``x (B, L, C)`` (scaled values, time major) and the cycle phase of its first step
``phase (B,)`` to ``(point (B, H, C), quantiles (B, H, C, Q) | None)``.

Kinds (``ModelConfig.kind``):

- ``backbone``: RevIN (Kim et al., ICLR 2022) -> optional learned cycle removal
  (CycleNet, Lin et al., NeurIPS 2024) -> tokens from ``longstream.encoders.timeseries`` ->
  a backbone stack from the registry (Mamba, Mamba-2, attention, S4D, hybrids) ->
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

from longstream.encoders.timeseries import CycleBasis, PatchTokens, RevIN, TimeTokens, VariateTokens

from .config import ModelConfig, TimeseriesConfig

__all__ = [
    "Forecaster",
    "build_model",
    "pinball_loss",
    "series_decomp",
    "forecast_loss",
    "save_forecaster",
    "load_forecaster",
    "from_pretrained",
]

KINDS = ("backbone", "dlinear", "linear", "seasonal_naive", "ensemble")
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


def _make_backbone(cfg: ModelConfig, dropout: float) -> nn.Module:
    from longstream.backbones import BackboneConfig, create_backbone

    overrides: dict[str, Any] = dict(
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        pattern=cfg.pattern,
        bidirectional=cfg.bidirectional,
        d_intermediate=cfg.d_intermediate,
        dropout=dropout,
    )
    if cfg.mixer_kwargs:
        overrides["mixer_kwargs"] = cfg.mixer_kwargs
    if cfg.backbone in ("", "custom"):
        return create_backbone(BackboneConfig(**overrides))
    return create_backbone(cfg.backbone, **overrides)


class Forecaster(nn.Module):
    """Window -> forecast; see the module docstring for the kinds."""

    def __init__(self, cfg: ModelConfig, n_vars: int, seq_len: int, pred_len: int, period: int = 0) -> None:
        super().__init__()
        if cfg.kind not in KINDS:
            raise ValueError(f"unknown model kind {cfg.kind!r}; choose from {KINDS}")
        self.cfg = cfg
        self.n_vars, self.seq_len, self.pred_len, self.period = n_vars, seq_len, pred_len, period
        q = sorted(float(v) for v in cfg.quantiles)
        if any(not 0 < v < 1 for v in q):
            raise ValueError(f"quantiles must lie in (0, 1), got {q}")
        self.register_buffer("quantiles", torch.tensor(q, dtype=torch.float32), persistent=False)
        self.n_out = 1 + len(q)
        # initial gap between neighbouring quantiles: ~0.6 window-std spread on each side
        n_side = max(1, sum(v < 0.5 for v in q), sum(v > 0.5 for v in q))
        gap = 0.6 / n_side
        self.register_buffer("q_init", torch.tensor(math.log(math.expm1(gap))), persistent=False)
        kind = cfg.kind
        if kind == "ensemble":
            if not cfg.members:
                raise ValueError("an ensemble needs members (ModelConfig dicts)")
            from longstream.pipelines.common import config_from_dict

            self.members = nn.ModuleList(
                Forecaster(config_from_dict(ModelConfig, m), n_vars, seq_len, pred_len, period) for m in cfg.members
            )
            self.n_out = self.members[0].n_out
            self.quantiles = self.members[0].quantiles
            return
        if kind == "seasonal_naive":
            if period <= 0 or period > seq_len:
                raise ValueError(f"seasonal_naive needs 0 < period <= seq_len, got period {period}")
            if q:
                raise ValueError("seasonal_naive has no quantile head")
            return
        self.revin = RevIN(n_vars, affine=cfg.revin_affine) if cfg.revin else None
        self.cycle = CycleBasis(period, n_vars) if period > 0 and kind != "dlinear" else None
        if kind == "dlinear":
            if q:
                raise ValueError("dlinear has no quantile head; use kind linear or backbone")
            c_w = n_vars if cfg.individual else 1
            init = torch.full((c_w, pred_len, seq_len), 1.0 / seq_len)
            self.w_seasonal = nn.Parameter(init.clone())
            self.w_trend = nn.Parameter(init.clone())
            self.b_seasonal = nn.Parameter(torch.zeros(c_w, pred_len))
            self.b_trend = nn.Parameter(torch.zeros(c_w, pred_len))
            return
        if kind == "linear":
            self.head = nn.Linear(seq_len, pred_len * self.n_out)
            return
        # kind == "backbone"
        if cfg.tokens not in TOKENS:
            raise ValueError(f"unknown token layout {cfg.tokens!r}; choose from {TOKENS}")
        d = cfg.d_model
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
        self.backbone = _make_backbone(cfg, cfg.dropout)
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(head_in, pred_len * self.n_out)
        # a direct linear map over time next to the backbone path (RLinear / CycleNet-Linear),
        # so the backbone only has to learn what a per-variable linear forecast misses
        self.skip = nn.Linear(seq_len, pred_len * self.n_out) if cfg.linear_skip else None
        if self.skip is not None:  # start from the linear forecast; the backbone learns a correction
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------------ pieces

    def _core(self, x: Tensor) -> Tensor:
        """Normalised, de-cycled window (B, L, C) -> (B, H, C, 1 + Q)."""
        b, l, c = x.shape
        kind = self.cfg.kind
        if kind == "dlinear":
            seas, trend = series_decomp(x, self.cfg.moving_avg)
            seas_t, trend_t = seas.transpose(1, 2), trend.transpose(1, 2)  # (b, c, l)
            ys = torch.einsum("bcl,chl->bch", seas_t, self.w_seasonal) + self.b_seasonal
            yt = torch.einsum("bcl,chl->bch", trend_t, self.w_trend) + self.b_trend
            return (ys + yt).transpose(1, 2).unsqueeze(-1)  # (b, h, c, 1)
        if kind == "linear":
            y = self.head(x.transpose(1, 2))  # (b, c, h * o)
            return y.reshape(b, c, self.pred_len, self.n_out).transpose(1, 2)
        tokens = self.cfg.tokens
        if tokens == "variate":
            z = self.encoder(x)  # (b, c, d)
            z, _ = self.backbone(z)
            y = self.head(self.head_drop(z))  # (b, c, h * o)
        elif tokens == "patch":
            z = self.encoder(x)  # (b*c, n, d)
            z, _ = self.backbone(z)
            y = self.head(self.head_drop(z.reshape(b * c, -1))).reshape(b, c, -1)
        else:
            z = self.encoder(x)  # (b*c, l, d)
            z, _ = self.backbone(z)
            y = self.head(self.head_drop(self.squeeze(z).reshape(b * c, -1))).reshape(b, c, -1)
        if self.skip is not None:
            y = y + self.skip(x.transpose(1, 2))  # (b, c, h * o)
        return y.reshape(b, c, self.pred_len, self.n_out).transpose(1, 2)  # (b, h, c, o)

    def forward(self, x: Tensor, phase: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``x`` (B, L, C), ``phase`` (B,) -> (point (B, H, C), quantiles (B, H, C, Q) or None)."""
        if x.dim() != 3 or x.shape[1] != self.seq_len or x.shape[2] != self.n_vars:
            raise ValueError(
                f"expected input (B, {self.seq_len}, {self.n_vars}), got {tuple(x.shape)}"
            )
        if self.cfg.kind == "ensemble":  # the mean of the members' forecasts
            outs = [m(x, phase) for m in self.members]
            point = torch.stack([o[0] for o in outs]).mean(0)
            quants = [o[1] for o in outs if o[1] is not None]
            quant = torch.stack(quants).mean(0) if len(quants) == len(outs) else None
            return point, quant
        if self.cfg.kind == "seasonal_naive":
            p = self.period
            idx = self.seq_len - p + torch.arange(self.pred_len, device=x.device) % p
            return x[:, idx], None
        if phase is None:
            phase = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        stats = None
        if self.revin is not None:
            x, stats = self.revin.normalize(x)
        if self.cycle is not None:
            x = x - self.cycle(phase, self.seq_len)
        y = self._core(x)  # (b, h, c, o)
        point = y[..., 0]
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

    def loss(self, x: Tensor, y: Tensor, phase: Tensor | None, *, kind: str = "mse", target_idx: list[int] | None = None) -> Tensor:
        """Training loss: MSE (or MAE) of the point forecast + pinball loss of the quantiles."""
        point, quant = self(x, phase)
        return forecast_loss(point, quant, y, self.quantiles, kind=kind, target_idx=target_idx)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())


def build_model(cfg: TimeseriesConfig, n_vars: int, period: int) -> Forecaster:
    """The forecaster described by ``cfg`` for ``n_vars`` channels and cycle ``period``."""
    return Forecaster(cfg.model, n_vars, cfg.data.seq_len, cfg.data.pred_len, period)


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
    card: str | None = None,
) -> Any:
    """``model.safetensors`` + ``config.json`` (config, scaler, metrics) + model card, atomically."""
    from longstream.pipelines.common import save_pretrained

    bb = None
    if cfg.model.kind == "backbone":
        bb = {k: getattr(cfg.model, k) for k in ("backbone", "pattern", "d_model", "n_layers", "bidirectional")}
    return save_pretrained(
        model,
        cfg,
        out_dir,
        pipeline=PIPELINE,
        preset=cfg.preset,
        backbone=bb if bb is not None else cfg.model.kind,
        task=f"forecast {cfg.data.pred_len} steps from {cfg.data.seq_len}",
        metrics=metrics,
        data=data,
        name=name,
        card=card,
        extra={"scaler": scaler},
    )


def load_forecaster(checkpoint: Any) -> tuple[Forecaster, TimeseriesConfig, dict[str, Any]]:
    """Resolve and load a timeseries checkpoint -> (model in eval mode, config, config.json)."""
    from longstream.pipelines.common import UserError, config_from_dict, load_pretrained, load_weights

    sd, meta, _ = load_pretrained(str(checkpoint), pipeline=PIPELINE)
    cfg = config_from_dict(TimeseriesConfig, meta.get("config") or {})
    sc = meta.get("scaler") or {}
    try:
        model = Forecaster(cfg.model, int(sc["n_vars"]), cfg.data.seq_len, cfg.data.pred_len, int(sc["period"]))
    except KeyError as e:
        raise UserError(f"checkpoint {checkpoint}: config.json lacks scaler.{e.args[0]}; retrain it") from None
    load_weights(model, sd, checkpoint, meta)
    return model, cfg, meta


def from_pretrained(name_or_dir: str) -> Forecaster:
    """The forecaster of a checkpoint dir or hub name (``timeseries/<name>``), in eval mode."""
    return load_forecaster(name_or_dir)[0]


def make_ensemble(members: list[str], out_dir: Any, *, data: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Average the forecasts of trained checkpoints ``members`` into one checkpoint in ``out_dir``.

    The members must share the data layout, scaler, input length and horizon. The
    ensemble is scored on the validation and test splits of ``data`` (default: the
    members' training file) and saved self-contained (all member weights).
    """
    import dataclasses
    from pathlib import Path

    from longstream.pipelines.common import UserError, config_to_dict, sha256_file

    from .data import load_series, make_splits
    from .evaluate import evaluate_split

    if len(members) < 2:
        raise UserError("an ensemble needs at least two --members checkpoints")
    loaded = [load_forecaster(m) for m in members]
    m0, cfg0, meta0 = loaded[0]
    sc0 = meta0.get("scaler") or {}
    for (_, cfg, meta), nm in zip(loaded[1:], members[1:]):
        sc = meta.get("scaler") or {}
        same = (cfg.data.seq_len, cfg.data.pred_len, sc.get("columns"), sc.get("mean"), sc.get("period")) == (
            cfg0.data.seq_len, cfg0.data.pred_len, sc0.get("columns"), sc0.get("mean"), sc0.get("period"))
        if not same:
            raise UserError(f"member {nm} does not match {members[0]} (input, horizon, columns, scaler, cycle); "
                            "ensemble checkpoints trained on the same data and task")
    mcfg = dataclasses.replace(cfg0.model, kind="ensemble", members=[config_to_dict(c.model) for _, c, _ in loaded],
                               quantiles=[])
    cfg = dataclasses.replace(cfg0, preset="ensemble", model=mcfg)
    model = Forecaster(mcfg, m0.n_vars, m0.seq_len, m0.pred_len, m0.period)
    for dst, (src, _, _) in zip(model.members, loaded):
        dst.load_state_dict(src.state_dict())
    model.eval()
    series = load_series(cfg.data, data or cfg.data.path or None)
    splits = make_splits(cfg.data, series, model.period)
    val = evaluate_split(model, splits.val, target_idx=series.target_idx)
    test = evaluate_split(model, splits.test, target_idx=series.target_idx)
    metrics: dict[str, Any] = {"mse": test["mse"], "mae": test["mae"],
                               **{k: v for k, v in test.items() if k not in ("mse", "mae")},
                               "val_mse": val["mse"], "val_mae": val["mae"],
                               "members": ",".join(str(m) for m in members),
                               "n_params": sum(p.numel() for p in model.parameters())}
    data_info = {"name": Path(series.source).name, "rows": len(series), "split": splits.scheme,
                 "sha256": sha256_file(series.source)}
    out = Path(out_dir)
    nm = name or f"timeseries/{out.name}"
    card = (f"# {nm}\n\nMean forecast of {', '.join(f'`{m}`' for m in members)} (input {m0.seq_len}, "
            f"horizon {m0.pred_len}), saved self-contained.\n\nTest MSE {test['mse']:.4f}, MAE {test['mae']:.4f} "
            f"({test['n_windows']} windows); validation MSE {val['mse']:.4f}.\n\nData: {data_info['name']}"
            + (" (ETT, Zhou et al., AAAI 2021, CC BY-ND 4.0; not redistributed)" if data_info["name"].lower().startswith("ett") else "")
            + f"\n\n```bash\nlongstream timeseries evaluate --checkpoint {nm} --data path/to/{data_info['name']} --json\n```\n")
    save_forecaster(model, cfg, out, scaler=sc0, metrics=metrics, data=data_info, name=name, card=card)
    return metrics
