"""Time-series pipeline: TSLib protocol on the real ETTh1, encoders, baselines, bad CSVs, CLI.

ETTh1 (Zhou et al., Informer, AAAI 2021; CC BY-ND 4.0) is read from the data root
(``$LONGSTREAM_DATA``, default ``../shared/data``); tests that need it skip without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from longstream.encoders.timeseries import CycleBasis, PatchTokens, RevIN, TimeTokens, VariateTokens, patchify
from longstream.pipelines.common import UserError, apply_overrides
from longstream.pipelines.timeseries import config as tcfg
from longstream.pipelines.timeseries.data import (
    default_period,
    ett_borders,
    iterate_windows,
    load_series,
    make_splits,
    phase_index,
)
from longstream.pipelines.timeseries.model import make_forecaster, series_decomp

REPO = Path(__file__).resolve().parents[1]


def _etth1() -> Path:
    from longstream.pipelines.datasets import data_root

    p = data_root() / "timeseries" / "ett" / "ETTh1.csv"
    if not p.exists():
        pytest.skip("ETTh1.csv not in the data root")
    return p


def _csv(tmp_path: Path, name: str, df: pd.DataFrame) -> Path:
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


def _hourly(n: int = 400, cols: tuple[str, ...] = ("a", "b")) -> pd.DataFrame:
    t = np.arange(n)
    data = {"date": pd.date_range("2020-01-01", periods=n, freq="h").astype(str)}
    for k, c in enumerate(cols):
        data[c] = np.sin(2 * np.pi * t / 24 + k) + 0.01 * t
    return pd.DataFrame(data)


# --------------------------------------------------------------------------- protocol on real ETTh1


@pytest.mark.parametrize("pred_len", [96, 192, 336, 720])
def test_etth1_tslib_borders_and_window_counts(pred_len: int) -> None:
    path = _etth1()
    cfg = tcfg.DataConfig(seq_len=96, pred_len=pred_len)
    series = load_series(cfg, path)
    assert len(series) == 17420 and series.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert series.freq.lower() == "h"
    splits = make_splits(cfg, series, period=24)
    assert splits.scheme == "ett_hour"
    starts, ends = ett_borders(96)
    assert (starts, ends) == ([0, 8544, 11424], [8640, 11520, 14400])
    assert [len(s.data) for s in (splits.train, splits.val, splits.test)] == [8640, 2976, 2976]
    # TSLib: len = rows - seq_len - pred_len + 1, every window counted
    assert splits.train.n_windows == 8640 - 96 - pred_len + 1
    assert splits.val.n_windows == 2880 - pred_len + 1
    assert splits.test.n_windows == 2880 - pred_len + 1
    if pred_len == 96:
        assert splits.test.n_windows == 2785 and splits.train.n_windows == 8449
    n = sum(x.shape[0] for x, _, _ in iterate_windows(splits.test, 256))
    assert n == splits.test.n_windows  # no dropped last batch
    # the scaler is fit on the 8,640 training rows only (sklearn StandardScaler semantics)
    raw = pd.read_csv(path).iloc[:8640, 1:].to_numpy()
    np.testing.assert_allclose(splits.mean, raw.mean(0))
    np.testing.assert_allclose(splits.std, raw.std(0))
    # the first test window starts 96 rows before the test split; its first target is row 11520
    x, y, ph = next(iterate_windows(splits.test, 1))
    full = (pd.read_csv(path).iloc[:, 1:].to_numpy() - splits.mean) / splits.std
    np.testing.assert_allclose(y[0, 0].numpy(), full[11520], rtol=1e-5, atol=1e-5)
    assert int(ph[0]) == 11424 % 24  # ETTh1 starts at midnight: phase == hour of day


# --------------------------------------------------------------------------- encoders and models


@pytest.mark.parametrize("affine", [False, True])
def test_revin_round_trip(affine: bool) -> None:
    torch.manual_seed(0)
    rev = RevIN(3, affine=affine)
    if affine:
        with torch.no_grad():
            rev.weight.uniform_(0.5, 2.0)
            rev.bias.normal_()
    x = torch.randn(4, 50, 3) * 5 + 3
    z, stats = rev.normalize(x)
    if not affine:
        torch.testing.assert_close(z.mean(1), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(rev.denormalize(z, stats), x, atol=1e-4, rtol=1e-4)
    zq = torch.stack([z, z], dim=-1)  # trailing quantile axis broadcasts
    torch.testing.assert_close(rev.denormalize(zq, stats)[..., 1], x, atol=1e-4, rtol=1e-4)


def test_token_shapes_and_cycle() -> None:
    x = torch.randn(2, 96, 7)
    assert patchify(x, 16, 8).shape == (2, 7, 12, 16)
    assert PatchTokens(96, 16, 8, 32)(x).shape == (14, 12, 32)
    assert VariateTokens(96, 32)(x).shape == (2, 7, 32)
    assert VariateTokens(96, 32)(x, torch.randn(2, 96, 4)).shape == (2, 11, 32)
    assert TimeTokens(96, 8)(x).shape == (14, 96, 8)
    cyc = CycleBasis(24, 7)
    with torch.no_grad():
        cyc.data.copy_(torch.arange(24).float()[:, None].expand(24, 7))
    out = cyc(torch.tensor([0, 23]), 30)
    assert out.shape == (2, 30, 7)
    assert out[1, 0, 0] == 23 and out[1, 1, 0] == 0 and out[0, 25, 0] == 1


def test_dlinear_shapes_init_and_decomposition() -> None:
    cfg = tcfg.dlinear().model
    m = make_forecaster(cfg, n_vars=7, seq_len=96, pred_len=192)
    x = torch.randn(3, 96, 7)
    point, quant = m(x)
    assert point.shape == (3, 192, 7) and quant is None
    # TSLib init: both weights 1/L, so a constant input is forecast as that constant
    const = torch.full((1, 96, 7), 2.5)
    torch.testing.assert_close(m(const)[0], torch.full((1, 192, 7), 2.5), atol=1e-5, rtol=0)
    seas, trend = series_decomp(x, 25)
    torch.testing.assert_close(seas + trend, x)
    ind = make_forecaster(apply_overrides(tcfg.dlinear(), {"model.individual": "true"}).model, 7, 96, 24)
    assert ind.w_seasonal.shape == (7, 24, 96)


def test_seasonal_naive_repeats_last_cycle() -> None:
    cfg = tcfg.seasonal_naive().model
    m = make_forecaster(cfg, n_vars=2, seq_len=48, pred_len=60, period=24)
    x = torch.arange(48).float().view(1, 48, 1).expand(1, 48, 2)
    y, _ = m(x)
    expect = (24 + torch.arange(60) % 24).float()
    torch.testing.assert_close(y[0, :, 0], expect)


def test_quantile_head_and_backbone_model_shapes() -> None:
    cfg = tcfg.tiny()
    cfg.model.quantiles = [0.1, 0.5, 0.9]
    for tokens in ("variate", "patch", "time"):
        cfg.model.tokens = tokens
        cfg.model.patch_len, cfg.model.stride = 8, 4
        m = make_forecaster(cfg.model, n_vars=3, seq_len=32, pred_len=8, period=24, backbone=cfg.backbone)
        x = torch.randn(2, 32, 3)
        point, quant = m(x, torch.tensor([0, 5]))
        assert point.shape == (2, 8, 3) and quant.shape == (2, 8, 3, 3)
        loss = m.loss(x, torch.randn(2, 8, 3), torch.tensor([0, 5]))
        loss.backward()
        assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_phase_index_calendar() -> None:
    ts = pd.date_range("2016-07-01 05:00", periods=3, freq="h")
    assert phase_index(ts, "h", 24).tolist() == [5, 6, 7]
    ms = pd.date_range("2020-01-01", periods=13, freq="MS")
    assert phase_index(ms, "MS", 12).tolist() == list(range(12)) + [0]
    assert default_period("h") == 24 and default_period("D") == 7 and default_period("15min") == 96


# --------------------------------------------------------------------------- bad CSVs


def test_bad_csvs_raise_one_clear_user_error(tmp_path: Path) -> None:
    cfg = tcfg.DataConfig(seq_len=32, pred_len=8)
    good = _hourly()

    p = _csv(tmp_path, "nodate.csv", good.rename(columns={"date": "when"}))
    with pytest.raises(UserError, match=r"nodate\.csv: no date column.*--data\.date_col"):
        load_series(cfg, p)

    bad = good.copy()
    bad["a"] = bad["a"].astype(object)
    bad.loc[17, "a"] = "n/a?"
    p = _csv(tmp_path, "text.csv", bad)
    with pytest.raises(UserError, match=r"text\.csv: column 'a' has a non-numeric value 'n/a\?' at data row 18"):
        load_series(cfg, p)

    gap = good.drop(index=[100, 101]).reset_index(drop=True)
    p = _csv(tmp_path, "gaps.csv", gap)
    with pytest.raises(UserError, match=r"gaps\.csv: timestamps are irregular.*fill the gaps"):
        load_series(cfg, p)

    p = _csv(tmp_path, "target.csv", good)
    with pytest.raises(UserError, match=r"unknown column 'zzz'.*available: \['a', 'b'\]"):
        load_series(tcfg.DataConfig(targets=["zzz"]), p)

    p = _csv(tmp_path, "short.csv", _hourly(60))
    series = load_series(cfg, p)
    with pytest.raises(UserError, match=r"short\.csv: the \w+ split has \d+ rows but input length 32 \+ horizon 8 needs 40; the file has 60 rows"):
        make_splits(cfg, series, 24)

    dup = pd.concat([good.iloc[:10], good.iloc[9:]], ignore_index=True)
    p = _csv(tmp_path, "dup.csv", dup)
    with pytest.raises(UserError, match="appears more than once"):
        load_series(cfg, p)

    missing = good.copy()
    missing.loc[5, "b"] = np.nan
    p = _csv(tmp_path, "hole.csv", missing)
    with pytest.raises(UserError, match=r"hole\.csv: column 'b' has a missing value at data row 6"):
        load_series(cfg, p)

    with pytest.raises(UserError, match="does not exist"):
        load_series(cfg, tmp_path / "nope.csv")


def test_long_format_csv(tmp_path: Path) -> None:
    df = pd.read_csv(REPO / "demos" / "timeseries" / "example_daily_sales.csv")
    p = _csv(tmp_path, "sales.csv", df)
    s = load_series(tcfg.DataConfig(), p)
    assert s.columns == ["store_a", "store_b"] and s.freq == "D" and len(s) == 730


# --------------------------------------------------------------------------- CLI end to end


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from longstream.pipelines.timeseries.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_train_predict_backtest_on_user_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A non-ETT CSV (generated daily sales, long layout) through train -> evaluate -> predict -> backtest."""
    df = pd.read_csv(REPO / "demos" / "timeseries" / "example_daily_sales.csv")
    df = df[pd.to_datetime(df["ds"]) < pd.Timestamp("2022-01-01") + pd.Timedelta(days=400)]
    data = _csv(tmp_path, "sales.csv", df)
    ck = tmp_path / "ck"
    rc, out, err = _cli(
        ["train", "--preset", "tiny", "--out", str(ck), "--quiet", "--data.path", str(data),
         "--data.seq_len", "28", "--data.pred_len", "14", "--model.quantiles", "0.1,0.5,0.9"],
        capsys,
    )
    assert rc == 0, err
    metrics = json.loads(out.strip().splitlines()[-1])
    assert {"mse", "mae", "coverage", "val_mse"} <= set(metrics)
    assert (ck / "model.safetensors").exists() and not (ck / "train_state.pt").exists()

    rc, out, err = _cli(["evaluate", "--checkpoint", str(ck), "--data", str(data), "--json"], capsys)
    assert rc == 0, err
    ev = json.loads(out.strip().splitlines()[-1])
    assert ev["mse"] == pytest.approx(metrics["mse"], rel=1e-5)

    fc = tmp_path / "out" / "fc.csv"
    fc.parent.mkdir()  # --out's folder must exist (the shared --out rule, pipelines/CONTRACT.md)
    rc, out, err = _cli(["predict", "--checkpoint", str(ck), str(data), "--out", str(fc)], capsys)
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert fc.exists() and fc.with_suffix(".png").exists()
    assert fc.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    frame = pd.read_csv(fc)
    assert len(frame) == 14 and res["horizon"] == 14
    assert {"date", "store_a", "store_a_q0.1", "store_a_q0.9"} <= set(frame.columns)
    assert frame["date"].iloc[0].startswith("2023-02-05")  # the day after the last row
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left behind

    rc, out, err = _cli(["backtest", "--checkpoint", str(ck), "--data", str(data), "--folds", "3"], capsys)
    assert rc == 0, err
    bt = json.loads(out.strip().splitlines()[-1])
    assert bt["n_folds"] == 3 and len(bt["folds"]) == 3 and "coverage" in bt


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _csv(tmp_path, "nodate.csv", _hourly().rename(columns={"date": "x"}))
    rc, out, err = _cli(["train", "--preset", "tiny", "--out", str(tmp_path / "ck"), "--data.path", str(p)], capsys)
    assert rc == 2
    assert "nodate.csv: no date column" in err and "Traceback" not in err


