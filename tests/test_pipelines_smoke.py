"""Every registered pipeline honours pipelines/CONTRACT.md (generated from the registry).

For each pipeline: all standard files import, the ``tiny`` preset
trains through the CLI into a temp dir, ``evaluate --json`` returns the documented
metric keys, ``predict`` runs on the pipeline's example inputs, ``build_demo()`` builds,
and every shipped checkpoint of the domain loads and verifies. That every preset builds
a model and runs a forward pass, and the rest of the contract (bad options exit 2, pinned
losses, bit-identical resume, recorded metrics reproduce) is ``tests/test_contract.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest

from longstream.pipelines.hub import default_hub
from longstream.pipelines.registry import PIPELINES, get_pipeline, list_pipelines

STANDARD_FILES = ("config", "data", "model", "train", "evaluate", "cli", "demo")
DOMAINS = list(PIPELINES)  # every registered one: an unimportable pipeline fails, never vanishes
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


@pytest.fixture
def trained(tiny_checkpoint):
    """The session's tiny checkpoint of a domain (tests/conftest.py)."""
    return tiny_checkpoint


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
    assert list_pipelines() == DOMAINS, f"registered but not importable: {set(DOMAINS) - set(list_pipelines())}"


@pytest.mark.parametrize("name", [e.name for e in default_hub().entries().values() if e.shipped])
def test_shipped_checkpoints_load_and_verify(name):
    hub = default_hub()
    assert hub.verify(name) == {name: []}
    domain = name.split("/")[0]
    assert domain in DOMAINS, f"{name} is shipped but pipeline {domain!r} is not registered"
    model = get_pipeline(domain, "model").from_pretrained(name)
    assert model is not None
