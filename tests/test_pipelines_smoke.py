"""Every registered pipeline honours pipelines/CONTRACT.md (generated from the registry).

For each pipeline: all standard files import, every preset builds, the ``tiny`` preset
trains through the CLI into a temp dir, ``evaluate --json`` returns the documented
metric keys, ``predict`` runs on the pipeline's example inputs, ``build_demo()`` builds,
and every shipped checkpoint of the domain loads and verifies.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
from pathlib import Path

import pytest

from longstream.pipelines.hub import default_hub
from longstream.pipelines.registry import PIPELINES, get_pipeline, list_pipelines

STANDARD_FILES = ("config", "data", "model", "train", "evaluate", "cli", "demo")
DOMAINS = list_pipelines()
HAVE_GRADIO = importlib.util.find_spec("gradio") is not None


def _pkg_dir(domain: str) -> Path:
    return Path(get_pipeline(domain).__file__).parent


@pytest.mark.parametrize("domain", DOMAINS)
def test_standard_files(domain):
    for part in STANDARD_FILES:
        get_pipeline(domain, part)
    assert (_pkg_dir(domain) / "README.md").is_file(), (
        f"pipelines/{domain}/README.md is missing (task, data, metric keys, results, checkpoints: "
        "see pipelines/CONTRACT.md)"
    )
    cli = get_pipeline(domain, "cli")
    assert callable(cli.main)
    ev = get_pipeline(domain, "evaluate")
    for name in ("evaluate", "predict", "METRIC_KEYS", "EXAMPLE_INPUTS"):
        assert hasattr(ev, name), f"{domain}/evaluate.py lacks {name} (see pipelines/CONTRACT.md)"
    assert callable(get_pipeline(domain, "train").train)
    assert callable(get_pipeline(domain, "model").from_pretrained)
    assert callable(get_pipeline(domain, "demo").build_demo)


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_preset_builds(domain):
    cfg_mod = get_pipeline(domain, "config")
    presets = cfg_mod.PRESETS
    assert "tiny" in presets and len(presets) >= 2, f"{domain}: needs 'tiny' and a release preset"
    for name, fn in presets.items():
        cfg = fn()
        assert dataclasses.is_dataclass(cfg), f"{domain}:{name} is not a dataclass config"
        assert fn() is not cfg  # presets are functions returning fresh configs
        if hasattr(cfg_mod, "CONFIG_CLASS"):
            assert isinstance(cfg, cfg_mod.CONFIG_CLASS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """domain -> dir of a checkpoint trained with the tiny preset through the CLI (cached per module)."""
    cache: dict[str, Path] = {}

    def get(domain: str) -> Path:
        if domain not in cache:
            out = tmp_path_factory.mktemp(f"smoke-{domain}") / "tiny"
            rc = get_pipeline(domain, "cli").main(["train", "--preset", "tiny", "--out", str(out), "--quiet"])
            assert rc == 0, f"{domain}: tiny train failed (exit {rc})"
            assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
            cache[domain] = out
        return cache[domain]

    return get


@pytest.mark.parametrize("domain", DOMAINS)
def test_tiny_train_evaluate_json(domain, trained, capsys):
    ckpt = trained(domain)
    capsys.readouterr()
    rc = get_pipeline(domain, "cli").main(["evaluate", "--checkpoint", str(ckpt), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    metrics = json.loads(out.strip().splitlines()[-1])
    keys = get_pipeline(domain, "evaluate").METRIC_KEYS
    assert set(keys) <= set(metrics), f"{domain}: missing metric keys {set(keys) - set(metrics)}"
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["pipeline"] == domain


@pytest.mark.parametrize("domain", DOMAINS)
def test_predict_on_examples(domain, trained, capsys, tmp_path):
    ckpt = trained(domain)
    examples = list(get_pipeline(domain, "evaluate").EXAMPLE_INPUTS)
    assert examples, f"{domain}: EXAMPLE_INPUTS is empty"
    capsys.readouterr()
    rc = get_pipeline(domain, "cli").main(
        ["predict", "--checkpoint", str(ckpt), *examples[:1], "--out", str(tmp_path / "pred_out")]
    )
    assert rc == 0
    json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # JSON on the last line


@pytest.mark.skipif(not HAVE_GRADIO, reason="gradio not installed")
@pytest.mark.parametrize("domain", DOMAINS)
def test_build_demo(domain):
    import gradio as gr

    demo = get_pipeline(domain, "demo").build_demo()
    assert isinstance(demo, gr.Blocks)
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    public = [f for f in fns if getattr(f, "api_visibility", "public") == "public"]
    assert public, f"{domain}: the demo has no public event"
    for f in public:  # every user-facing event has an explicit api_name (not the function's name)
        assert f.api_name and f.api_name != f.name, (
            f"{domain}: event {f.name!r} needs api_name=... (got {f.api_name!r})"
        )


def test_registry_lists_only_importable():
    assert "template" in DOMAINS
    assert set(DOMAINS) <= set(PIPELINES)


@pytest.mark.parametrize("name", [e.name for e in default_hub().entries().values() if e.shipped])
def test_shipped_checkpoints_load_and_verify(name):
    hub = default_hub()
    assert hub.verify(name) == {name: []}
    domain = name.split("/")[0]
    if domain not in DOMAINS:
        pytest.skip(f"pipeline {domain} not available")
    model = get_pipeline(domain, "model").from_pretrained(name)
    assert model is not None
