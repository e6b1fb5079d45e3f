"""Where things are: the repository root, the shipped checkpoints and demo inputs, and the check that an output directory is safe to fill."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

#: The folder that holds ``pipelines/``: the repository root in a checkout (and in an editable
#: install), ``site-packages/longstream`` in an installed wheel. The wheel maps the repository's
#: ``checkpoints/`` and ``demos/`` to ``longstream/checkpoints`` and ``longstream/demos`` (setup.py),
#: so the same relative layout holds in both and the two directories below are found either way.
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
#: The shipped checkpoints (``<domain>/<name>/config.json``) and ``registry.json``; read by the hub.
CHECKPOINTS_DIR = REPO_ROOT / "checkpoints"
#: The shipped demo inputs, one folder per domain (``DEMOS_DIR / "timeseries" / "example_hourly.csv"``).
DEMOS_DIR = REPO_ROOT / "demos"


_RUN_FILES = {"model.safetensors", "config.json", "README.md", "metrics.jsonl", "train_state.pt"}
_RUN_SUFFIXES = {".pt", ".jsonl", ".json", ".log", ".png", ".csv", ".md", ".safetensors"}  # run artifacts


def check_out_dir(out: str | os.PathLike, *, strict: bool = True) -> Path:
    """Refuse an output dir that holds something other than a checkpoint / training run.

    Saving swaps the whole directory atomically, so pointing ``--out`` at a folder with
    unrelated content (``--out .``, ``--out ~``, a folder of folders) must fail before
    anything is trained or moved. ``strict`` (used before training starts) also refuses
    unknown files in a directory that is not yet a checkpoint.
    """
    p = Path(out).expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the checkpoint")
    cwd = Path.cwd().resolve()
    if p == cwd or p in cwd.parents or p == Path.home().resolve():
        raise UserError(f"--out {out} is the current directory or one of its parents; give a new sub-directory")
    if p.is_dir():
        kids = [c for c in p.iterdir() if not c.name.startswith(".")]
        names = {c.name for c in kids}
        subdirs = sorted(c.name for c in kids if c.is_dir())
        foreign = (sorted(n for n in names - _RUN_FILES if Path(n).suffix not in _RUN_SUFFIXES)
                   if (strict and "config.json" not in names) else [])
        if subdirs or foreign:
            raise UserError(
                f"--out {out} already holds other files ({', '.join((subdirs + foreign)[:3])}...); "
                "choose a new or empty directory (or an earlier checkpoint/run dir)"
            )
    return p
