"""Every registered pipeline obeys pipelines/CONTRACT.md, generated from the registry.

A pipeline is covered the day its line is added to ``pipelines/registry.py``:

(a) ``longstream <p> train --backbone.pattern Q`` exits 2 with exactly one ``error:`` line;
(b) ``train --backbone.d_model 8 --print-config`` exits 0 and prints backbone.d_model 8;
(c) every preset builds (``model.build_model(cfg)``) and runs a forward pass on
    ``model.example_batch(cfg)`` with finite outputs;
(d) the tiny preset's first logged losses match ``tests/fixtures/pinned_losses.json``
    (re-pin with ``tests/pin_losses.py`` when a recipe changes on purpose);
(e) a run paused after a checkpoint (``max_steps_this_run``) and resumed from disk ends
    with weights bit-identical to an uninterrupted run, and logs the same losses;
(f) every shipped checkpoint reproduces the metrics in its ``config.json`` through
    ``evaluate.evaluate(name)`` (fast ones here, slow ones under ``-m slow``; which is
    which is the explicit, measured table below).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._pytree import tree_flatten

from longstream.backbones import BackboneConfig
from longstream.backbones.base import Backbone
from longstream.pipelines.hub import default_hub
from longstream.pipelines.registry import PIPELINES, get_pipeline
from pin_losses import N_LOSSES, REL_TOL, load_pinned, logged_losses, train_tiny  # tests/pin_losses.py

DOMAINS = list(PIPELINES)
PRESET_CASES = [
    (d, p) for d in DOMAINS for p in get_pipeline(d, "config").PRESETS  # every preset of every pipeline
]


def _entry_points():
    from longstream.apps.cli import main as app_main

    return {
        "pipeline-cli": lambda d, argv: get_pipeline(d, "cli").main(argv),
        "longstream": lambda d, argv: app_main([d, *argv]),
    }


# ---------------------------------------------------------------------------- (a), (b): the CLI
@pytest.mark.parametrize("entry", ["pipeline-cli", "longstream"])
@pytest.mark.parametrize("domain", DOMAINS)
def test_bad_backbone_pattern_exits_2_with_one_error_line(domain, entry, tmp_path, capsys):
    out = tmp_path / "run"
    rc = _entry_points()[entry](domain, ["train", "--backbone.pattern", "Q", "--out", str(out), "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2, f"{domain}: a bad --backbone.pattern must exit 2 (UserError), got {rc}; stderr:\n" + "\n".join(err)
    assert len(err) == 1 and err[0].startswith("error:"), f"{domain}: want one 'error:' line, got {err}"
    assert "Q" in err[0], f"{domain}: the message must name the bad symbol: {err[0]}"
    assert not (out / "model.safetensors").exists(), f"{domain}: a failed run left a checkpoint"


@pytest.mark.parametrize("domain", DOMAINS)
def test_backbone_d_model_override_is_accepted(domain, capsys):
    rc = get_pipeline(domain, "cli").main(["train", "--preset", "tiny", "--backbone.d_model", "8", "--print-config"])
    cap = capsys.readouterr()
    assert rc == 0, f"{domain}: --backbone.d_model 8 --print-config exited {rc}: {cap.err.strip()}"
    printed = json.loads(cap.out.strip().splitlines()[-1])
    assert printed["backbone"]["d_model"] == 8, f"{domain}: printed config has backbone {printed.get('backbone')}"
    from longstream.pipelines.common import config_to_dict

    default = config_to_dict(get_pipeline(domain, "config").PRESETS["tiny"]())
    assert default["backbone"]["d_model"] != 8  # so the override is what set it
    default["backbone"]["d_model"] = 8
    assert printed == default, f"{domain}: --backbone.d_model changed more than backbone.d_model"


# ---------------------------------------------------------------------------- (c): presets build
def _model_api(domain: str):
    model = get_pipeline(domain, "model")
    for name in ("build_model", "example_batch"):
        assert callable(getattr(model, name, None)), f"{domain}/model.py lacks {name}(cfg) (pipelines/CONTRACT.md)"
    params = list(inspect.signature(model.build_model).parameters.values())
    required = [p.name for p in params[1:] if p.default is inspect.Parameter.empty]
    assert not required, f"{domain}: build_model(cfg) must need only the config; it also needs {required}"
    return model


@pytest.mark.parametrize(("domain", "preset"), PRESET_CASES, ids=[f"{d}:{p}" for d, p in PRESET_CASES])
@torch.no_grad()
def test_every_preset_builds_and_runs_forward(domain, preset):
    cfg_mod = get_pipeline(domain, "config")
    fn = cfg_mod.PRESETS[preset]
    cfg = fn()
    assert dataclasses.is_dataclass(cfg) and fn() is not cfg, f"{domain}:{preset} must return a fresh dataclass"
    if hasattr(cfg_mod, "CONFIG_CLASS"):
        assert isinstance(cfg, cfg_mod.CONFIG_CLASS)
    assert isinstance(getattr(cfg, "backbone", None), BackboneConfig), (
        f"{domain}:{preset}: the config needs a `backbone: BackboneConfig` section (pipelines/CONTRACT.md)"
    )
    api = _model_api(domain)
    torch.manual_seed(0)
    model = api.build_model(cfg).eval()
    backbones = [m for m in model.modules() if isinstance(m, Backbone)]
    if preset == "tiny":  # the preset the overrides are tested on must use its backbone section
        assert backbones, f"{domain}:tiny: no backbone in the model"
    for bb in backbones:  # a backbone, where a preset has one, is the one its section describes
        if hasattr(bb, "d_model") and hasattr(bb, "cfg"):
            assert bb.d_model == cfg.backbone.d_model, f"{domain}:{preset}: backbone width != cfg.backbone.d_model"
    batch = api.example_batch(cfg, batch_size=3)
    assert isinstance(batch, dict) and batch, f"{domain}: example_batch must return forward()'s keyword arguments"
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            assert v.shape[0] == 3, f"{domain}: example_batch(batch_size=3)[{k!r}] has shape {tuple(v.shape)}"
    out = model(**batch)
    tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    assert tensors, f"{domain}:{preset}: the forward pass returned no floating tensor"
    for t in tensors:
        assert torch.isfinite(t).all(), f"{domain}:{preset}: non-finite output"


# ---------------------------------------------------------------------------- (d), (e): training
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """domain -> (out_dir, result) of one uninterrupted tiny run per pipeline (cached per module)."""
    cache: dict[str, tuple[Path, dict[str, Any]]] = {}

    def get(domain: str) -> tuple[Path, dict[str, Any]]:
        if domain not in cache:
            out = tmp_path_factory.mktemp(f"contract-{domain}") / "tiny"
            cache[domain] = (out, train_tiny(domain, out))
        return cache[domain]

    return get


@pytest.mark.parametrize("domain", DOMAINS)
def test_tiny_losses_match_pinned_values(domain, tiny_run):
    repin = f"python tests/pin_losses.py {domain}"
    pinned = load_pinned().get(domain)
    assert pinned, f"{domain}: no pinned losses in tests/fixtures/pinned_losses.json; run `{repin}` and commit it"
    out, _ = tiny_run(domain)
    got = logged_losses(out)[:N_LOSSES]
    want = pinned["losses"]
    assert got, f"{domain}: the tiny run logged no record with a 'loss' key in metrics.jsonl"
    assert [s for s, _ in got] == [s for s, _ in want], (
        f"{domain}: losses logged at steps {[s for s, _ in got]}, pinned at {[s for s, _ in want]}. "
        f"If the recipe changed on purpose, re-pin with `{repin}` and say so in the commit"
    )
    for (step, a), (_, b) in zip(got, want):
        assert math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-8), (
            f"{domain}: tiny loss at step {step} is {a!r}, pinned {b!r} (rel {abs(a - b) / abs(b):.2e} > {REL_TOL}). "
            f"A change to the recipe, init, data order or numerics did this. If it is on purpose, re-pin with "
            f"`{repin}` and say so in the commit; otherwise find what changed"
        )


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("domain", DOMAINS)
def test_paused_and_resumed_run_is_bit_identical(domain, tiny_run, tmp_path):
    train = get_pipeline(domain, "train").train
    assert "max_steps_this_run" in inspect.signature(train).parameters, (
        f"{domain}: train() lacks the max_steps_this_run= keyword (pipelines/CONTRACT.md)"
    )
    cfg = get_pipeline(domain, "config").PRESETS["tiny"]()
    pause_at = getattr(cfg.train, "save_every", 0) or 2
    total = getattr(cfg.train, "steps", None)
    assert total is None or pause_at < total, f"{domain}: the tiny preset must save a train state before its last step"
    out = tmp_path / "tiny"
    paused = train_tiny(domain, out, max_steps_this_run=pause_at)
    assert paused.get("status") == "paused", f"{domain}: max_steps_this_run={pause_at} returned {paused}"
    assert (out / "train_state.pt").is_file(), f"{domain}: a paused run must leave train_state.pt"
    assert not (out / "model.safetensors").exists(), f"{domain}: a paused run must not write the final checkpoint"
    train_tiny(domain, out, resume=True)

    ref_out, _ = tiny_run(domain)
    ref, got = _weights(ref_out), _weights(out)
    assert ref.keys() == got.keys()
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differ, f"{domain}: resumed weights differ from the uninterrupted run in {differ}"
    by_step = {s: v for s, v in logged_losses(out)}  # a resumed run may re-log a step; the last wins
    assert by_step == dict(logged_losses(ref_out)), f"{domain}: the resumed run logged other losses"
    assert not (out / "train_state.pt").exists(), f"{domain}: a finished run must remove train_state.pt"


# ---------------------------------------------------------------------------- (f): shipped checkpoints
#: Seconds ``evaluate(name)`` took on the 2-core dev machine (one torch thread, imports warm,
#: shared with other jobs). Over SLOW_SECONDS -> ``-m slow``. A shipped checkpoint missing here
#: fails ``test_every_shipped_checkpoint_has_a_measured_cost``: time it and add it.
EVAL_SECONDS: dict[str, float] = {
    "template/sine-attn": 0.8,
    "timeseries/etth1-cyclelinear-h96": 0.2,
    "timeseries/etth1-cyclelinear-h192": 0.4,
    "timeseries/etth1-cyclelinear-h336": 0.6,
    "timeseries/etth1-cyclelinear-h720": 1.1,
    "timeseries/etth1-ensemble-h96": 0.9,
    "timeseries/etth1-ensemble-h192": 1.0,
    "timeseries/etth1-smamba-h96": 0.5,
    "timeseries/etth1-smamba-h192": 0.7,
    "timeseries/etth1-smamba-h336": 0.9,
    "timeseries/etth1-smamba-h720": 0.8,
    "recall/mamba-mqar": 9.7,
    "vision/s4d-seqpix-fmnist": 104.4,  # measured: 10,000 test images x 784 tokens, 1 thread, idle box
    "vision/vim-fmnist": 15.0,  # 10,000 test images, 1 thread, load ~1 (36 s at load ~9)
    "genomics/mamba-lm": 35.0,  # measured when trained: 33-38 s (64 points x 4 contexts up to 64K, one thread)
    "genomics/bimamba-cds": 55.0,  # measured: 24-48 s by load (1.32 Mbp test region, 7-class model + prior fit + three ORF decodings, one thread)
    "genomics/mamba-species": 150.0,  # 3-member ensemble: 148 s at load ~2 (640 windows up to 64K x 3 members, one thread)
    "speech/mamba-digits": 3.5,  # measured: 0.9 s at load ~4, 3.4-5.2 s at load 11 on 2 cores (300 FSDD clips, one thread)
    "speech/s4d-raw-digits": 4.7,  # measured: 1.8 s at load ~4, 4.7-7.1 s at load 11 on 2 cores
    "speech/mamba-ctc-digits": 13.2,
    # leave-one-speaker-out folds: 0.5-0.8 s each, load ~2 (500 clips of the held-out speaker)
    **{f"speech/mamba-loso-{s}": 0.8 for s in ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")},  # measured at train time: 13.1-13.5 s at load ~10 (300 clips + 4 x 120 s streams)
    # induction + sink-window: 89 s together here; the split below is config.json's eval_seconds
    "recall/mamba-induction": 21.0,
    "recall/mamba-sinkwindow-passkey": 41.1,
    # not re-timed here: config.json's eval_seconds, recorded when they were trained
    "recall/hybrid-mqar": 96.3,
    "recall/mamba-retrieval-passkey": 129.7,
    "recall/attn-mqar": 205.9,
}
SLOW_SECONDS = 5.0
#: Recorded keys that describe the run, not the model: never recomputed by ``evaluate``.
NOT_REPRODUCED = ("eval_seconds", "train_seconds")
SHIPPED = sorted(n for n, e in default_hub().entries().items() if e.shipped)


def _checkpoint_cases():
    for name in SHIPPED:
        slow = EVAL_SECONDS.get(name, math.inf) > SLOW_SECONDS
        yield pytest.param(name, marks=[pytest.mark.slow] if slow else [], id=name)


def test_every_shipped_checkpoint_has_a_measured_cost():
    assert SHIPPED, "the hub lists no shipped checkpoint"
    missing = [n for n in SHIPPED if n not in EVAL_SECONDS]
    assert not missing, (
        f"shipped checkpoints {missing} have no measured evaluate() time in tests/test_contract.py "
        "EVAL_SECONDS: time `evaluate(name)` and add it (over 5 s runs under -m slow)"
    )
    gone = sorted(set(EVAL_SECONDS) - set(SHIPPED))
    assert not gone, f"EVAL_SECONDS lists checkpoints that are no longer shipped: {gone}"


def _compare(recorded: Any, got: Any, key: str, problems: list[str]) -> None:
    if isinstance(recorded, dict):
        if not isinstance(got, dict):
            problems.append(f"{key}: recorded a dict, evaluate returned {got!r}")
            return
        for k, v in recorded.items():
            if k not in got:
                problems.append(f"{key}.{k}: recorded but not returned")
            else:
                _compare(v, got[k], f"{key}.{k}", problems)
    elif isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        # recorded values may be rounded to 4 decimals: abs 6e-5 covers that
        if not (isinstance(got, (int, float)) and math.isclose(got, recorded, rel_tol=1e-5, abs_tol=6e-5)):
            problems.append(f"{key}: recorded {recorded!r}, evaluate gives {got!r}")
    elif recorded != got:
        problems.append(f"{key}: recorded {recorded!r}, evaluate gives {got!r}")


@pytest.mark.parametrize("name", list(_checkpoint_cases()))
def test_shipped_checkpoint_reproduces_its_recorded_metrics(name):
    domain = name.split("/")[0]
    meta = json.loads((default_hub().entries()[name].shipped / "config.json").read_text())
    recorded = meta.get("metrics")
    assert recorded, f"{name}: config.json records no metrics (pipelines/CONTRACT.md)"
    keys = list(get_pipeline(domain, "evaluate").METRIC_KEYS)
    absent = [k for k in keys if k not in recorded]
    assert not absent, f"{name}: config.json metrics lack the stable keys {absent}"
    got = get_pipeline(domain, "evaluate").evaluate(name)
    problems: list[str] = []
    compared = 0
    for k, v in recorded.items():
        if k in NOT_REPRODUCED or (k not in got and k not in keys):
            continue  # run facts (steps, lr, val_*) that evaluate does not recompute
        compared += 1
        if k not in got:
            problems.append(f"{k}: recorded but not returned")
        else:
            _compare(v, got[k], k, problems)
    assert compared >= len(keys)
    assert not problems, f"{name} does not reproduce its recorded metrics:\n  " + "\n  ".join(problems)
