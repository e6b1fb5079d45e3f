"""Nothing non-finite in, nothing non-finite out (pipelines/CONTRACT.md, "Non-finite values").

Generated from ``pipelines/registry.py`` for every pipeline, through its CLI:

(a) an example input made extreme with the pipeline's ``evaluate.make_extreme`` hook
    (``1e308``: finite in float64, infinite in float32) -> exit 2, exactly one ``error:``
    line naming the input, and no ``--out`` file left behind;
(b) other extreme values (``1e30``, ``-1e38``, ``1e20``) either work (exit 0, strict JSON,
    finite output file) or fail the same way as (a): never exit 0 with NaN / infinity,
    never a traceback;
(c) the JSON printed by every uniform verb (``train``, ``--print-config``, ``evaluate --json``,
    ``predict``) parses with a strict parser (no ``NaN`` / ``Infinity``);
(d) a non-finite metric reaching the CLI is caught (exit 1, a clear message), never printed.

Plus the shared helpers (``common/finite.py``) and the timeseries reproductions of issue 11.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from longstream.pipelines.common import (
    NonFiniteOutputError,
    NonFiniteValueError,
    UserError,
    cell_locator,
    check_finite_output,
    check_finite_result,
    dumps_strict,
    print_json,
    to_model_dtype,
)
from longstream.pipelines.hub import default_hub
from longstream.pipelines.registry import PIPELINES, get_pipeline

DOMAINS = list(PIPELINES)


def strict_loads(text: str):
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity``."""

    def refuse(name: str):
        raise AssertionError(f"non-strict JSON constant {name} in {text[:200]!r}")

    return json.loads(text, parse_constant=refuse)


def _checkpoint(domain: str, trained) -> str:
    """The pipeline's shipped default checkpoint (``evaluate.DEFAULT_CHECKPOINT``), else a tiny trained one."""
    name = getattr(get_pipeline(domain, "evaluate"), "DEFAULT_CHECKPOINT", None)
    if name and name in default_hub().entries():
        return name
    return str(trained(domain))


@pytest.fixture
def trained(tiny_checkpoint):
    """The session's tiny checkpoint of a domain (tests/conftest.py)."""
    return tiny_checkpoint


def _run(domain: str, argv: list[str], capsys) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    rc = get_pipeline(domain, "cli").main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, [ln for ln in cap.err.splitlines() if ln.strip()]


def _out_name(domain: str) -> str:
    return "forecast.csv" if domain == "timeseries" else "result.json"


def _extreme(domain: str, value: float, tmp_path: Path) -> str:
    ev = get_pipeline(domain, "evaluate")
    assert hasattr(ev, "make_extreme"), (
        f"{domain}/evaluate.py lacks make_extreme(spec, value, tmp_dir) (pipelines/CONTRACT.md, 'Non-finite values')"
    )
    return ev.make_extreme(ev.EXAMPLE_INPUTS[0], value, tmp_path)


def _assert_clean_user_error(domain: str, spec: str, rc: int, err: list[str], out_dir: Path, stdout: str) -> None:
    assert rc == 2, f"{domain}: extreme input {spec} must exit 2 (UserError), got {rc}; stderr:\n" + "\n".join(err)
    assert len(err) == 1 and err[0].startswith("error:"), f"{domain}: want one 'error:' line, got {err}"
    named = Path(spec).name if len(spec) < 256 and Path(spec).is_file() else spec
    assert named in err[0], f"{domain}: the error must name the input {named!r}: {err[0]}"
    assert "nan" not in stdout.lower() and "infinity" not in stdout.lower(), stdout
    left = sorted(p.name for p in out_dir.iterdir())
    assert not left, f"{domain}: a failed predict left files behind in --out's folder: {left}"


