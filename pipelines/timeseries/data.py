"""Time-series data: CSV loading and validation, TSLib's split protocol, sliding windows.

Input files:

- *wide* CSV: a timestamp column (``date``, ``ds``, ``timestamp``, ``time`` or
  ``datetime``; or named by ``date_col``) plus one numeric column per variable — the
  ETT layout (Zhou et al., "Informer", AAAI 2021).
- *long* CSV: ``unique_id, ds, y`` (the Nixtla layout); each ``unique_id`` becomes a
  variable.

The split protocol is TSLib's (``data_provider/data_loader.py`` of Time-Series-Library):
for ETTh* the borders are 12 / 4 / 4 months of hours (8,640 / 2,880 / 2,880 rows),
validation and test windows start ``seq_len`` rows before their split so that every
target step lies inside it, the StandardScaler is fit on the training rows only, and
every window is evaluated (window count = rows - seq_len - pred_len + 1). Other files
are split 70 / 10 / 20 % the same way (TSLib's ``Dataset_Custom``).

Every problem a user can cause raises one :class:`UserError` naming the file and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from longstream.pipelines.common import UserError, to_model_dtype

from .config import DataConfig

__all__ = [
    "UserError",
    "Series",
    "Splits",
    "load_series",
    "default_data_path",
    "ett_borders",
    "split_borders",
    "make_splits",
    "scale_checked",
    "iterate_windows",
    "phase_index",
    "default_period",
]

DATE_COLUMNS = ("date", "ds", "timestamp", "time", "datetime")


def default_data_path() -> Path:
    """ETTh1 under the data root (``$LONGSTREAM_DATA``), via the dataset registry.

    Raises :class:`UserError` saying where to get the file and where to put it if missing.
    """
    from longstream.pipelines.datasets import dataset_path

    return dataset_path("ETTh1")


# --------------------------------------------------------------------------- loading


@dataclass
class Series:
    """A regular multivariate series: ``values`` (T, C) float64 in column order ``columns``."""

    timestamps: pd.DatetimeIndex
    values: np.ndarray
    columns: list[str]
    freq: str
    targets: list[str]
    source: str = ""
    target_idx: list[int] = field(default_factory=list)
    layout: str = "wide"  # "long": rows of the file are (unique_id, ds, y), not one row per timestamp

    def __post_init__(self) -> None:
        if not self.target_idx:
            self.target_idx = [self.columns.index(t) for t in self.targets]

    def __len__(self) -> int:
        return len(self.values)

    def locator(self, row_offset: int = 0) -> Callable[[tuple[int, ...]], str]:
        """Index ``(t, c)`` of an array whose row 0 is this series' row ``row_offset`` -> text for errors."""
        return _locator(self.columns, self.timestamps, self.layout, row_offset)


def _locator(columns: list[str], timestamps: pd.DatetimeIndex | None, layout: str,
             row_offset: int = 0) -> Callable[[tuple[int, ...]], str]:
    def locate(idx: tuple[int, ...]) -> str:
        t = int(idx[0]) + row_offset
        c = columns[idx[-1]] if len(idx) > 1 else columns[0]
        ts = str(timestamps[t]) if timestamps is not None and 0 <= t < len(timestamps) else ""
        if layout == "long":
            return f"series {c!r} at time step {t + 1}" + (f" ({ts})" if ts else "")
        return f"column {c!r}, data row {t + 1} (line {t + 2}" + (f", {ts})" if ts else ")")

    return locate


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"data file {path} does not exist; pass --data PATH to a CSV file")
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass the CSV file inside it")
    from longstream.pipelines.common import check_text_file

    check_text_file(path, what="data file", hint="give a comma-separated UTF-8 CSV")  # no UnicodeDecodeError
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable CSV ({e}); save it as comma-separated UTF-8 text") from None
    if df.empty or df.shape[1] < 2:
        raise UserError(
            f"{path} has {df.shape[0]} rows and {df.shape[1]} columns; expected a timestamp column "
            "and at least one numeric column"
        )
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _find_date_col(df: pd.DataFrame, path: Path, date_col: str) -> str:
    if date_col:
        if date_col not in df.columns:
            raise UserError(
                f"{path}: date column {date_col!r} not found; columns are {list(df.columns)}; "
                "pass --data.date_col with one of them"
            )
        return date_col
    lower = {c.lower(): c for c in df.columns}
    for name in DATE_COLUMNS:
        if name in lower:
            return lower[name]
    raise UserError(
        f"{path}: no date column found (looked for {', '.join(DATE_COLUMNS)}); columns are "
        f"{list(df.columns)}; add a timestamp column or pass --data.date_col NAME"
    )


