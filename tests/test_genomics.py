"""Genomics pipeline (issue 13): streamed long-input paths, batches, predict, --model.init.

Fast: tiny random models and synthetic genomes; the real-data runs are the contract tests
(``tests/test_contract.py -k genomics``) and the shipped checkpoints.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longstream.backbones.config import BackboneConfig
from longstream.encoders.dna import reverse_complement_ids
from longstream.pipelines.common import UserError
from longstream.pipelines.genomics import config as C
from longstream.pipelines.genomics import data as D
from longstream.pipelines.genomics import evaluate as E
from longstream.pipelines.genomics import model as M
from longstream.pipelines.genomics.cli import main as cli_main


def _model(preset=C.tiny, **bb) -> M.GenomicsModel:
    cfg = preset()
    for k, v in bb.items():
        setattr(cfg.backbone, k, v)
    torch.manual_seed(0)
    return M.build_model(cfg).eval()


def _ids(b: int, L: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(7, 11, (b, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_streamed_species_logits_equal_one_full_forward(pool):
    m = _model()
    m.cfg.model.pool = pool
    m.head.pool.pool = pool
    x = _ids(2, 1000)
    full = m(x)
    streamed = M.species_logits(m, x, segment=128)
    torch.testing.assert_close(streamed, full, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(full[0], full[1])  # the windows are told apart


def test_streamed_lm_nll_equals_full_forward_cross_entropy():
    m = _model(C.tiny_lm)
    x = _ids(3, 700, seed=1)
    target = 100
    got = M.lm_target_nll(m, x, target, segment=128)  # (3, 100)
    logits = m(x[:, :-1])
    want = F.cross_entropy(logits[:, -target:].transpose(1, 2), x[:, -target:], reduction="none")
    assert got.shape == (3, target)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_lm_task_refuses_a_bidirectional_backbone():
    cfg = C.tiny_lm()
    cfg.backbone.bidirectional = True
    with pytest.raises(UserError, match="causal backbone"):
        M.build_model(cfg)
    cfg = C.tiny()
    cfg.model.task = "genes"
    with pytest.raises(UserError, match="--model.task 'genes'"):
        M.build_model(cfg)


def test_cds_probs_cover_every_base_and_match_a_single_window():
    m = _model(C.tiny_cds)
    x = _ids(1, 1000, seed=2)[0]
    p = M.cds_probs(m, x, window=256, stride=100, batch=3)
    assert p.shape == (1000, 3)
    torch.testing.assert_close(p.sum(-1), torch.ones(1000))
    # one window covering the whole input = the plain forward pass
    one = M.cds_probs(m, x[:200], window=256, stride=128)
    torch.testing.assert_close(one, torch.softmax(m(x[None, :200]), -1)[0], rtol=1e-5, atol=1e-6)


def test_rc_labels_swap_strands_and_reverse():
    lab = np.array([0, 1, 1, 2, 0], dtype=np.uint8)
    assert D.rc_labels(lab).tolist() == [0, 1, 2, 2, 0]
    ids = D.encode("AACGTN")
    assert reverse_complement_ids(ids).tolist() == D.encode("NACGTT").tolist()


def _synthetic_species() -> D.SpeciesData:
    r = np.random.default_rng(0)
    genomes = {sp: {f"s{k}": [r.integers(7, 11, 5000 + 1000 * i).astype(np.uint8)] for k in range(2)}
               for i, sp in enumerate(E.SPECIES_NAMES)}
    train = [[genomes[sp]["s0"][0]] for sp in E.SPECIES_NAMES]
    return D.SpeciesData(tuple(E.SPECIES_NAMES), genomes, train, {sp: "s1" for sp in E.SPECIES_NAMES}, {})


def test_species_batches_are_a_function_of_seed_and_step():
    data, cfg = _synthetic_species(), C.release()
    x1, y1 = D.species_batch(data, cfg, 7)
    x2, y2 = D.species_batch(data, cfg, 7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = D.species_batch(data, cfg, 8)
    assert x3.shape != x1.shape or not torch.equal(x3, x1)
    lengths = {D.step_length(cfg.data, 0, s) for s in range(50)}
    assert min(lengths) >= cfg.data.train_len_min and max(lengths) <= cfg.data.train_len and len(lengths) > 3
    # every window is a slice of its species' training genome, forward or reverse-complemented
    for w, y in zip(x1.numpy().astype(np.uint8), y1.tolist()):
        g = data.train[y][0].tobytes()
        assert w.tobytes() in g or reverse_complement_ids(w).tobytes() in g


def test_step_length_log_uniform_draws_short_and_long_windows():
    from longstream.pipelines.common import UserError
    from longstream.pipelines.genomics.config import DataConfig

    dc = DataConfig(train_len=16384, train_len_min=1024, train_len_dist="log")
    lengths = np.array([D.step_length(dc, 0, s) for s in range(400)])
    assert lengths.min() >= 1024 and lengths.max() <= 16384 and (lengths % 64 == 0).all()
    # log-uniform: about half the steps below the geometric mean (4K), unlike uniform's quarter
    assert 0.4 < (lengths < 4096).mean() < 0.6 and (lengths > 8192).mean() > 0.15
    uni = np.array([D.step_length(DataConfig(train_len=16384, train_len_min=1024), 0, s) for s in range(400)])
    assert (uni < 4096).mean() < 0.3
    with pytest.raises(UserError, match="train_len_dist"):
        D.step_length(DataConfig(train_len=16384, train_len_min=1024, train_len_dist="zipf"), 0, 0)


def test_cds_batches_keep_labels_aligned_under_reverse_complement():
    r = np.random.default_rng(1)
    ids = r.integers(7, 11, 4000).astype(np.uint8)
    labels = r.integers(0, 3, 4000).astype(np.uint8)
    data = D.CdsData(None, ids, labels, 3000)
    cfg = C.tiny_cds()
    cfg.train.batch_size = 16
    x, y = D.cds_batch(data, cfg, 3)
    seen_rc = 0
    for xi, yi in zip(x.numpy().astype(np.uint8), y.numpy().astype(np.uint8)):
        s = ids.tobytes().find(xi.tobytes())
        if s >= 0 and labels[s : s + len(xi)].tobytes() == yi.tobytes():
            assert s + len(xi) <= data.split  # training windows stay left of the test region
            continue
        fx, fy = reverse_complement_ids(xi), D.rc_labels(yi)
        s = ids.tobytes().find(fx.tobytes())
        assert s >= 0 and labels[s : s + len(xi)].tobytes() == fy.tobytes()
        seen_rc += 1
    assert 0 < seen_rc < 16


@pytest.fixture
def tiny_ckpt(tmp_path):
    m = _model()
    return m.save_pretrained(tmp_path / "ck", metrics={"accuracy": 0.25})


def test_predict_fasta_gives_species_probabilities_json_and_tsv(tiny_ckpt, tmp_path, capsys):
    res = E.predict(str(tiny_ckpt), E.EXAMPLE_INPUTS)
    assert [r["record"].split("_")[0] for r in res] == list(E.SPECIES_NAMES)
    for r in res:
        assert r["length"] == 1200 and abs(sum(r["probs"].values()) - 1) < 1e-3
        assert r["species"] == max(r["probs"], key=r["probs"].get)
    out = tmp_path / "p.tsv"
    assert cli_main(["predict", "--checkpoint", str(tiny_ckpt), E.EXAMPLE_INPUTS[0], "--out", str(out),
                     "--quiet"]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].split("\t") == ["input", "record", "length", "species", *(f"p_{s}" for s in E.SPECIES_NAMES)]
    assert len(rows) == 5
    literal = E.predict(str(tiny_ckpt), ["ACGTACGTTTGACCA"])
    assert literal[0]["record"] == "input" and literal[0]["length"] == 15


def test_extreme_input_is_one_error_naming_file_and_line(tiny_ckpt, tmp_path, capsys):
    spec = E.make_extreme(E.EXAMPLE_INPUTS[0], 1e308, tmp_path)
    out = tmp_path / "o" / "r.json"
    out.parent.mkdir()
    rc = cli_main(["predict", "--checkpoint", str(tiny_ckpt), spec, "--out", str(out), "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "extreme.fasta" in err[0] and "line 84, column 1" in err[0], err
    assert not out.exists()


def test_model_init_loads_an_imported_language_model_backbone(tmp_path):
    from longstream.backbones.lm import LanguageModel

    bb = BackboneConfig(d_model=16, n_layers=1, pattern="M")
    torch.manual_seed(3)
    lm = LanguageModel(12, bb)
    lm.save_pretrained(tmp_path / "imported")
    imp = M.imported_backbone(str(tmp_path / "imported"))
    assert imp.backbone_config.d_model == 16
    m = _model()
    keys = M.init_from_imported(m, imp, "imported")
    assert "embed.weight" in keys and any(k.startswith("backbone.") for k in keys)
    sd, tensors = m.state_dict(), lm.state_dict()
    for k in keys:
        if k.startswith("backbone."):
            assert torch.equal(sd[k], tensors[k])
    assert torch.equal(sd["embed.weight"][:16], tensors["embedding.weight"][:16])
    with pytest.raises(UserError, match="no config.json"):
        M.imported_backbone(str(tmp_path))
    # one command: train a task from the imported backbone
    out = tmp_path / "ft"
    assert cli_main(["train", "--preset", "tiny", "--model.init", str(tmp_path / "imported"), "--out", str(out),
                     "--train.steps", "2", "--train.save_every", "0", "--quiet"]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["backbone"]["d_model"] == 16 and meta["config"]["model"]["init"]


def test_presets_are_distinct_tasks_and_json_round_trips(capsys):
    tasks = {name: fn().model.task for name, fn in C.PRESETS.items()}
    assert tasks == {"tiny": "species", "tiny-lm": "lm", "tiny-cds": "cds", "release": "species",
                     "release-lm": "lm", "release-cds": "cds"}
    assert C.release_cds().backbone.bidirectional and not C.release_lm().backbone.bidirectional
    assert cli_main(["train", "--preset", "release-cds", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["model"]["task"] == "cds" and printed["data"]["train_len"] == 2048


@pytest.mark.parametrize("preset", [C.tiny, C.tiny_cds])
def test_caduceus_option_is_rc_invariant_for_species_and_equivariant_for_cds(preset):
    """``--backbone.pattern BM --backbone.rc_equivariant true``: the Caduceus-PS backbone (gen-models)."""
    cfg = preset()
    cfg.backbone = BackboneConfig(d_model=16, n_layers=2, pattern="BM", mixer_kwargs={"BM": {"d_state": 4}},
                                  rc_equivariant=True)
    torch.manual_seed(0)
    m = M.build_model(cfg).eval()
    x = _ids(2, 300, seed=4)
    with torch.no_grad():
        y, y_rc = m(x), m(reverse_complement_ids(x))
    if cfg.model.task == "species":
        torch.testing.assert_close(y_rc, y, rtol=1e-4, atol=1e-5)
    else:  # positions reversed, plus <-> minus
        torch.testing.assert_close(y_rc, y.flip(1)[..., [0, 2, 1]], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(y[0], y[1])


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-lm", "tiny-cds"])
def test_tiny_lm_and_cds_train_on_real_data_and_evaluate_reproduces(preset, tmp_path, capsys):
    out = tmp_path / preset
    assert cli_main(["train", "--preset", preset, "--out", str(out), "--quiet"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    got = E.evaluate(str(out))
    keys = E.METRIC_KEYS + E.TASK_METRIC_KEYS[got["task"]]
    assert set(keys) <= set(got)
    for k in keys:
        assert got[k] == pytest.approx(trained[k], rel=1e-5, abs=1e-6) if isinstance(got[k], float) else got[k] == trained[k]


def test_lm_chunks_with_carried_state_equal_one_long_window():
    """``data.lm_train_chunks``: the chunked (truncated-BPTT) loss equals the loss of one full window."""
    from longstream.pipelines.common import DistEnv
    from longstream.pipelines.genomics.train import batch_loss

    data, cfg = _synthetic_species(), C.tiny_lm()
    cfg.data.lm_train_chunks = 3
    m = _model(C.tiny_lm)
    w = D.lm_batch(data, cfg, 5)
    assert w.shape == (cfg.train.batch_size, 3 * cfg.data.train_len + 1)
    with torch.no_grad():
        chunked = batch_loss(m, cfg, data, 5, DistEnv())
        full = F.cross_entropy(m(w[:, :-1]).transpose(1, 2), w[:, 1:])
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-5)
