"""Recall suite: generators, model streaming, CLI verbs end to end on the tiny presets."""

from __future__ import annotations

import json

import pytest
import torch

from longstream.pipelines.recall import config as rc
from longstream.pipelines.recall.data import DEPTH_TASKS, KEY, QUERY, generate

torch.set_num_threads(1)


@pytest.mark.parametrize("task", rc.TASKS)
def test_generators_are_deterministic_and_well_formed(task):
    cfg = rc.DataConfig(task=task, seq_len=96, vocab_size=48 if task != "mqar" else 64, num_kv_pairs=8)
    x1, y1 = generate(cfg, 4, seed=3)
    x2, y2 = generate(cfg, 4, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == y1.shape == (4, 96)
    assert int(x1.min()) >= 0 and int(x1.max()) < cfg.vocab_size
    n_scored = (y1 != -100).sum(-1)
    assert bool((n_scored > 0).all())
    x3, _ = generate(cfg, 4, seq_len=400, seed=3)
    assert x3.shape == (4, 400)


def test_mqar_follows_zoology_layout():
    cfg = rc.DataConfig(task="mqar", seq_len=64, vocab_size=64, num_kv_pairs=4, random_non_queries=False)
    x, y = generate(cfg, 2, seed=0)
    for i in range(2):
        keys, vals = x[i, 0:8:2], x[i, 1:8:2]
        assert bool((keys < 32).all()) and bool((vals >= 32).all()) and len(set(keys.tolist())) == 4
        pos = (y[i] != -100).nonzero().squeeze(-1)
        assert len(pos) == 4
        for p in pos.tolist():  # at each scored position the input is a key; the target its value
            k = int(x[i, p])
            assert int(y[i, p]) == int(vals[keys.tolist().index(k)])


def test_passkey_depth_is_controlled_and_answer_is_the_needle():
    cfg = rc.DataConfig(task="passkey", seq_len=200, vocab_size=64, key_len=3)
    for depth in (0.0, 0.5, 1.0):
        x, y = generate(cfg, 3, depth=depth, seed=1)
        for i in range(3):
            s = int((x[i] == KEY).nonzero()[0])
            assert abs(s - depth * (200 - 3 - 4)) <= 1
            assert int(x[i, -3]) == QUERY
            assert y[i, -3:].tolist() == x[i, s + 1 : s + 4].tolist()


@pytest.mark.parametrize("task", ["multikey", "vartrack"])
def test_ruler_tasks_answer_the_queried_chain(task):
    cfg = rc.DataConfig(task=task, seq_len=128, vocab_size=64, key_len=2, n_needles=3, n_hops=3)
    x, y = generate(cfg, 3, depth=0.3, seed=2)
    for i in range(3):
        name = int(x[i, -2])  # QUERY name d1
        assert int(x[i, -3]) == QUERY
        if task == "vartrack":  # follow the chain back to the digits
            for _ in range(3):
                s = [j for j in (x[i] == KEY).nonzero().squeeze(-1).tolist() if int(x[i, j + 1]) == name][0]
                nxt = int(x[i, s + 2])
                if nxt < 13:
                    break
                name = nxt
        else:
            s = [j for j in (x[i] == KEY).nonzero().squeeze(-1).tolist() if int(x[i, j + 1]) == name][0]
        assert y[i, -2:].tolist() == x[i, s + 2 : s + 4].tolist()


def test_bad_task_settings_are_user_errors():
    from longstream.pipelines.common import UserError

    with pytest.raises(UserError, match="unknown recall task"):
        generate(rc.DataConfig(task="nope"), 1)
    with pytest.raises(UserError, match="vocab_size"):
        generate(rc.DataConfig(task="passkey", vocab_size=20), 1)
    with pytest.raises(UserError, match="depth"):
        generate(rc.DataConfig(task="passkey", vocab_size=64), 1, depth=2.0)


@pytest.mark.parametrize("preset", ["tiny", "tiny_passkey"])
def test_model_streaming_matches_full_forward_and_predict_at(preset):
    from longstream.pipelines.recall.model import build_model

    cfg = rc.PRESETS[preset]()
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    x, y = generate(cfg.data, 3, seed=0)
    with torch.no_grad():
        logits = m(x)
        preds, nbytes = m.predict_at(x, y)
    sel = y != -100
    assert torch.equal(preds[sel], logits.argmax(-1)[sel])
    assert nbytes > 0


def test_every_preset_builds():
    from longstream.pipelines.recall.data import check_config

    for name, fn in rc.PRESETS.items():
        cfg = fn()
        check_config(cfg.data)
        assert cfg.data.task in rc.TASKS, name
        if cfg.data.task in DEPTH_TASKS:
            assert cfg.eval.depths


def test_cli_train_evaluate_predict(tmp_path, capsys):
    from longstream.pipelines.recall.cli import main
    from longstream.pipelines.recall.evaluate import EXAMPLE_INPUTS, METRIC_KEYS

    out = tmp_path / "ck"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--quiet", "--train.steps", "2"]) == 0
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--json", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(METRIC_KEYS) <= set(metrics)
    assert {"acc_1x", "acc_2x", "grid"} <= set(metrics)
    assert main(["predict", "--checkpoint", str(out), *EXAMPLE_INPUTS, "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(res) == 2 and {"target", "prediction", "correct"} <= set(res[0])
    # user errors exit 2 with a message, no traceback
    assert main(["predict", "--checkpoint", str(out), "banana", "--quiet"]) == 2
    assert "LENGTH" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "x"), "--data.task", "nope", "--quiet"]) == 2