# ---------------------------------------------------------------------------- (a), (b)
@pytest.mark.parametrize("value", [1e308, -1e308])
@pytest.mark.parametrize("domain", DOMAINS)
def test_float32_overflow_in_predict_input_exits_2(domain, value, tmp_path, trained, capsys):
    spec = _extreme(domain, value, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["predict", "--checkpoint", _checkpoint(domain, trained), spec,
            "--out", str(out_dir / _out_name(domain)), "--quiet"]
    rc, stdout, err = _run(domain, argv, capsys)
    _assert_clean_user_error(domain, spec, rc, err, out_dir, stdout)


@pytest.mark.parametrize("value", [1e30, -1e38, 1e20])
@pytest.mark.parametrize("domain", DOMAINS)
def test_extreme_predict_input_works_or_exits_2_never_non_finite(domain, value, tmp_path, trained, capsys):
    spec = _extreme(domain, value, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / _out_name(domain)
    argv = ["predict", "--checkpoint", _checkpoint(domain, trained), spec, "--out", str(out), "--quiet"]
    rc, stdout, err = _run(domain, argv, capsys)
    if rc == 2:
        _assert_clean_user_error(domain, spec, rc, err, out_dir, stdout)
        return
    assert rc == 0, f"{domain}: extreme input {spec}: exit {rc} (want 0 or 2); stderr:\n" + "\n".join(err)
    strict_loads(stdout.strip().splitlines()[-1])
    assert out.is_file(), f"{domain}: exit 0 but no --out file"
    text = out.read_text()
    if out.suffix == ".json":
        strict_loads(text)
    else:  # CSV: every cell present and finite
        import pandas as pd

        frame = pd.read_csv(out, index_col=0)
        vals = frame.to_numpy(dtype=np.float64)
        assert vals.size and np.isfinite(vals).all(), f"{domain}: exit 0 but {out.name} has empty / non-finite cells"


# ---------------------------------------------------------------------------- (c), (d): strict JSON
@pytest.mark.parametrize("domain", DOMAINS)
def test_every_verb_prints_strict_json(domain, trained, tmp_path, capsys):
    ckpt = str(trained(domain))
    rc, out, err = _run(domain, ["train", "--print-config"], capsys)
    assert rc == 0, err
    strict_loads(out.strip().splitlines()[-1])
    rc, out, err = _run(domain, ["evaluate", "--checkpoint", ckpt, "--json", "--quiet"], capsys)
    assert rc == 0, err
    metrics = strict_loads(out.strip().splitlines()[-1])
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    ev = get_pipeline(domain, "evaluate")
    rc, out, err = _run(domain, ["predict", "--checkpoint", ckpt, *ev.EXAMPLE_INPUTS,
                                 "--out", str(tmp_path / _out_name(domain)),  # never into the cwd
                                 "--quiet"], capsys)
    assert rc == 0, err
    strict_loads(out.strip().splitlines()[-1])
    meta = (Path(ckpt) / "config.json").read_text()
    strict_loads(meta)  # the checkpoint's recorded metrics too


@pytest.mark.parametrize("domain", DOMAINS)
def test_non_finite_metric_is_caught_not_printed(domain, monkeypatch, capsys):
    ev = get_pipeline(domain, "evaluate")
    monkeypatch.setattr(ev, "evaluate", lambda checkpoint, data=None: {"mse": float("nan"), "n": 3})
    cli = get_pipeline(domain, "cli")  # binds evaluate.evaluate when main() runs
    for flags in (["--json"], []):
        capsys.readouterr()
        rc = cli.main(["evaluate", "--checkpoint", "whatever", *flags])
        cap = capsys.readouterr()
        assert rc == 1, f"{domain}: a NaN metric is a bug: exit 1, got {rc}"
        assert "nan" not in cap.out.lower(), f"{domain}: NaN printed: {cap.out!r}"
        assert "not finite" in cap.err and "$.mse" in cap.err, cap.err


# ---------------------------------------------------------------------------- shared helpers
def test_to_model_dtype_names_source_position_and_fix():
    with pytest.raises(UserError, match=r"^input '0.1,1e308': value 2 is 1e\+308, which overflows float32.*replace"):
        to_model_dtype([0.1, 1e308], source="input '0.1,1e308'")
    x = to_model_dtype([[1.0, 2.0], [3.0, 1e30]], source="f.csv", locate=cell_locator(["a", "b"]))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    with pytest.raises(UserError, match=r"^f.csv: column 'b', data row 2 \(line 3\) is 5, which is not finite in "
                                        r"float32 after scaling"):
        to_model_dtype(np.array([[0.0, 0.0], [0.0, 5e300]]), source="f.csv", raw=np.array([[0, 0], [0, 5.0]]),
                       locate=cell_locator(["a", "b"]), stage="after scaling")
    with pytest.raises(UserError, match="not a finite number"):
        to_model_dtype([float("nan")], source="x")


def test_check_finite_output_user_error_on_extreme_input_bug_on_ordinary_input():
    good = torch.ones(2, 3)
    assert check_finite_output(good, source="x", model_input=torch.ones(2, 4)) is good
    out = torch.tensor([[0.0, 1.0], [float("nan"), 0.0]])
    inp = torch.tensor([[0.5, 0.1, 0.2], [0.3, 2e30, 0.1]])
    with pytest.raises(UserError, match=r"^input 'b': the model's output is not finite because value 2 is 2e\+30"):
        check_finite_output(out, source=["input 'a'", "input 'b'"], model_input=inp)
    with pytest.raises(NonFiniteOutputError, match="ordinary, finite input input 'b'; this is a bug"):
        check_finite_output(out, source=["input 'a'", "input 'b'"], model_input=torch.ones(2, 3))
    with pytest.raises(NonFiniteOutputError):
        check_finite_output((good, torch.tensor([math.inf])), source="x")


def test_strict_json_names_the_path(capsys):
    assert dumps_strict({"a": [1.5, 2]}) == '{"a": [1.5, 2]}'
    with pytest.raises(NonFiniteValueError, match=r"\$\.metrics\.mse"):
        dumps_strict({"metrics": {"mse": float("inf")}})
    with pytest.raises(NonFiniteValueError, match=r"\$\[1\]\.probs\[0\]"):
        print_json([{}, {"probs": torch.tensor([float("nan"), 0.5])}])
    assert capsys.readouterr().out == ""
    with pytest.raises(NonFiniteValueError, match=r"\$\.x\[1\]"):
        check_finite_result({"x": np.array([0.0, np.nan])})


# ---------------------------------------------------------------------------- timeseries reproductions (issue 11)
def _ts_csv(tmp_path: Path, value: float, row: int = -1) -> Path:
    ev = get_pipeline("timeseries", "evaluate")
    src = Path(ev.EXAMPLE_INPUTS[0])
    lines = src.read_text().rstrip("\n").split("\n")
    cells = lines[row].split(",")
    cells[-1] = repr(value)
    lines[row] = ",".join(cells)
    p = tmp_path / "hourly.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("verb", ["evaluate", "backtest"])
def test_timeseries_float32_overflow_in_data_exits_2(verb, tmp_path, capsys):
    csv = _ts_csv(tmp_path, 1e308, row=5)
    rc, out, err = _run("timeseries", [verb, "--checkpoint", "timeseries/etth1-ensemble-h96", "--data", str(csv),
                                       "--json", "--quiet"], capsys)
    assert rc == 2, err
    assert err == [f"error: {csv}: column 'OT', data row 5 (line 6) is 1e+308, which overflows float32 (the model "
                   "computes in float32: |x| must be below 3.40282e+38); replace the value, or rescale the column "
                   "(e.g. to other units)"]
    assert out == ""


def test_timeseries_overflow_inside_the_model_is_a_user_error(tmp_path, capsys):
    csv = _ts_csv(tmp_path, 1e30)
    out = tmp_path / "f.csv"
    rc, stdout, err = _run("timeseries", ["predict", "--checkpoint", "timeseries/etth1-ensemble-h96", str(csv),
                                          "--out", str(out), "--quiet"], capsys)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith(f"error: {csv}: the model's forecast is not finite because column "
                                               "'OT', data row 1440 (line 1441, ")
    assert "1e+30" in err[0] and not out.exists() and not out.with_suffix(".png").exists()


def test_timeseries_train_on_overflowing_file_exits_2(tmp_path, capsys):
    csv = _ts_csv(tmp_path, 1e308, row=3)
    rc, out, err = _run("timeseries", ["train", "--preset", "tiny", "--data.path", str(csv), "--data.split", "ratio",
                                       "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert rc == 2 and len(err) == 1 and "column 'OT', data row 3 (line 4) is 1e+308" in err[0], err
    assert not (tmp_path / "run" / "model.safetensors").exists()
