"""backbones/io.py: atomic files and directories, the one manifest schema, tied weights, state files, hub kinds."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from torch import nn

from longstream.backbones import LanguageModel, create_backbone
from longstream.backbones.io import (
    CheckpointError,
    CheckpointNotFoundError,
    atomic_dir,
    atomic_write,
    atomic_write_text,
    load_tensor_file,
    load_weights_dir,
    migrate_manifest,
    replace_dir,
    save_tensor_file,
    save_weights_dir,
    sha256_file,
    verify_weights_dir,
)
from longstream.memory import MemoryStateError, create_memory
from longstream.pipelines import common
from longstream.pipelines.hub import Hub


def _flip(path, offset=-1):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 3)
        self.head = nn.Linear(3, 7, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.tensor(2.5))


# ---------------------------------------------------------------------- atomic files / dirs
def test_atomic_write_leaves_nothing_on_error(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(p) as f:
            f.write(b"half-written")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind
    new = tmp_path / "sub" / "g.txt"
    with pytest.raises(RuntimeError):
        with atomic_write(new, "w") as f:
            f.write("x")
            raise RuntimeError("boom")
    assert list((tmp_path / "sub").iterdir()) == []
    with atomic_write(new, "w") as f:
        f.write("done")
    assert new.read_text() == "done" and stat.S_IMODE(new.stat().st_mode) == 0o644


def test_directory_swap(tmp_path):
    d = tmp_path / "ck"
    with atomic_dir(d) as t:
        (t / "a.txt").write_text("v1")
    assert sorted(p.name for p in d.iterdir()) == ["a.txt"]
    # a failing rewrite leaves the old version complete and no temp dir
    with pytest.raises(ValueError):
        with atomic_dir(d) as t:
            (t / "a.txt").write_text("v2-partial")
            raise ValueError("crash")
    assert (d / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    # keep_existing carries the files the new version does not write (logs, the old a.txt)
    (d / "metrics.jsonl").write_text("{}\n")
    with atomic_dir(d, keep_existing=True) as t:
        (t / "b.txt").write_text("v2")
    assert sorted(p.name for p in d.iterdir()) == ["a.txt", "b.txt", "metrics.jsonl"]
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    # replace_dir on its own: the new directory takes the place of the old one
    new = tmp_path / "new"
    new.mkdir()
    (new / "c.txt").write_text("v3")
    replace_dir(new, d)
    assert sorted(p.name for p in d.iterdir()) == ["c.txt"] and not new.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


# ---------------------------------------------------------------------- manifest
def test_manifest_schema_and_flipped_byte_refused(tmp_path):
    sd = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(4)}
    d = save_weights_dir(tmp_path / "ck", sd, {"model_type": "x"}, card="# card\n", extra_files={"vocab.txt": "a\nb\n"})
    cfg = json.loads((d / "config.json").read_text())
    assert set(cfg["files"]) == {"model.safetensors", "vocab.txt"}  # the card is not in the manifest
    for name, rec in cfg["files"].items():
        assert rec == {"sha256": sha256_file(d / name), "size": (d / name).stat().st_size}
    assert cfg["tied_weights"] == {} and cfg["model_type"] == "x"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in d.iterdir())
    _, back = load_weights_dir(d)
    assert torch.equal(back["w"], sd["w"]) and torch.equal(back["b"], sd["b"])

    _flip(d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt: sha256 .* re-save or re-download"):
        load_weights_dir(d)
    assert len(verify_weights_dir(d)) == 1 and "model.safetensors" in verify_weights_dir(d)[0]
    _, unverified = load_weights_dir(d, verify=False)  # explicitly unverified still reads
    assert not all(torch.equal(unverified[k], sd[k]) for k in sd)  # the flipped byte is really in the data
    _flip(d / "model.safetensors")  # flip it back
    assert verify_weights_dir(d) == []
    _flip(d / "vocab.txt", 0)
    with pytest.raises(CheckpointError, match=r"vocab\.txt: corrupt"):
        load_weights_dir(d)
    (d / "vocab.txt").write_text("a\n")
    with pytest.raises(CheckpointError, match=r"vocab\.txt: size 2 != 4"):
        load_weights_dir(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="model.safetensors is missing"):
        load_weights_dir(d)


def test_tied_weights_round_trip(tmp_path):
    m = _Tied()
    d = save_weights_dir(tmp_path / "ck", m.state_dict(), {})
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["tied_weights"] == {"head.weight": "emb.weight"}
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["emb.weight", "scale"]  # stored once
    _, sd = load_weights_dir(d)
    assert sd["head.weight"] is sd["emb.weight"]
    m2 = _Tied()
    m2.load_state_dict(sd)
    assert torch.equal(m2.emb.weight, m.emb.weight) and m2.head.weight is m2.emb.weight
    assert float(m2.scale) == 2.5
    # a view that is not an identical alias is copied, not tied
    base = torch.arange(6.0)
    d2 = save_weights_dir(tmp_path / "ck2", {"all": base, "half": base[:3]}, {})
    assert json.loads((d2 / "config.json").read_text())["tied_weights"] == {}
    _, sd2 = load_weights_dir(d2)
    assert torch.equal(sd2["half"], torch.arange(3.0)) and torch.equal(sd2["all"], base)
    # a tie to a tensor the file does not hold is a clear error
    cfg["tied_weights"] = {"head.weight": "nowhere"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="ties 'head.weight' to 'nowhere'"):
        load_weights_dir(d)


def test_migrate_old_manifest_in_place(tmp_path):
    d = save_weights_dir(tmp_path / "ck", {"w": torch.randn(3)}, {"model_type": "longstream_backbone"})
    cfg = json.loads((d / "config.json").read_text())
    digest = cfg["files"]["model.safetensors"]["sha256"]
    old = {k: v for k, v in cfg.items() if k not in ("files", "tied_weights")}
    old["sha256"] = {"model.safetensors": digest}
    (d / "config.json").write_text(json.dumps(old))
    with pytest.raises(CheckpointError, match="old-style manifest.*migrate_manifest"):
        load_weights_dir(d)
    weights_before = (d / "model.safetensors").read_bytes()
    assert migrate_manifest(d) is True and migrate_manifest(d) is False
    new = json.loads((d / "config.json").read_text())
    assert "sha256" not in new and new["files"]["model.safetensors"]["sha256"] == digest
    assert (d / "model.safetensors").read_bytes() == weights_before  # weights never rewritten
    load_weights_dir(d)
    old["sha256"] = {"model.safetensors": "0" * 64}
    (d / "config.json").write_text(json.dumps(old))
    with pytest.raises(CheckpointError, match="cannot migrate"):
        migrate_manifest(d)


def test_shipped_manifests_use_the_one_schema():
    hub = Hub()
    shipped = [e for e in hub.entries().values() if e.shipped]
    assert shipped, "no shipped checkpoints found"
    for e in shipped:
        cfg = json.loads((e.shipped / "config.json").read_text())
        assert "sha256" not in cfg and "tied_weights" in cfg, e.name
        assert set(cfg["files"]["model.safetensors"]) == {"sha256", "size"}, e.name


# ---------------------------------------------------------------------- single-file states
def test_state_file_round_trip_and_digest(tmp_path):
    tensors = {"a": torch.randn(2, 3), "h": torch.randn(4).to(torch.bfloat16), "flag": torch.tensor([True, False]),
               "n": torch.tensor(3), "empty": torch.zeros(0, 2)}
    p = save_tensor_file(tmp_path / "s.safetensors", tensors, {"k": "v"})
    back, meta = load_tensor_file(p)
    assert meta == {"k": "v"}
    assert all(torch.equal(back[k], t) and back[k].dtype == t.dtype for k, t in tensors.items())
    _flip(p)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_tensor_file(p)
    save_tensor_file(p, tensors, {"k": "v"})
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "plain.safetensors"), metadata={"k": "v"})  # no digest
    with pytest.raises(CheckpointError, match="no integrity record"):
        load_tensor_file(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError):
        load_tensor_file(tmp_path / "missing.safetensors")


def test_memory_state_goes_through_io(tmp_path):
    mem = create_memory("sink_window", d_model=8, sinks=2, window=5)
    st = mem.init_state(2)
    seg = torch.randn(2, 5, 8)
    _, st = mem(seg, st)
    p = tmp_path / "m.safetensors"
    mem.save_state(st, p)
    assert [q.name for q in tmp_path.iterdir()] == ["m.safetensors"]
    tensors, _ = load_tensor_file(p)  # the same reader as every other state file
    back = mem.load_state(p)
    for f in type(st).__dataclass_fields__:
        a, b = getattr(st, f), getattr(back, f)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert tensors
    _flip(p)
    with pytest.raises(MemoryStateError, match="corrupt"):
        mem.load_state(p)


# ---------------------------------------------------------------------- hub kinds
def test_hub_lists_and_verifies_every_kind(tmp_path):
    ck, cache = tmp_path / "checkpoints", tmp_path / "cache"
    lm = LanguageModel(11, "test_mamba")
    lm.save_pretrained(ck / "lm" / "tiny-lm", model_card="# tiny\n")
    create_backbone("test_mamba").save_pretrained(cache / "checkpoints" / "bb" / "tiny-bb")
    common.save_pretrained(nn.Linear(2, 2), {"w": 1}, ck / "demo" / "tiny", pipeline="demo", task="t")
    hub = Hub(checkpoints_dir=ck, registry_files=[], cache_dir=cache, offline=True)
    ents = hub.entries()
    assert {n: e.kind for n, e in ents.items()} == {"lm/tiny-lm": "lm", "bb/tiny-bb": "backbone", "demo/tiny": "pipeline"}
    assert ents["bb/tiny-bb"].cached is not None and ents["lm/tiny-lm"].shipped is not None
    assert hub.verify() == {"bb/tiny-bb": [], "demo/tiny": [], "lm/tiny-lm": []}
    assert hub.resolve("bb/tiny-bb") == cache / "checkpoints" / "bb" / "tiny-bb"
    again = LanguageModel.from_pretrained(hub.resolve("lm/tiny-lm"))
    ids = torch.randint(0, 11, (1, 5))
    assert torch.equal(again(ids)[0], lm(ids)[0])
    _flip(ck / "lm" / "tiny-lm" / "model.safetensors")
    probs = hub.verify("lm/tiny-lm")["lm/tiny-lm"]
    assert len(probs) == 1 and "corrupt" in probs[0]
    with pytest.raises(common.UserError, match="not a longstream pipeline checkpoint.*'longstream_lm'"):
        common.load_pretrained(ck / "lm" / "tiny-lm")


def test_hub_imports_first_in_a_fresh_process():
    """hub -> common leaf modules, common.checkpoint -> hub (lazily): importing hub first must work."""
    import subprocess
    import sys

    code = "import longstream.pipelines.hub as h; print(h.resolve.__name__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "resolve", r.stderr[-2000:]


# ---------------------------------------------------------------------- integrity (issue 11)
def test_same_weights_save_to_identical_bytes(tmp_path):
    sd = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(3)}
    meta = {f"k{i}": str(i) for i in range(8)}  # many keys: a hash-map order would differ between saves
    digests = set()
    for i in range(4):
        d = save_weights_dir(tmp_path / f"ck{i}", dict(reversed(list(sd.items()))) if i % 2 else sd,
                             {"model_type": "x"}, metadata=meta)
        digests.add(sha256_file(d / "model.safetensors"))
    assert len(digests) == 1, "identical weights and metadata must give identical model.safetensors bytes"
    _, got = load_weights_dir(tmp_path / "ck0")
    assert torch.equal(got["b.weight"], sd["b.weight"])


def test_checkpoint_without_file_hashes_is_refused_until_trusted(tmp_path):
    d = save_weights_dir(tmp_path / "ck", {"w": torch.ones(2)}, {"model_type": "x"}, extra_files={"v.txt": "a"})
    cfg = json.loads((d / "config.json").read_text())
    for broken in ({k: v for k, v in cfg.items() if k != "files"},
                   {**cfg, "files": {**cfg["files"], "v.txt": {"size": 1}}}):
        (d / "config.json").write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=rf"checkpoint {d}: config.json records no sha256 for .*"
                                                  r"cannot be verified; re-download .*migrate_manifest\("
                                                  r".*trust_files=True\)"):
            load_weights_dir(d)
        assert verify_weights_dir(d)
    assert migrate_manifest(d, trust_files=True)
    assert not verify_weights_dir(d)
    assert set(json.loads((d / "config.json").read_text())["files"]) == {"model.safetensors", "v.txt"}
    _, sd = load_weights_dir(d)
    assert torch.equal(sd["w"], torch.ones(2))


def test_non_finite_config_values_are_never_written(tmp_path):
    from longstream.backbones.io import NonFiniteValueError

    d = save_weights_dir(tmp_path / "ck", {"w": torch.ones(2)}, {"metrics": {"mse": 1.0}})
    before = (d / "config.json").read_bytes()
    with pytest.raises(NonFiniteValueError, match=r"non-finite values \(metrics.mse nan, metrics.grid\[1\] inf\)"):
        save_weights_dir(d, {"w": torch.zeros(2)}, {"metrics": {"mse": float("nan"), "grid": [1.0, float("inf")]}})
    assert (d / "config.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
