"""Generate the synthetic example CSVs of the time-series demo (no third-party data).

- ``example_hourly.csv``: 60 days of hourly readings in the ETT column layout
  (``date, HUFL, HULL, MUFL, MULL, LUFL, LULL, OT``): daily and weekly load cycles,
  a slow drift and noise, with an oil temperature that lags the load. It is *not*
  ETT data; it only shares the layout so the shipped ETTh1 checkpoints accept it.
- ``example_daily_sales.csv``: two years of daily store sales in the long layout
  (``unique_id, ds, y``) for two stores, with weekly and yearly seasonality, a trend,
  and promotions — a "user CSV that is not ETT".

Run ``python demos/timeseries/make_examples.py`` to (re)write both next to this file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def hourly_ett_like(days: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * 24
    t = np.arange(n)
    hour = t % 24
    dow = (t // 24) % 7
    daily = np.sin(2 * np.pi * (hour - 7) / 24) + 0.4 * np.sin(4 * np.pi * hour / 24)
    weekly = np.where(dow >= 5, -0.6, 0.2)
    drift = np.cumsum(rng.normal(0, 0.03, n))
    base = daily + weekly + drift
    cols = {}
    for name, scale, off, noise in [
        ("HUFL", 2.5, 7.0, 0.35), ("HULL", 0.8, 2.0, 0.25), ("MUFL", 2.2, 4.5, 0.35),
        ("MULL", 0.6, 0.8, 0.2), ("LUFL", 0.9, 3.5, 0.2), ("LULL", 0.3, 1.2, 0.1),
    ]:
        cols[name] = off + scale * base + rng.normal(0, noise, n)
    load = cols["HUFL"] + cols["MUFL"]
    ot = np.empty(n)
    ot[0] = 20.0
    for i in range(1, n):  # oil temperature follows the load with inertia
        ot[i] = 0.95 * ot[i - 1] + 0.05 * (8 + 1.1 * load[i]) + rng.normal(0, 0.3)
    cols["OT"] = ot
    dates = pd.date_range("2021-03-01", periods=n, freq="h")
    return pd.DataFrame({"date": dates.strftime("%Y-%m-%d %H:%M:%S"), **{k: np.round(v, 3) for k, v in cols.items()}})


def daily_sales(days: int = 730, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2022-01-01", periods=days, freq="D")
    rows = []
    for store, level in (("store_a", 120.0), ("store_b", 80.0)):
        t = np.arange(days)
        weekly = np.array([0.9, 0.85, 0.9, 1.0, 1.2, 1.45, 1.1])[ds.day_of_week.to_numpy()]
        yearly = 1 + 0.15 * np.sin(2 * np.pi * (ds.day_of_year.to_numpy() - 80) / 365.25)
        trend = 1 + 0.0004 * t
        promo = (rng.random(days) < 0.05) * rng.uniform(0.2, 0.5, days)
        y = level * weekly * yearly * trend * (1 + promo) + rng.normal(0, level * 0.05, days)
        rows.append(pd.DataFrame({"unique_id": store, "ds": ds.strftime("%Y-%m-%d"), "y": np.round(y, 2)}))
    return pd.concat(rows, ignore_index=True)


def _write(df: pd.DataFrame, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def main(out_dir: Path = HERE) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "example_hourly.csv", out_dir / "example_daily_sales.csv"]
    _write(hourly_ett_like(), paths[0])
    _write(daily_sales(), paths[1])
    return paths


if __name__ == "__main__":
    for p in main():
        print(p)