# --------------------------------------------------------------------------- shipped checkpoints


def _shipped() -> list[Path]:
    return sorted(p.parent for p in (REPO / "checkpoints" / "timeseries").glob("*/config.json"))


def test_shipped_checkpoint_reproduces_recorded_metrics() -> None:
    """The shipped horizon-96 model scores its recorded test MSE / MAE on the full ETTh1 test split."""
    path = _etth1()
    ck = [d for d in _shipped() if json.loads((d / "config.json").read_text())["config"]["data"]["pred_len"] == 96]
    if not ck:
        pytest.skip("no shipped horizon-96 timeseries checkpoint")
    from longstream.pipelines.timeseries.evaluate import evaluate

    for d in ck[:2]:
        rec = json.loads((d / "config.json").read_text())["metrics"]
        got = evaluate(str(d), str(path))
        assert got["n_windows"] == 2785
        assert got["mse"] == pytest.approx(rec["mse"], abs=2e-5)
        assert got["mae"] == pytest.approx(rec["mae"], abs=2e-5)


@pytest.mark.slow
def test_all_shipped_checkpoints_reproduce() -> None:
    path = _etth1()
    from longstream.pipelines.timeseries.evaluate import evaluate

    for d in _shipped():
        rec = json.loads((d / "config.json").read_text())["metrics"]
        got = evaluate(str(d), str(path))
        assert got["mse"] == pytest.approx(rec["mse"], abs=2e-5), d.name


