"""``longstream timeseries train|evaluate|predict|backtest``.

- ``train [--preset NAME] [--out DIR] [--resume] [--data.path CSV] [--data.targets a,b] ...``
- ``evaluate --checkpoint NAME_OR_DIR [--data CSV] [--json]``: test-split metrics (TSLib protocol).
- ``predict --checkpoint NAME_OR_DIR CSV [--out forecast.csv]``: forecast past the end of
  the file; writes the CSV and a PNG plot (same name, ``.png``) with history, forecast
  and interval (quantile models).
- ``backtest --checkpoint NAME_OR_DIR [--data CSV] [--folds 5] [--step N] [--json]``:
  rolling-origin evaluation over the last ``folds`` origins.
- ``ensemble --members CK1 CK2 ... --out DIR [--data CSV]``: one checkpoint averaging the
  members' forecasts, scored on validation and test.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from longstream.pipelines.common import run_pipeline_cli

from .config import PRESETS


def _train(cfg: Any, out_dir: Any, resume: bool = False, preset: str | None = None,
           overwrite: bool = False) -> dict[str, Any]:
    from .train import train

    return train(cfg, out_dir=out_dir, resume=resume, preset=preset, overwrite=overwrite)


def _evaluate(checkpoint: str, data: str | None = None) -> dict[str, Any]:
    from .evaluate import evaluate

    return evaluate(checkpoint=checkpoint, data=data)


def _predict(checkpoint: str, inputs: list[str], out: str | None = None) -> Any:
    from .forecast import predict

    return predict(checkpoint=checkpoint, inputs=inputs, out=out)


def _backtest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint dir or hub name")
    p.add_argument("--data", default=None, help="CSV (default: the checkpoint's training file)")
    p.add_argument("--folds", type=int, default=5, help="number of forecast origins (default 5)")
    p.add_argument("--step", type=int, default=0, help="rows between origins (default: the horizon)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line (the default)")


def _backtest(args: argparse.Namespace) -> Any:
    from .evaluate import backtest

    return backtest(args.checkpoint, args.data, folds=args.folds, step=args.step)


def _ensemble_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", nargs="+", required=True, help="trained checkpoints (dirs or hub names)")
    p.add_argument("--out", required=True, help="output checkpoint dir")
    p.add_argument("--data", default=None, help="CSV to score on (default: the members' training file)")


def _ensemble(args: argparse.Namespace) -> Any:
    from .ensemble import make_ensemble

    return make_ensemble(list(args.members), args.out, data=args.data)


def main(argv: Sequence[str] | None = None) -> int:
    return run_pipeline_cli(
        argv,
        domain="timeseries",
        presets=PRESETS,
        train=_train,
        evaluate=_evaluate,
        predict=_predict,
        default_preset="release",
        description="Long-term forecasting (TSLib protocol on ETTh1) and forecasting of your own CSVs.",
        extra_verbs={"backtest": (_backtest_args, _backtest), "ensemble": (_ensemble_args, _ensemble)},
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
