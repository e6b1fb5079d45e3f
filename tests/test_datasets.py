"""Dataset registry: every dataset of ../shared/data is registered and verifies; missing data is explained."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from longstream.pipelines import datasets as ds
from longstream.pipelines.common import UserError

SHARED = Path(os.environ.get("LONGSTREAM_DATA", ""))
HAVE_DATA = (SHARED / "SHA256SUMS").exists()


def test_registry_fields_complete():
    for name, d in ds.DATASETS.items():
        assert d.name == name
        for attr in ("description", "path", "source", "licence", "citation", "loader"):
            assert getattr(d, attr), (name, attr)
        assert d.files or d.manifest, name
        for rel, sha in d.files.items():
            assert len(sha) == 64 and not rel.startswith("/") and ".." not in rel


@pytest.mark.skipif(not HAVE_DATA, reason="needs ../shared/data")
def test_every_staged_file_is_registered():
    """Each data file in the staged SHA256SUMS belongs to a dataset, with the same checksum."""
    registered = {rel: sha for d in ds.DATASETS.values() for rel, sha in d.files.items()}
    for line in (SHARED / "SHA256SUMS").read_text().splitlines():
        sha, rel = line.split()
        rel = rel.removeprefix("./")
        if any(x in rel.rsplit("/", 1)[-1] for x in ("COPYRIGHT", "LICENSE", "README")):
            continue
        assert registered.get(rel) == sha, rel
    assert ds.get_dataset("fsdd").manifest is not None


@pytest.mark.skipif(not HAVE_DATA, reason="needs ../shared/data")
def test_data_root_and_verify(monkeypatch):
    monkeypatch.setenv("LONGSTREAM_DATA", str(SHARED))
    assert ds.data_root() == SHARED
    assert ds.dataset_path("ETTh1").name == "ETTh1.csv"
    assert ds.dataset_path("fashion-mnist", "t10k-labels-idx1-ubyte.gz").exists()
    assert ds.get_dataset("etth1").name == "ETTh1"  # case-insensitive lookup
    for name in ds.DATASETS:
        assert ds.verify_dataset(name, quick=True) == [], name
    assert ds.verify_dataset("ETTh1") == []
    assert ds.verify_dataset("lambda-phage") == []


def test_missing_dataset_message(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSTREAM_DATA", str(tmp_path))
    with pytest.raises(UserError) as e:
        ds.dataset_path("ETTh1")
    msg = str(e.value)
    assert "github.com/zhouhaoyi/ETDataset" in msg  # where to get it
    assert str(tmp_path / "timeseries/ett/ETTh1.csv") in msg  # where to put it
    assert "LONGSTREAM_DATA" in msg
    probs = ds.verify_dataset("fsdd")
    assert probs and "free-spoken-digit-dataset" in probs[0]
    with pytest.raises(UserError, match="unknown dataset"):
        ds.get_dataset("imagenet")
    with pytest.raises(UserError, match="escapes"):
        (tmp_path / "timeseries/ett/ETTh1.csv").parent.mkdir(parents=True)
        (tmp_path / "timeseries/ett/ETTh1.csv").write_text("date,OT\n")
        ds.dataset_path("ETTh1", "../../../etc/passwd")


def test_corrupt_file_detected(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSTREAM_DATA", str(tmp_path))
    p = tmp_path / "genomics" / "lambda_virus.fa.gz"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"not the genome")
    assert ds.dataset_path("lambda-phage") == p
    probs = ds.verify_dataset("lambda-phage")
    assert len(probs) == 1 and "sha256 mismatch" in probs[0]
    assert ds.verify_dataset("lambda-phage", quick=True) == []


def test_default_root_without_env(monkeypatch):
    monkeypatch.delenv("LONGSTREAM_DATA", raising=False)
    root = ds.data_root()
    assert root.name == "data"