def test_lr_sweep_picks_one_of_the_rates(tmp_path):
    from longstream.pipelines.recall.train import train

    cfg = rc.tiny()
    cfg.train.lr_sweep = [1e-3, 1e-2]
    cfg.train.sweep_steps = 2
    cfg.train.steps = 2
    m = train(cfg, out_dir=tmp_path / "s", evaluate_at_end=False)
    assert m["lr"] in (1e-3, 1e-2) and set(m["lr_sweep"]) == {"0.001", "0.01"}


@pytest.mark.slow  # importing gradio takes minutes on a loaded 2-core box
def test_demo_builds_without_launching():
    pytest.importorskip("gradio")
    from longstream.pipelines.recall.demo import build_demo

    assert build_demo() is not None


def test_with_memory_swaps_the_cache_policy_keeping_weights():
    from longstream.pipelines.recall.model import build_model, with_memory

    torch.manual_seed(0)
    m = build_model(rc.tiny_passkey()).eval()
    sw = with_memory(m, "sink_window", {"sinks": 2, "window": 8})
    assert sw.cfg.model.memory == "sink_window" and m.cfg.model.memory == "retrieval"
    torch.testing.assert_close(sw.memory.attn.q.weight, m.memory.attn.q.weight)
    x, y = generate(sw.cfg.data, 2, seed=0)
    p, nbytes = sw.predict_at(x, y)
    assert p.shape == y.shape and nbytes > 0


def test_multikey_dense_queries_answer_each_named_needle():
    cfg = rc.DataConfig(task="multikey", seq_len=160, vocab_size=64, key_len=2, n_needles=4, n_queries=3)
    x, y = generate(cfg, 2, depth=0.2, seed=5)
    for i in range(2):
        qs = (x[i] == QUERY).nonzero().squeeze(-1).tolist()
        assert len(qs) == 3 and int((y[i] != -100).sum()) == 6
        for q in qs:
            name = int(x[i, q + 1])
            s = [j for j in (x[i] == KEY).nonzero().squeeze(-1).tolist() if int(x[i, j + 1]) == name][0]
            assert y[i, q + 1 : q + 3].tolist() == x[i, s + 2 : s + 4].tolist()


def test_eval_data_overrides_apply():
    from longstream.pipelines.recall.evaluate import eval_data

    cfg = rc.passkey_named_retrieval()
    d = eval_data(cfg)
    assert (d.n_needles, d.n_queries) == (1, 1) and (cfg.data.n_needles, cfg.data.n_queries) == (8, 8)


def test_curriculum_trains_short_first_and_never_stops_before_full_length(tmp_path):
    from longstream.pipelines.recall.train import train, train_data

    cfg = rc.tiny()  # seq_len 32
    cfg.train.curriculum = [[5, 24], [3, 16]]
    assert [train_data(cfg, s).seq_len for s in (0, 2, 3, 4, 5, 9)] == [16, 16, 24, 24, 32, 32]
    cfg = rc.tiny()  # the curriculum trains at 16 first
    cfg.train.curriculum, cfg.train.min_full_len_steps = [[3, 16]], 3
    cfg.train.steps, cfg.train.eval_every, cfg.train.target_accuracy = 12, 1, 0.0  # "reached" at every eval
    m = train(cfg, out_dir=tmp_path / "c", evaluate_at_end=False)
    assert m["steps"] == 6  # 3 curriculum steps + 3 at full length, then the early stop


def test_tied_embeddings_have_no_head_and_match_the_table():
    from longstream.pipelines.recall.model import build_model

    cfg = rc.tiny()
    cfg.model.tie_embeddings = True
    m = build_model(cfg).eval()
    assert m.head is None and not any(k.startswith("head.") for k in m.state_dict())
    x, y = generate(cfg.data, 2, seed=0)
    with torch.no_grad():
        h, _ = m.runner(head=False).run(x)
        sel = y != -100
        torch.testing.assert_close(m(x, y), m.norm(h[sel]) @ m.embed.weight.t())
        torch.testing.assert_close(m(x)[sel], m(x, y))


