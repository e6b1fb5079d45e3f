"""Data parallel training: 2 CPU processes under torchrun (gloo) == 1 process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longstream.pipelines.common import apply_overrides

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["--train.steps", "6", "--train.batch_size", "16", "--train.threads", "1", "--train.eval_every", "3"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_ddp_matches_single_process(tmp_path):
    # the workers import the same longstream as this process (a PYTHONPATH given to pytest comes first)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "LONGSTREAM_QUIET": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "longstream.apps.cli", "template", "train", "--preset", "tiny", "--out", str(tmp_path / "ddp"), *OVERRIDES,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # the single-process reference, in this process, same config and global batch
    from longstream.pipelines._template.config import tiny
    from longstream.pipelines._template.train import train

    cfg = apply_overrides(tiny(), OVERRIDES)
    ref_metrics = train(cfg, out_dir=tmp_path / "single", preset="tiny")

    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{k}: ddp != single (worst {worst})")
    import json

    ddp_meta = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert ddp_meta["training"] == {"world_size": 2, "backend": "gloo"}  # really ran as 2 processes
    assert json.loads((tmp_path / "single" / "config.json").read_text())["training"]["world_size"] == 1
    ddp_metrics = ddp_meta["metrics"]
    assert ddp_metrics["steps"] == ref_metrics["steps"] == 6
    assert abs(ddp_metrics["loss"] - ref_metrics["loss"]) < 1e-4
    print(f"max |ddp - single| over all weights: {worst:.3g}")
