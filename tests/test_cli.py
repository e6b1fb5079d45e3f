"""The ``longstream`` command line: list, hub, data, pipeline verbs, exit codes, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longstream.apps.cli import main

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


def test_list(capsys):
    rc, out, _ = _run(capsys, "list")
    assert rc == 0
    for section in ("pipelines:", "backbones", "memories", "pretrained models"):
        assert section in out
    assert "template" in out
    rc, out, _ = _run(capsys, "list", "--json")
    inv = _last_json(out)
    assert rc == 0 and {"pipelines", "backbones", "memories", "models"} <= set(inv)
    assert any(p["name"] == "template" and p["available"] for p in inv["pipelines"])


def test_hub_list_json_and_verify(capsys):
    rc, out, _ = _run(capsys, "hub", "list", "--json")
    assert rc == 0
    models = _last_json(out)
    assert isinstance(models, list)
    for m in models:
        assert {"name", "domain", "task", "metrics"} <= set(m) and m["name"].startswith(m["domain"] + "/")
    assert "template/sine-attn" in {m["name"] for m in models}
    rc, out, _ = _run(capsys, "hub", "verify")
    assert rc == 0, out
    rc, out, _ = _run(capsys, "hub", "info", "template/sine-attn", "--json")
    assert rc == 0 and _last_json(out)["domain"] == "template"
    rc, _, err = _run(capsys, "hub", "info", "../../etc/passwd")
    assert rc == 2 and err.startswith("error:")
    rc, _, err = _run(capsys, "hub", "download", "template/does-not-exist")
    assert rc == 2 and "unknown model" in err


def test_data_commands(capsys, tmp_path, monkeypatch):
    rc, out, _ = _run(capsys, "data", "list", "--json")
    assert rc == 0 and {d["name"] for d in _last_json(out)["datasets"]} >= {"ETTh1", "fsdd", "fashion-mnist"}
    if (Path(os.environ["LONGSTREAM_DATA"]) / "SHA256SUMS").exists():
        rc, out, _ = _run(capsys, "data", "verify", "ETTh1", "lambda-phage", "deepmimic-motions")
        assert rc == 0, out
        rc, out, _ = _run(capsys, "data", "path", "ETTh1")
        assert rc == 0 and out.strip().endswith("ETTh1.csv")
    monkeypatch.setenv("LONGSTREAM_DATA", str(tmp_path))
    rc, out, err = _run(capsys, "data", "verify", "ETTh1")
    assert rc == 2 and "FAILED" in out and "ETDataset" in out
    rc, _, err = _run(capsys, "data", "path", "ETTh1")
    assert rc == 2 and "put it at" in err


def test_template_train_evaluate_predict(capsys, tmp_path):
    out_dir = tmp_path / "run"
    rc, out, err = _run(capsys, "template", "train", "--preset", "tiny", "--out", str(out_dir),
                        "--train.steps", "4", "--quiet")
    assert rc == 0, err
    assert _last_json(out)["steps"] == 4
    assert (out_dir / "model.safetensors").exists() and not (out_dir / "train_state.pt").exists()
    rc, out, _ = _run(capsys, "template", "evaluate", "--checkpoint", str(out_dir), "--json")
    metrics = _last_json(out)
    assert rc == 0 and {"accuracy", "loss", "n"} <= set(metrics)
    rc, out, _ = _run(capsys, "template", "predict", "--checkpoint", str(out_dir), "gen:1", "0,1,0,-1,0,1",
                      "--out", str(tmp_path / "pred.json"))
    assert rc == 0 and len(_last_json(out)) == 2
    assert json.loads((tmp_path / "pred.json").read_text())[0]["input"] == "gen:1"
    # evaluate on a user file
    from longstream.pipelines._template.config import tiny
    from longstream.pipelines._template.data import make_split, save_csv

    x, y = make_split(tiny().data, "val")
    save_csv(tmp_path / "val.csv", x[:10], y[:10])
    rc, out, _ = _run(capsys, "template", "evaluate", "--checkpoint", str(out_dir), "--data",
                      str(tmp_path / "val.csv"), "--json")
    assert rc == 0 and _last_json(out)["n"] == 10
    rc, out, _ = _run(capsys, "template", "train", "--preset", "tiny", "--print-config", "--backbone.d_model", "8")
    assert rc == 0 and _last_json(out)["backbone"]["d_model"] == 8


def test_shipped_checkpoint_evaluates(capsys):
    rc, out, _ = _run(capsys, "template", "evaluate", "--checkpoint", "template/sine-attn", "--json")
    assert rc == 0
    m = _last_json(out)
    meta = json.loads((REPO / "checkpoints/template/sine-attn/config.json").read_text())
    assert m["accuracy"] == pytest.approx(meta["metrics"]["accuracy"])  # reproduces the recorded metrics
    assert m["accuracy"] > 0.9
    rc, out, _ = _run(capsys, "template", "predict", "--checkpoint", "sine-attn", "gen:2")
    assert rc == 0 and _last_json(out)[0]["label"] == 2


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["nope"], "unknown command or pipeline"),
        (["template"], ""),
        (["template", "fly"], "invalid choice"),
        (["template", "train", "--train.nope", "1"], "unknown option --train.nope"),
        (["template", "train", "--preset", "huge"], "unknown preset"),
        (["template", "train", "--train.steps", "many"], "expects int"),
        (["template", "train", "--backbone.pattern", "Q", "--out", "/tmp/never-written"], "bad backbone"),
        (["template", "evaluate"], "--checkpoint"),
        (["template", "evaluate", "--checkpoint", "/no/such/dir"], "does not exist"),
        (["template", "evaluate", "--checkpoint", "template/unknown"], "unknown model"),
        (["template", "predict", "--checkpoint", "template/sine-attn", "gen:x"], "gen:<class>"),
        (["template", "predict", "--checkpoint", "template/sine-attn", "1,2,abc"], "not a list of numbers"),
        (["template", "evaluate", "--checkpoint", "template/sine-attn", "--data", "/no/file.csv"], "does not exist"),
        (["hub", "verify", "nope/nope"], "unknown model"),
        (["data", "path", "imagenet"], "unknown dataset"),
        (["bench", "nope"], "unknown benchmark"),
    ],
)
def test_bad_usage_exits_2_with_one_line(capsys, argv, needle):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert "Traceback" not in err
    if needle:
        assert needle in err
        assert len(err.strip().splitlines()) == 1


def test_internal_failure_exits_1(capsys, monkeypatch):
    import longstream.pipelines._template.evaluate as ev

    def boom(**kw):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(ev, "evaluate", boom)
    rc, _, err = _run(capsys, "template", "evaluate", "--checkpoint", "template/sine-attn")
    assert rc == 1 and "Traceback" in err and "simulated bug" in err


def test_resume_continues_exactly(tmp_path, capsys):
    from longstream.pipelines._template.config import tiny
    from longstream.pipelines._template.train import train

    cfg = tiny()
    train(cfg, out_dir=tmp_path / "full")
    paused = train(cfg, out_dir=tmp_path / "cut", max_steps_this_run=4)  # stop halfway (as if killed)
    assert paused["status"] == "paused" and (tmp_path / "cut" / "train_state.pt").exists()
    rc, out, err = _run(capsys, "template", "train", "--out", str(tmp_path / "cut"), "--resume")
    assert rc == 0, err
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    rc, _, err = _run(capsys, "template", "train", "--out", str(tmp_path / "cut"), "--resume")
    assert rc == 2 and "already finished" in err


def test_console_script_subprocess():
    """A fresh interpreter: importing the apps loads no gradio, and a bad input exits 2 with one line."""
    code = (
        "import sys, longstream.apps.cli, longstream.apps.gradio_app\n"
        "assert 'gradio' not in sys.modules, 'gradio imported at import time'\n"
        "sys.exit(longstream.apps.cli.main(['template', 'evaluate', '--checkpoint', 'nowhere/x/y', '--json']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_gradio_app_has_one_tab_per_pipeline():
    pytest.importorskip("gradio")
    from longstream.apps.gradio_app import build_app
    from longstream.pipelines.registry import list_pipelines

    app = build_app(only=["template"])
    ids = [getattr(b, "id", None) for b in app.blocks.values() if type(b).__name__ == "Tab"]
    assert ids == ["template"]
    names = {getattr(f, "api_name", None) for f in app.fns.values()}
    assert "template_classify" in names
    from longstream.pipelines.common import UserError

    with pytest.raises(UserError, match="unknown or unavailable"):
        build_app(only=["nope"])
    assert "template" in list_pipelines()


@pytest.mark.parametrize("domain", ["genomics", "speech", "vision"])
def test_predict_defaults_to_the_shipped_checkpoint(domain, capsys):
    """``predict`` without ``--checkpoint`` runs the pipeline's shipped model (and says which in --help);
    a pipeline without a default still requires it."""
    from longstream.pipelines.hub import resolve

    assert main([domain, "predict", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    name = out.split("default: the shipped ", 1)[1].split(")", 1)[0]
    assert name.startswith(f"{domain}/"), name
    assert (resolve(name) / "model.safetensors").is_file()  # a shipped checkpoint, found offline


def test_predict_without_a_default_checkpoint_requires_one(capsys):
    assert main(["template", "predict", "0.5"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
