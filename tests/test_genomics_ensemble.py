"""Species deep ensemble (``--model.members K``): member i is exactly the single run of seed
``train.seed + i``, the ensemble's probabilities are the mean of its members', and a re-run
reuses finished members. Tiny preset on the real genomes (seconds)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from longstream.pipelines.common import UserError, quiet
from longstream.pipelines.genomics import config as C
from longstream.pipelines.genomics import model as M
from longstream.pipelines.genomics import train as T


def _train(out, members: int, seed: int = 0, **kw):
    cfg = C.tiny()
    cfg.model.members, cfg.train.seed = members, seed
    torch.set_num_threads(1)
    with quiet(True):
        return T.train(cfg, out_dir=out, preset="tiny", **kw)


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ens") / "e"
    _train(out, 2)
    return out


def test_members_are_the_single_runs_of_their_seeds(ensemble_dir, tmp_path):
    ens = M.from_pretrained(ensemble_dir)
    assert ens.cfg.model.members == 2 and len(ens.members()) == 2
    assert sorted(p.name for p in T.members_dir(ensemble_dir).iterdir()) == ["seed-0", "seed-1"]
    _train(tmp_path / "single1", 1, seed=1)
    single = M.from_pretrained(tmp_path / "single1").state_dict()
    got = ens.members()[1].state_dict()
    assert single.keys() == got.keys()
    assert all(torch.equal(single[k], got[k]) for k in single), "member 1 differs from the seed-1 single run"
    s0 = M.from_pretrained(T.members_dir(ensemble_dir) / "seed-0").state_dict()
    assert not all(torch.equal(s0[k], single[k]) for k in s0), "seeds 0 and 1 trained identical models"


def test_ensemble_probabilities_are_the_mean_of_the_members(ensemble_dir):
    ens = M.from_pretrained(ensemble_dir).eval()
    ids = torch.randint(7, 11, (3, 600), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p = torch.softmax(M.species_logits(ens, ids, segment=256), -1)
        parts = [torch.softmax(M.species_logits(M.from_pretrained(T.members_dir(ensemble_dir) / f"seed-{s}"), ids,
                                                segment=256), -1) for s in (0, 1)]
        full = torch.softmax(ens(ids), -1)  # one forward per member, no streaming
    want = (parts[0] + parts[1]) / 2
    assert torch.allclose(p, want, atol=1e-5)
    assert torch.allclose(full, want, atol=1e-4)
    assert not torch.allclose(parts[0], parts[1], atol=1e-3), "members agree exactly: no ensemble to test"
    assert math.isclose(float(p.sum(-1).mean()), 1.0, rel_tol=1e-5)


def test_rerun_reuses_finished_members_and_refuses_a_foreign_member(ensemble_dir, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(T.members_dir(ensemble_dir), T.members_dir(out))
    before = {p: p.stat().st_mtime_ns for p in T.members_dir(out).rglob("model.safetensors")}
    res = _train(out, 2)
    assert {p: p.stat().st_mtime_ns for p in before} == before, "a finished member was retrained"
    recorded = json.loads((ensemble_dir / "config.json").read_text())["metrics"]
    assert res["accuracy_by_length"] == recorded["accuracy_by_length"]  # the same members, the same ensemble
    with pytest.raises(UserError, match="holds a finished run"):
        _train(out, 2)
    other = tmp_path / "foreign"
    shutil.copytree(T.members_dir(ensemble_dir), T.members_dir(other))
    cfg = C.tiny()
    cfg.model.members, cfg.train.lr = 2, 1e-3  # members on disk were trained at the preset's lr
    with pytest.raises(UserError, match="another config"), quiet(True):
        T.train(cfg, out_dir=other, preset="tiny")


def test_members_option_is_species_only():
    cfg = C.tiny_lm()
    cfg.model.members = 2
    with pytest.raises(UserError, match="--model.members"):
        M.build_model(cfg)
    cfg = C.tiny()
    cfg.model.members = 0
    with pytest.raises(UserError, match="--model.members"):
        M.build_model(cfg)