def _to_numeric(df: pd.DataFrame, cols: list[str], path: Path, layout: str = "wide") -> np.ndarray:
    out = np.empty((len(df), len(cols)), dtype=np.float64)
    for j, c in enumerate(cols):
        s = df[c]
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna() & s.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(
                f"{path}: column {c!r} has a non-numeric value {s.iloc[i]!r} at data row {i + 1} "
                f"(line {i + 2}); fix or remove it, or leave {c!r} out of --data.targets/--data.covariates"
            )
        if num.isna().any():
            i = int(np.flatnonzero(num.isna().to_numpy())[0])
            raise UserError(
                f"{path}: column {c!r} has a missing value at data row {i + 1} (line {i + 2}); "
                "fill the gap (e.g. interpolate) before forecasting"
            )
        out[:, j] = num.to_numpy(dtype=np.float64)
    # finite in float64 is not enough: the model computes in float32 (1e308 -> inf)
    to_model_dtype(out, source=str(path), locate=_locator(cols, None, layout),
                   fix="replace the value, or rescale the column (e.g. to other units)")
    return out


def _check_regular(ts: pd.DatetimeIndex, path: Path, freq: str) -> str:
    """Return the series' frequency string; UserError on duplicates, disorder or gaps."""
    ts = ts.as_unit("ns")  # pandas may parse to s/ms/us resolution; all arithmetic below is in ns
    if len(ts) < 3:
        raise UserError(f"{path}: only {len(ts)} rows; a forecast needs a longer history")
    if ts.has_duplicates:
        dup = ts[ts.duplicated()][0]
        raise UserError(f"{path}: timestamp {dup} appears more than once; remove or aggregate duplicates")
    if not ts.is_monotonic_increasing:
        i = int(np.flatnonzero(np.diff(ts.asi8) < 0)[0])
        raise UserError(
            f"{path}: timestamps are not in increasing order (row {i + 2} {ts[i + 1]} comes after {ts[i]}); "
            "sort the file by time"
        )
    if freq:
        try:
            expected = pd.date_range(ts[0], periods=len(ts), freq=freq)
        except ValueError:
            raise UserError(f"unknown frequency {freq!r}; use a pandas alias such as h, D, W, MS, 15min") from None
    else:
        inferred = pd.infer_freq(ts)
        if inferred is not None:
            return inferred
        # irregular: report the first step that differs from the most common one
        diffs = np.diff(ts.asi8)
        vals, counts = np.unique(diffs, return_counts=True)
        step = pd.Timedelta(int(vals[np.argmax(counts)]))
        i = int(np.flatnonzero(diffs != vals[np.argmax(counts)])[0])
        raise UserError(
            f"{path}: timestamps are irregular — the usual step is {step} but row {i + 2} ({ts[i]}) is "
            f"followed by {ts[i + 1]}; fill the gaps (resample to a regular grid) or pass --data.freq "
            "if the series has a calendar frequency"
        )
    mismatch = np.flatnonzero(expected.as_unit("ns").asi8 != ts.asi8)
    if len(mismatch):
        i = int(mismatch[0])
        raise UserError(
            f"{path}: timestamps do not follow frequency {freq!r}: row {i + 1} is {ts[i]}, expected "
            f"{expected[i]}; fill the gaps or pass the right --data.freq"
        )
    return freq


