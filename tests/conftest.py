"""Shared pytest set-up: one CPU thread, fixed seeds, and the shared data root.

``LONGSTREAM_DATA`` defaults to ``<repo>/../shared/data`` (see its README); tests read
real data only from there and never download.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LONGSTREAM_DATA", str((REPO.parent / "shared" / "data").resolve()))
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state."""
    random.seed(0)
    torch.manual_seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def restore_threads():
    """For tests that change ``torch.set_num_threads``: the count is put back afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def data_root() -> Path:
    """The shared data root (``LONGSTREAM_DATA``)."""
    return Path(os.environ["LONGSTREAM_DATA"])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``get(domain) -> Path``: the tiny preset of ``domain`` trained once per session through
    its CLI (``train --preset tiny``). Shared by every test module: treat it as read-only
    (copy it before editing its files)."""
    from longstream.pipelines.registry import get_pipeline

    cache: dict[str, Path] = {}

    def get(domain: str) -> Path:
        if domain not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{domain}") / "tiny"
            rc = get_pipeline(domain, "cli").main(["train", "--preset", "tiny", "--out", str(out), "--quiet"])
            assert rc == 0, f"{domain}: tiny train failed (exit {rc})"
            assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
            cache[domain] = out
        return cache[domain]

    return get
