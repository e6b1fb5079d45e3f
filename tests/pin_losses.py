"""(Re)generate ``tests/fixtures/pinned_losses.json``: the first logged training losses of
every registered pipeline's ``tiny`` preset, which ``tests/test_contract.py`` checks.

Re-pin only when a recipe changes ON PURPOSE (a new loss, schedule, init or data order),
and say so in the commit message::

    PYTHONPATH=... python tests/pin_losses.py              # every registered pipeline
    PYTHONPATH=... python tests/pin_losses.py recall       # just one (others are kept)

The run is the one the test makes: ``train(PRESETS["tiny"](), out_dir=..., preset="tiny")``
on one CPU thread; the losses are the records of ``metrics.jsonl`` with a ``loss`` key.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

PINNED = Path(__file__).resolve().parent / "fixtures" / "pinned_losses.json"
N_LOSSES = 5  # the first this many logged losses are pinned
REL_TOL = 1e-5


def logged_losses(out_dir: Path) -> list[list[float]]:
    """``[[step, loss], ...]`` of the records with a ``loss`` key in ``out_dir/metrics.jsonl``."""
    from longstream.pipelines.common import MetricLogger

    recs = MetricLogger.read(Path(out_dir) / "metrics.jsonl")
    return [[r.get("step"), float(r["loss"])] for r in recs if "loss" in r]


def train_tiny(domain: str, out_dir: Path, **kw: Any) -> dict[str, Any]:
    """Train ``domain``'s tiny preset into ``out_dir`` quietly on one thread; return train()'s result."""
    from longstream.pipelines.common import quiet
    from longstream.pipelines.registry import get_pipeline

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = get_pipeline(domain, "config").PRESETS["tiny"]()
    with quiet(True):
        return get_pipeline(domain, "train").train(cfg, out_dir=Path(out_dir), preset="tiny", **kw)


def load_pinned() -> dict[str, Any]:
    return json.loads(PINNED.read_text()) if PINNED.exists() else {}


def main(argv: list[str] | None = None) -> int:
    from longstream.pipelines.registry import PIPELINES

    domains = list(argv if argv is not None else sys.argv[1:]) or list(PIPELINES)
    unknown = sorted(set(domains) - set(PIPELINES))
    if unknown:
        print(f"error: unknown pipeline(s) {unknown}; registered: {sorted(PIPELINES)}", file=sys.stderr)
        return 2
    pinned = load_pinned()
    failed = []
    for d in domains:
        with tempfile.TemporaryDirectory() as tmp:
            train_tiny(d, Path(tmp) / "tiny")
            losses = logged_losses(Path(tmp) / "tiny")[:N_LOSSES]
        if not losses:
            print(f"error: {d}: the tiny run logged no record with a 'loss' key in metrics.jsonl "
                  "(pipelines/CONTRACT.md); not pinned", file=sys.stderr)
            failed.append(d)
            continue
        pinned[d] = {"preset": "tiny", "losses": losses}
        print(f"{d}: {losses}")
    pinned = dict(sorted(pinned.items()))
    pinned["_about"] = {"made_by": "tests/pin_losses.py", "torch": torch.__version__.split("+")[0], "rel_tol": REL_TOL}
    PINNED.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in pinned.items())  # one line per pipeline
    PINNED.write_text("{\n" + body + "\n}\n")
    print(f"wrote {PINNED}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