def test_resume_from_disk_is_bit_identical(tmp_path: Path) -> None:
    """A run paused mid-epoch (train_state.pt on disk), resumed in a fresh call, ends with
    the same weights, bit for bit, as an uninterrupted run; both log per-step losses."""
    from safetensors.torch import load_file

    from longstream.pipelines.timeseries.train import prepare, steps_per_epoch, train

    p = _csv(tmp_path, "h.csv", _hourly(600, ("a", "b", "c")))

    def cfg() -> tcfg.TimeseriesConfig:
        c = tcfg.tiny()
        c.data.path, c.data.max_train_windows = str(p), 0
        c.model.dropout, c.backbone.dropout = 0.1, 0.1  # dropout draws from the RNG the state restores
        c.train.epochs, c.train.batch_size, c.train.patience, c.train.save_every = 2, 64, 5, 2
        c.train.lradj = "type1"
        return c

    spe = steps_per_epoch(prepare(cfg())[1], cfg())
    assert spe >= 3  # the pause below lands inside the second epoch (after a shuffle and a validation)
    full = train(cfg(), out_dir=tmp_path / "full", quiet=True)
    paused = train(cfg(), out_dir=tmp_path / "cut", quiet=True, max_steps_this_run=spe + 1)
    assert paused["status"] == "paused" and paused["step"] == spe + 1
    assert (tmp_path / "cut" / "train_state.pt").exists() and not (tmp_path / "cut" / "config.json").exists()
    resumed = train(cfg(), out_dir=tmp_path / "cut", resume=True, quiet=True)
    assert not (tmp_path / "cut" / "train_state.pt").exists()
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["mse"] == full["mse"] and resumed["epochs"] == full["epochs"]
    recs = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if "epoch" in r] == [1, 2]
    losses = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    full_recs = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert losses and losses == [(r["step"], r["loss"]) for r in full_recs if "loss" in r]
    with pytest.raises(UserError, match="nothing to resume"):
        train(cfg(), out_dir=tmp_path / "cut", resume=True, quiet=True)