def load_series(cfg: DataConfig, path: str | Path | None = None) -> Series:
    """Read and validate a wide or long CSV into a regular :class:`Series`."""
    path = Path(path or cfg.path or default_data_path())
    df = _read_csv(path)
    lower = {c.lower(): c for c in df.columns}
    is_long = {"unique_id", "ds", "y"} <= set(lower) and not cfg.date_col
    if is_long:
        uid, ds, y = lower["unique_id"], lower["ds"], lower["y"]
        ts_all = pd.to_datetime(df[ds], errors="coerce")
        if ts_all.isna().any():
            i = int(np.flatnonzero(ts_all.isna().to_numpy())[0])
            raise UserError(f"{path}: cannot parse timestamp {df[ds].iloc[i]!r} at data row {i + 1}; use ISO dates")
        df = df.assign(**{ds: ts_all})
        if df.duplicated([uid, ds]).any():
            raise UserError(f"{path}: some (unique_id, ds) pairs repeat; aggregate duplicates first")
        wide = df.pivot(index=ds, columns=uid, values=y)
        wide.columns = [str(c) for c in wide.columns]
        if wide.isna().any().any():
            col = str(wide.columns[wide.isna().any()][0])
            raise UserError(
                f"{path}: series {col!r} does not cover the same timestamps as the others; give every "
                "unique_id the same ds values (or forecast them one file at a time)"
            )
        df = wide.reset_index().rename(columns={ds: "ds"})
        date_col = "ds"
    else:
        date_col = _find_date_col(df, path, cfg.date_col)
    ts = pd.to_datetime(df[date_col], errors="coerce")
    if ts.isna().any():
        i = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise UserError(
            f"{path}: cannot parse timestamp {df[date_col].iloc[i]!r} in column {date_col!r} at data row "
            f"{i + 1}; use ISO dates like 2016-07-01 00:00:00"
        )
    ts = pd.DatetimeIndex(ts)
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    value_cols = [c for c in df.columns if c != date_col]
    for name in list(cfg.targets) + list(cfg.covariates):
        if name not in value_cols:
            raise UserError(
                f"{path}: unknown column {name!r} in --data.targets/--data.covariates; "
                f"available: {value_cols}"
            )
    if cfg.targets:
        targets = list(cfg.targets)
        columns = targets + [c for c in cfg.covariates if c not in targets]
    else:
        columns = value_cols
        targets = value_cols
    layout = "long" if is_long else "wide"
    values = _to_numeric(df, columns, path, layout)
    freq = _check_regular(ts, path, cfg.freq)
    return Series(timestamps=ts, values=values, columns=columns, freq=freq, targets=targets, source=str(path),
                  layout=layout)


# --------------------------------------------------------------------------- calendar phase


def default_period(freq: str) -> int:
    """The natural cycle length for a pandas frequency (hourly 24, daily 7, ...); 0 if none."""
    try:
        off = pd.tseries.frequencies.to_offset(freq)
    except ValueError:
        return 0
    name = type(off).__name__
    n = max(1, int(getattr(off, "n", 1)))
    if name in ("Hour",):
        return 24 // n if 24 % n == 0 else 0
    if name in ("Minute",):
        return 1440 // n if 1440 % n == 0 and 1440 // n <= 288 else (60 // n if 60 % n == 0 else 0)
    if name in ("Day", "BusinessDay"):
        return 7 if n == 1 and name == "Day" else (5 if name == "BusinessDay" else 0)
    if name.startswith("Week"):
        return 52 if n == 1 else 0
    if name.startswith("Month"):
        return 12 // n if 12 % n == 0 else 0
    if name.startswith("Quarter"):
        return 4 if n == 1 else 0
    return 0