def test_curriculum_phases_override_data_fields():
    from longstream.pipelines.common import UserError
    from longstream.pipelines.recall.train import train_data

    cfg = rc.mqar_attention()
    cfg.train.curriculum = [[10, {"seq_len": 64, "num_kv_pairs": 4}], [20, 128]]
    d0, d1, d2 = train_data(cfg, 0), train_data(cfg, 15), train_data(cfg, 25)
    assert (d0.seq_len, d0.num_kv_pairs) == (64, 4) and (d1.seq_len, d1.num_kv_pairs) == (128, 16)
    assert d2 is cfg.data
    cfg.train.curriculum = [[10, {"seq_length": 64}]]
    with pytest.raises(UserError, match="unknown data fields"):
        train_data(cfg, 0)


def test_memory_reads_the_residual_stream_before_the_only_norm():
    # under a memory the backbone drops its final norm (the model norms once, before the head)
    from longstream.pipelines.recall.model import build_model

    with_mem = build_model(rc.tiny_passkey())
    assert with_mem.cfg.backbone.final_norm and not any("norm_f" in k for k in with_mem.state_dict())
    plain = build_model(rc.tiny())
    assert any("norm_f" in k for k in plain.state_dict())
    # and the read is a no-op at init: the memory model equals its backbone + head alone
    cfg = rc.tiny_passkey()
    m = build_model(cfg).eval()
    x, _ = generate(cfg.data, 2, seed=0)
    with torch.no_grad():
        ref = torch.cat([m.logits(m.backbone(m.embed(x[:, s:s + 16]))[0]) for s in range(0, x.shape[1], 16)], 1)
        torch.testing.assert_close(m(x), ref)


@pytest.mark.slow  # streams 32K-token inputs through the shipped models (~1 minute)
@pytest.mark.parametrize("name, mult, depths, floor", [
    ("attn-mqar", 1, [0.5], 0.99),
    ("hybrid-mqar", 1, [0.5], 0.99),
    ("mamba-induction", 64, [0.1, 0.9], 0.99),
    ("mamba-retrieval-passkey", 64, [0.1, 0.5, 0.9], 0.95),
])
def test_shipped_checkpoints_meet_the_acceptance_bars(name, mult, depths, floor):
    from longstream.pipelines.recall.evaluate import evaluate_model
    from longstream.pipelines.recall.model import from_pretrained

    m = from_pretrained(f"recall/{name}")
    ev = rc.EvalConfig(multipliers=[mult], depths=depths, n_per_cell=8, batch_size=8, seed=99)
    got = evaluate_model(m, ev, show_progress=False)[f"acc_{mult}x"]
    assert got >= floor, (name, got)


@pytest.mark.slow
def test_sink_window_baseline_fails_once_the_needle_leaves_its_window():
    from longstream.pipelines.recall.evaluate import accuracy_on
    from longstream.pipelines.recall.model import from_pretrained

    m = from_pretrained("recall/mamba-sinkwindow-passkey")
    x_in, y_in = generate(m.cfg.data, 8, seq_len=2048, depth=0.95, seed=5)  # needle ~100 tokens back
    x_out, y_out = generate(m.cfg.data, 8, seq_len=2048, depth=0.1, seed=5)  # ~1800 tokens back
    assert accuracy_on(m, x_in, y_in)[0] >= 0.9
    assert accuracy_on(m, x_out, y_out)[0] <= 0.2


def test_paused_run_resumes_from_disk_bit_identical(tmp_path):
    """max_steps_this_run leaves train_state.pt; a fresh call with resume=True ends with the
    uninterrupted run's weights bit for bit and the same logged losses."""
    from safetensors.torch import load_file

    from longstream.pipelines.common import UserError
    from longstream.pipelines.recall.train import train

    def cfg():
        c = rc.tiny()
        c.train.steps, c.train.save_every, c.train.eval_every = 12, 5, 4
        return c

    full = train(cfg(), out_dir=tmp_path / "full", evaluate_at_end=False)
    paused = train(cfg(), out_dir=tmp_path / "cut", evaluate_at_end=False, max_steps_this_run=7)
    assert paused["status"] == "paused" and paused["step"] == 7
    assert (tmp_path / "cut" / "train_state.pt").exists()
    resumed = train(cfg(), out_dir=tmp_path / "cut", resume=True, evaluate_at_end=False)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_loss"] == full["val_loss"] and resumed["steps"] == full["steps"] == 12

    def losses(d):
        recs = [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in recs if "loss" in r]

    assert losses("cut") == losses("full") and [s for s, _ in losses("full")] == list(range(1, 13))
    with pytest.raises(UserError, match="already finished"):
        train(cfg(), out_dir=tmp_path / "cut", resume=True, evaluate_at_end=False)