def test_backbone_section_and_contract_hooks() -> None:
    """The backbone comes from the config's ``backbone`` section; build_model(cfg)(**example_batch(cfg)) runs."""
    from longstream.pipelines.timeseries.model import BackboneForecaster, build_model, example_batch

    cfg = tcfg.smamba()
    cfg.backbone.d_model, cfg.backbone.n_layers = 8, 1
    m = build_model(cfg)
    assert isinstance(m, BackboneForecaster) and m.backbone.cfg.d_model == 8
    point, quant = m(**example_batch(cfg, batch_size=3))
    assert point.shape == (3, 96, 7) and quant is None and torch.isfinite(point).all()
    cfg.backbone.pattern = "Q"
    with pytest.raises(UserError, match="backbone"):
        build_model(cfg)


def test_old_config_layout_migrates() -> None:
    """Configs written before the backbone section (backbone fields in ``model``) still load."""
    from longstream.pipelines.common import config_from_dict
    from longstream.pipelines.timeseries.config import migrate_config

    old = {"preset": "x", "model": {"kind": "backbone", "d_model": 24, "n_layers": 3, "pattern": "M2",
                                    "bidirectional": False, "d_intermediate": 8, "dropout": 0.2,
                                    "mixer_kwargs": {"M2": {"headdim": 8}}}}
    cfg = config_from_dict(tcfg.TimeseriesConfig, migrate_config(old))
    bb = cfg.backbone
    assert (bb.d_model, bb.n_layers, bb.pattern, bb.bidirectional, bb.d_intermediate, bb.dropout) == (
        24, 3, "M2", False, 8, 0.2)
    assert bb.mixer_kwargs == {"M2": {"headdim": 8}} and cfg.model.dropout == 0.2
    assert migrate_config(migrate_config(old)) == migrate_config(old)