def phase_index(timestamps: pd.DatetimeIndex, freq: str, period: int) -> np.ndarray:
    """Position of each timestamp within its cycle, in ``[0, period)`` (int64).

    Counted as steps since 1970-01-01 modulo ``period`` (months since year 0 for monthly
    and quarterly data), so training rows and forecast rows past the end agree.
    """
    if period <= 0:
        return np.zeros(len(timestamps), dtype=np.int64)
    off = pd.tseries.frequencies.to_offset(freq)
    name = type(off).__name__
    if name.startswith("Month") or name.startswith("Quarter") or name.startswith("Year"):
        months = timestamps.year.to_numpy() * 12 + timestamps.month.to_numpy() - 1
        n = max(1, int(getattr(off, "n", 1))) * (3 if name.startswith("Quarter") else 1)
        steps = months // n
    elif name == "BusinessDay":
        steps = timestamps.day_of_week.to_numpy()
    else:
        try:
            delta = pd.Timedelta(off).value
        except ValueError:
            return np.arange(len(timestamps), dtype=np.int64) % period
        ns = pd.DatetimeIndex(timestamps).as_unit("ns").asi8  # resolution-independent
        steps = (ns - pd.Timestamp("1970-01-01").as_unit("ns").value) // delta
    return np.asarray(steps, dtype=np.int64) % period


def future_timestamps(last: pd.Timestamp, freq: str, n: int) -> pd.DatetimeIndex:
    """The ``n`` timestamps after ``last`` at frequency ``freq``."""
    return pd.date_range(last, periods=n + 1, freq=freq)[1:]


# --------------------------------------------------------------------------- splits


def ett_borders(seq_len: int, minute: bool = False) -> tuple[list[int], list[int]]:
    """TSLib's ETT borders: (starts, ends) of train / val / test rows (12/4/4 months)."""
    m = 4 if minute else 1
    month = 30 * 24 * m
    starts = [0, 12 * month - seq_len, 12 * month + 4 * month - seq_len]
    ends = [12 * month, 12 * month + 4 * month, 12 * month + 8 * month]
    return starts, ends


def split_borders(n_rows: int, seq_len: int, scheme: str) -> tuple[list[int], list[int]]:
    """Row borders ``(starts, ends)`` of the train / val / test splits for ``scheme``."""
    if scheme == "ett_hour":
        return ett_borders(seq_len)
    if scheme == "ett_minute":
        return ett_borders(seq_len, minute=True)
    if scheme == "ratio":
        n_train = int(n_rows * 0.7)
        n_test = int(n_rows * 0.2)
        n_val = n_rows - n_train - n_test
        starts = [0, n_train - seq_len, n_rows - n_test - seq_len]
        ends = [n_train, n_train + n_val, n_rows]
        return starts, ends
    raise UserError(f"unknown split scheme {scheme!r}; use auto, ett_hour, ett_minute or ratio")


def resolve_split(scheme: str, source: str, n_rows: int) -> str:
    """``auto`` -> ``ett_hour`` for ETTh* files long enough, ``ett_minute`` for ETTm*, else ``ratio``."""
    if scheme != "auto":
        return scheme
    name = Path(source).name.lower()
    if name.startswith("etth") and n_rows >= 20 * 30 * 24:
        return "ett_hour"
    if name.startswith("ettm") and n_rows >= 20 * 30 * 24 * 4:
        return "ett_minute"
    return "ratio"


@dataclass
class Split:
    """One split: scaled rows ``data`` (T, C), their cycle phases, and the window count."""

    name: str
    data: Tensor  # (t, c) float32, scaled
    phase: Tensor  # (t,) int64
    seq_len: int
    pred_len: int
    start_row: int  # row of the full file where ``data`` starts
    source: str = ""  # the file, for error messages
    locate: Callable[[tuple[int, ...]], str] | None = None  # (t, c) of ``data`` -> "column 'OT', data row 9 ..."

    @property
    def n_windows(self) -> int:
        return max(0, len(self.data) - self.seq_len - self.pred_len + 1)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    mean: np.ndarray  # (c,) scaler fit on the train rows
    std: np.ndarray
    series: Series
    scheme: str
    period: int


