"""User errors exit 2 with one ``error:`` line, for every registered pipeline (generated from the registry).

A pipeline is covered the day its line is added to ``pipelines/registry.py``:

(a) an edited checkpoint ``config.json`` (unknown layer pattern, changed ``d_model``, a value
    of the wrong type) -> one line naming the checkpoint dir and "re-download ... or retrain";
(b) a binary or non-UTF-8 file given as a predict input -> one line naming the file;
(c) ``predict --out`` that is a directory, has a missing parent or cannot be written -> one
    line, nothing written; a good ``--out`` writes exactly that file (plus only the files the
    result names), replacing an existing one;
(d) ``train --train.lr nan`` / ``-1`` / ``inf``, ``--train.batch_size 0`` and a non-finite value
    for any float field -> one line, before anything is written.

The checkpoint is the pipeline's smallest shipped one that has a backbone section (or a
``tiny`` run trained once here when it ships none).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from longstream.pipelines.common import REPO_ROOT, config_to_dict
from longstream.pipelines.registry import PIPELINES, get_pipeline

DOMAINS = list(PIPELINES)


def _cli(domain: str, argv: list[str], capsys) -> tuple[int, list[str], str]:
    rc = get_pipeline(domain, "cli").main(argv)
    cap = capsys.readouterr()
    return rc, [ln for ln in cap.err.splitlines() if ln.strip()], cap.out


def _one_error(domain: str, rc: int, err: list[str], *needles: str) -> str:
    assert rc == 2, f"{domain}: want exit 2 (UserError), got {rc}; stderr:\n" + "\n".join(err)
    assert len(err) == 1 and err[0].startswith("error:"), f"{domain}: want one 'error:' line, got {err}"
    for n in needles:
        assert n in err[0], f"{domain}: the message must name {n!r}: {err[0]}"
    return err[0]


def _shipped(domain: str) -> Path | None:
    """The smallest shipped checkpoint of ``domain`` whose config has a backbone section."""
    best = None
    for cfg in sorted((REPO_ROOT / "checkpoints" / domain).glob("*/config.json")):
        meta = json.loads(cfg.read_text())
        if not isinstance((meta.get("config") or {}).get("backbone"), dict) or not isinstance(meta.get("backbone"),
                                                                                             dict):
            continue
        size = sum(f.stat().st_size for f in cfg.parent.glob("*.safetensors"))
        if best is None or size < best[0]:
            best = (size, cfg.parent)
    return None if best is None else best[1]


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(domain: str) -> Path:
        if domain not in cache:
            src = _shipped(domain)
            if src is None:  # no shipped checkpoint yet: train the tiny preset once
                src = tmp_path_factory.mktemp(f"{domain}-tiny") / "run"
                # its "saved DIR" line and metrics must not land in the first test's captured output
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    rc = get_pipeline(domain, "cli").main(["train", "--preset", "tiny", "--out", str(src), "--quiet"])
                assert rc == 0, f"{domain}: training the tiny preset failed ({rc})"
            cache[domain] = src
        return cache[domain]

    return get


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("metrics.jsonl", "train_state.pt"))
    return dst


def _example(domain: str) -> str:
    return get_pipeline(domain, "evaluate").EXAMPLE_INPUTS[0]


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


# ---------------------------------------------------------------------------- (a) edited config.json
def _set_pattern(cfg: dict) -> None:
    cfg["backbone"]["pattern"] = "Q"


def _double_d_model(cfg: dict) -> None:
    cfg["backbone"]["d_model"] = int(cfg["backbone"]["d_model"]) * 2


def _wrong_type(cfg: dict) -> None:
    cfg["backbone"]["n_layers"] = "two"


def _backbone_not_a_section(cfg: dict) -> None:
    cfg["backbone"] = "no_such_backbone"


EDITS = {"bad-pattern": (_set_pattern, "Q"), "changed-d_model": (_double_d_model, "shape"),
         "wrong-type": (_wrong_type, "n_layers"), "backbone-name": (_backbone_not_a_section, "backbone")}


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("domain", DOMAINS)
def test_edited_checkpoint_config_is_one_error_naming_the_dir(domain, edit, base_ckpt, tmp_path, capsys,
                                                              monkeypatch):
    ck = _copy(base_ckpt(domain), tmp_path / "edited")
    meta = json.loads((ck / "config.json").read_text())
    fn, needle = EDITS[edit]
    fn(meta["config"])
    (ck / "config.json").write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pred.out"
    before = _files(tmp_path)
    rc, err, _ = _cli(domain, ["predict", "--checkpoint", str(ck), _example(domain), "--out", str(out), "--quiet"],
                      capsys)
    msg = _one_error(domain, rc, err, needle, "edited", "retrain")
    assert "re-download" in msg, msg
    assert not out.exists() and _files(tmp_path) == before, f"{domain}: wrote {_files(tmp_path) - before}"


# ---------------------------------------------------------------------------- (b) binary / non-UTF-8 input
BAD_FILES = {"binary": b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 4,
             "latin1": "date,v\n2020-01-01,caf\xe9\n".encode("latin-1")}


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("domain", DOMAINS)
def test_binary_or_non_utf8_predict_input_is_one_error(domain, kind, base_ckpt, tmp_path, capsys, monkeypatch):
    bad = tmp_path / f"input-{kind}.csv"
    bad.write_bytes(BAD_FILES[kind])
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    rc, err, _ = _cli(domain, ["predict", "--checkpoint", str(base_ckpt(domain)), str(bad), "--quiet"], capsys)
    _one_error(domain, rc, err, bad.name)
    assert _files(tmp_path) == before, f"{domain}: a failed predict wrote {_files(tmp_path) - before}"


# ---------------------------------------------------------------------------- (c) --out
def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return d / "result.out"
    if Path("/sys").is_dir():  # root ignores permission bits; sysfs refuses new files even to root
        return Path("/sys/longstream-test-result.out")
    pytest.skip("no unwritable location for root on this system")


@pytest.mark.parametrize("case", ["directory", "missing-parent", "unwritable", "extensionless-existing"])
@pytest.mark.parametrize("domain", DOMAINS)
def test_bad_out_is_one_error_and_nothing_is_written(domain, case, base_ckpt, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if case == "directory":
        out = work / "existing"
        out.mkdir()
        needle = "directory"
    elif case == "missing-parent":
        out = work / "no" / "such" / "result.out"
        needle = "does not exist"
    elif case == "extensionless-existing":  # like `--out /etc/passwd`: never replaced
        out = work / "passwd"
        out.write_text("root:x:0:0:root:/root:/bin/bash\n")
        needle = "without an extension"
    else:
        out = _unwritable(tmp_path)
        needle = "cannot write"
    before = _files(work)
    original = out.read_bytes() if out.is_file() else None
    try:
        rc, err, _ = _cli(domain, ["predict", "--checkpoint", str(base_ckpt(domain)), _example(domain),
                                   "--out", str(out), "--quiet"], capsys)
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o700)
    _one_error(domain, rc, err, needle, str(out.name))
    assert _files(work) == before, f"{domain}: a refused --out wrote {_files(work) - before}"
    assert not (work / "no").exists(), f"{domain}: a missing parent was created"
    if original is not None:
        assert out.read_bytes() == original, f"{domain}: an existing extension-less file was replaced"
    if case == "unwritable" and (tmp_path / "ro").exists():
        assert not any((tmp_path / "ro").iterdir())


@pytest.mark.parametrize("domain", DOMAINS)
def test_out_names_exactly_the_file_written(domain, base_ckpt, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = work / "result.out"  # an existing result file (a suffix no pipeline uses): replaced, nothing appended
    out.write_text("old contents\n")
    rc, err, stdout = _cli(domain, ["predict", "--checkpoint", str(base_ckpt(domain)), _example(domain),
                                    "--out", str(out), "--quiet"], capsys)
    assert rc == 0, f"{domain}: predict --out failed ({rc}): {err}"
    assert out.is_file() and out.read_text() != "old contents\n", f"{domain}: --out {out} was not (re)written"
    printed = stdout.strip().splitlines()[-1]
    json.loads(printed)
    extra = _files(work) - {"result.out"}
    for name in extra:  # any further file must be one the result names
        assert name in printed, f"{domain}: wrote {name} beside --out without naming it in the result"
    assert not any((work / f"result.out{s}").exists() or (work / f"result{s}").exists() for s in (".json", ".csv")), \
        f"{domain}: a suffix was appended to --out ({sorted(_files(work))})"


# ---------------------------------------------------------------------------- (d) train overrides
TRAIN_CASES = {"lr-nan": ("--train.lr", "nan", "train.lr"), "lr-negative": ("--train.lr", "-1", "train.lr"),
               "lr-inf": ("--train.lr", "inf", "train.lr"), "batch-0": ("--train.batch_size", "0", "batch_size")}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
@pytest.mark.parametrize("domain", DOMAINS)
def test_bad_train_value_is_refused_before_anything_is_written(domain, case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flag, value, needle = TRAIN_CASES[case]
    out = tmp_path / "run"
    rc, err, _ = _cli(domain, ["train", "--preset", "tiny", "--out", str(out), flag, value, "--quiet"], capsys)
    _one_error(domain, rc, err, needle, value)
    assert not out.exists(), f"{domain}: a refused train wrote {out}"
    assert not any(tmp_path.iterdir()), f"{domain}: a refused train wrote {list(tmp_path.iterdir())}"


def _float_fields(cfg, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out += _float_fields(v, f"{prefix}{f.name}.")
        elif isinstance(v, float):
            out.append(prefix + f.name)
    return out


@pytest.mark.parametrize("domain", DOMAINS)
def test_non_finite_override_is_refused_for_every_float_field(domain, capsys):
    cfg = get_pipeline(domain, "config").PRESETS["tiny"]()
    fields = _float_fields(cfg)
    assert fields, f"{domain}: the tiny preset has no float field to check"
    for key in fields:
        for value in ("nan", "inf", "-Infinity", "1e999"):
            rc, err, out = _cli(domain, ["train", "--preset", "tiny", f"--{key}", value, "--print-config"], capsys)
            _one_error(domain, rc, err, f"--{key}")
            assert not out.strip(), f"{domain}: --{key} {value} printed a config"
    assert config_to_dict(cfg) == config_to_dict(get_pipeline(domain, "config").PRESETS["tiny"]())