def test_demo_forecast_uses_shipped_checkpoint_for_ett_layout() -> None:
    if not (REPO / "checkpoints" / "timeseries" / "etth1-cyclelinear-h96" / "config.json").exists():
        pytest.skip("etth1-cyclelinear-h96 not shipped")
    from longstream.pipelines.timeseries.demo import EXAMPLES, forecast_file

    png, csv, summary = forecast_file(next(iter(EXAMPLES.values())), "OT", 96)
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
    frame = pd.read_csv(csv)
    assert len(frame) == 96 and list(frame.columns) == ["date", "OT"]
    assert "shipped checkpoint `timeseries/etth1-" in summary


@pytest.mark.parametrize(
    "pattern,mixer_kwargs",
    [("M", {}), ("M2", {"M2": {"headdim": 16, "d_state": 16}}), ("S", {}), ("M,A", {})],
)
def test_registry_backbones_plug_in(pattern: str, mixer_kwargs: dict) -> None:
    """Mamba, Mamba-2, S4D and a Mamba/attention hybrid from the registry, as variate-token backbones."""
    cfg = tcfg.tiny()
    bb = cfg.backbone
    bb.pattern, bb.mixer_kwargs, bb.d_model, bb.n_layers = pattern, mixer_kwargs, 32, 2
    m = make_forecaster(cfg.model, n_vars=3, seq_len=32, pred_len=8, period=24, backbone=bb)
    point, _ = m(torch.randn(2, 32, 3), torch.tensor([0, 1]))
    assert point.shape == (2, 8, 3) and torch.isfinite(point).all()


def test_targets_covariates_and_short_predict_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Forecast one target with an input-only covariate; a too-short CSV for predict is a UserError (exit 2)."""
    df = _hourly(500, ("load", "temp", "other"))
    data = _csv(tmp_path, "cov.csv", df)
    ck = tmp_path / "ck"
    rc, out, err = _cli(
        ["train", "--preset", "tiny", "--out", str(ck), "--quiet", "--data.path", str(data),
         "--data.targets", "load", "--data.covariates", "temp", "--model.kind", "linear"],
        capsys,
    )
    assert rc == 0, err
    meta = json.loads((ck / "config.json").read_text())
    assert meta["scaler"]["columns"] == ["load", "temp"] and meta["scaler"]["targets"] == ["load"]
    fc = tmp_path / "fc.csv"
    rc, out, err = _cli(["predict", "--checkpoint", str(ck), str(data), "--out", str(fc)], capsys)
    assert rc == 0, err
    assert list(pd.read_csv(fc).columns) == ["date", "load"]
    short = _csv(tmp_path, "short.csv", df.iloc[:10])
    rc, out, err = _cli(["predict", "--checkpoint", str(ck), str(short), "--out", str(tmp_path / "s.csv")], capsys)
    assert rc == 2 and "short.csv has 10 rows but the model reads the last 32" in err
    assert not (tmp_path / "s.csv").exists()


def test_monthly_frequency_and_given_freq(tmp_path: Path) -> None:
    ms = pd.date_range("2000-01-01", periods=60, freq="MS")
    df = pd.DataFrame({"month": ms.strftime("%Y-%m-%d"), "sales": np.arange(60.0)})
    p = _csv(tmp_path, "monthly.csv", df)
    s = load_series(tcfg.DataConfig(date_col="month"), p)
    assert s.freq == "MS" and default_period(s.freq) == 12
    assert phase_index(s.timestamps, s.freq, 12)[:13].tolist() == list(range(12)) + [0]
    with pytest.raises(UserError, match="do not follow frequency 'D'"):
        load_series(tcfg.DataConfig(date_col="month", freq="D"), p)