def fit_scaler(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std (sklearn's StandardScaler); std 0 -> 1."""
    mean = values.mean(0)
    std = values.std(0)
    std = np.where(std > 0, std, 1.0)
    return mean, std


def scale_checked(series: Series, mean: np.ndarray, std: np.ndarray, stage: str, rows: slice = slice(None)) -> Tensor:
    """``(values[rows] - mean) / std`` as float32, or a :class:`UserError` naming the cell that is not finite."""
    raw = series.values[rows]
    start = rows.indices(len(series))[0]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        scaled = (raw - np.asarray(mean, dtype=np.float64)) / np.asarray(std, dtype=np.float64)
    return to_model_dtype(scaled, source=series.source, raw=raw, locate=series.locator(start), stage=stage,
                          fix="replace the value, or rescale the column (e.g. to other units)")


def make_splits(cfg: DataConfig, series: Series, period: int) -> Splits:
    """Cut ``series`` into TSLib train / val / test splits, scaled by train statistics."""
    need = cfg.seq_len + cfg.pred_len
    scheme = resolve_split(cfg.split, series.source, len(series))
    starts, ends = split_borders(len(series), cfg.seq_len, scheme)
    if ends[-1] > len(series):
        raise UserError(
            f"{series.source}: split {scheme!r} needs {ends[-1]} rows but the file has {len(series)}; "
            "use --data.split ratio"
        )
    for name, s, e in zip(("train", "validation", "test"), starts, ends):
        if e - s < need or s < 0:
            raise UserError(
                f"{series.source}: the {name} split has {max(0, e - s)} rows but input length "
                f"{cfg.seq_len} + horizon {cfg.pred_len} needs {need}; the file has {len(series)} rows — "
                "use a longer series or a smaller --data.seq_len / --data.pred_len"
            )
    mean, std = fit_scaler(series.values[starts[0] : ends[0]])
    scaled = scale_checked(series, mean, std, "after scaling by the train split's mean and std").numpy()
    phase = phase_index(series.timestamps, series.freq, period)
    parts = [
        Split(
            name=n,
            data=torch.from_numpy(scaled[s:e].copy()),
            phase=torch.from_numpy(phase[s:e].copy()),
            seq_len=cfg.seq_len,
            pred_len=cfg.pred_len,
            start_row=s,
            source=series.source,
            locate=series.locator(s),
        )
        for n, s, e in zip(("train", "val", "test"), starts, ends)
    ]
    return Splits(*parts, mean=mean, std=std, series=series, scheme=scheme, period=period)


def iterate_windows(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    indices: Tensor | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x (B, L, C), y (B, H, C), phase (B,))`` batches; the last batch is kept.

    Windows are gathered from the split tensor per batch (no (N, L, C) copy is built).
    """
    idx = window_order(split, shuffle=shuffle, generator=generator, indices=indices)
    for i in range(0, len(idx), batch_size):
        yield gather_windows(split, idx[i : i + batch_size])


def window_order(
    split: Split, *, shuffle: bool = False, generator: torch.Generator | None = None, indices: Tensor | None = None
) -> Tensor:
    """Window start indices of ``split`` (all, or ``indices``), shuffled with ``generator`` if asked."""
    idx = indices if indices is not None else torch.arange(split.n_windows)
    if shuffle:
        idx = idx[torch.randperm(len(idx), generator=generator)]
    return idx


def gather_windows(split: Split, starts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x (B, L, C), y (B, H, C), phase (B,))`` for the windows starting at ``starts`` (B,)."""
    l, h = split.seq_len, split.pred_len
    x = split.data[starts[:, None] + torch.arange(l)]  # (b, l, c)
    y = split.data[starts[:, None] + torch.arange(l, l + h)]  # (b, h, c)
    return x, y, split.phase[starts]
