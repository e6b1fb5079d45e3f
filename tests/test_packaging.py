"""Packaging: one import namespace, and a built wheel that works outside the repository.

- Every module is ``longstream.<folder>...``; no bare top-level package ships.
- The wheel (built from a copy of the tracked files, installed with ``pip install --no-deps
  --target``) holds ``longstream/__init__.py`` (the Python API, from ``apps/api/``), the shipped
  checkpoints and the demo inputs; run from a temp dir with only the installed copy importable,
  ``longstream list`` names every shipped model, ``evaluate`` of a shipped checkpoint reproduces
  its recorded metrics, and, for every registered pipeline (generated from the registry),
  ``longstream.load`` loads each shipped checkpoint, ``predict`` runs on ``EXAMPLE_INPUTS`` and
  ``build_demo()`` finds its demo inputs and models (no empty dropdown, every named model known).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from longstream.pipelines.registry import PIPELINES

REPO = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("apps", "backbones", "encoders", "memory", "pipelines")
DATA_DIRS = ("checkpoints", "demos")  # shipped in the wheel as longstream/checkpoints, longstream/demos
SOURCE_DIRS = (*TOP_LEVEL, "tests", "benchmarks", "demos")


def _py_files():
    for d in SOURCE_DIRS:
        yield from sorted((REPO / d).rglob("*.py"))


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    return [rel for rel in out.decode().split("\0") if rel and (REPO / rel).is_file()]


def _pyproject_version() -> str:
    m = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert m, "pyproject.toml has no version line"
    return m.group(1)


def test_no_bare_top_level_imports():
    """``import backbones`` would work from the repository root only, and load a second copy."""
    bad = []
    for f in _py_files():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad += [f"{f.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in TOP_LEVEL]
    assert not bad, "import through longstream.<pkg>:\n" + "\n".join(bad)


def test_modules_resolve_under_the_namespace():
    import longstream
    import longstream.backbones as bb
    import longstream.pipelines.registry as reg

    assert Path(bb.__file__).resolve().parent == REPO / "backbones"
    assert reg.__name__ == "longstream.pipelines.registry"
    # the facade is a real package __init__ (apps/api/__init__.py), not an implicit namespace
    assert longstream.__file__ and Path(longstream.__file__).resolve() == REPO / "apps" / "api" / "__init__.py", (
        "longstream/__init__.py must be apps/api/__init__.py (a worktree's .ns/longstream needs the "
        "__init__.py symlink; an editable install needs `make setup` after setup.py changed)"
    )
    with pytest.raises(ImportError, match="use `import longstream`"):
        import longstream.apps.api  # noqa: F401  (one module, one name)


def test_load_dispatches_on_the_checkpoint_kind(tmp_path, monkeypatch):
    """``longstream.load``: pipeline checkpoints through the registry, LM and backbone dirs, clear errors."""
    import torch

    import longstream
    from longstream.backbones.lm import LanguageModel
    from longstream.backbones.stack import SequenceBackbone
    from longstream.pipelines.common import UserError
    from longstream.pipelines.registry import get_pipeline

    monkeypatch.setenv("LONGSTREAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LONGSTREAM_OFFLINE", "1")
    torch.manual_seed(0)
    LanguageModel(11, "test_mamba").save_pretrained(tmp_path / "lm")
    bb = longstream.create_backbone("test_mamba")
    bb.save_pretrained(tmp_path / "bb")
    lm = longstream.load(tmp_path / "lm")
    assert isinstance(lm, LanguageModel) and not lm.training
    got = longstream.load(str(tmp_path / "bb"))
    assert isinstance(got, SequenceBackbone) and not got.training
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), bb.state_dict().values()))
    model = longstream.load("template/sine-attn")
    assert type(model) is type(get_pipeline("template", "model").from_pretrained("template/sine-attn"))

    with pytest.raises(UserError, match="unknown model 'template/nope'"):
        longstream.load("template/nope")
    with pytest.raises(UserError, match="hf:acme/none is not imported"):
        longstream.load("hf:acme/none")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "mystery"}))
    with pytest.raises(UserError, match="not a checkpoint longstream can load"):
        longstream.load(other)
    cfg = json.loads((tmp_path / "bb" / "config.json").read_text())
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps({**cfg, "pipeline": "nosuchdomain"}))
    with pytest.raises(UserError, match="pipeline 'nosuchdomain', which this installation does not have"):
        longstream.load(alien)
    (tmp_path / "bb" / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(UserError, match="model.safetensors"):
        longstream.load(tmp_path / "bb")


# --------------------------------------------------------------------------- the wheel


def _copy_tracked(dest: Path) -> Path:
    for rel in _tracked():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tracked files (an in-tree build leaves build/ behind)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_tracked(tmp / "src")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = tmp.glob("longstream-*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a fresh target directory (``pip install --no-deps --target``)."""
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return target


@pytest.fixture(scope="module")
def outside(site, tmp_path_factory) -> dict:
    """cwd and environment of a user outside the repository: only the installed copy importable."""
    cwd = tmp_path_factory.mktemp("user")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LONGSTREAM_DATA", "LONGSTREAM_HUB_REGISTRY")}
    env.update(PYTHONPATH=str(site), LONGSTREAM_OFFLINE="1", LONGSTREAM_HOME=str(cwd / "home"),
               LONGSTREAM_QUIET="1", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    return {"cwd": cwd, "env": env, "site": site}


def _run(outside: dict, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=outside["cwd"], env=outside["env"], capture_output=True, text=True,
                          timeout=timeout)


def _cli(outside: dict, *args: str) -> subprocess.CompletedProcess:
    script = outside["site"] / "bin" / "longstream"  # the console script pip wrote
    return _run(outside, sys.executable, str(script), *args)


def test_wheel_installs_only_the_namespace(wheel):
    """``longstream/<folder>/...`` + the API + the shipped data, no bare top-level package."""
    names = zipfile.ZipFile(wheel).namelist()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert roots == {"longstream"}, roots
    for t in TOP_LEVEL:
        assert f"longstream/{t}/__init__.py" in names
    assert "longstream/__init__.py" in names  # apps/api/__init__.py, the Python API
    assert not [n for n in names if n.startswith("longstream/apps/api/")], "the API ships twice"
    for src in ("scan_cpu.cpp", "decode_cpu.cpp", "avx2_math.h"):  # the kernel sources build from the install
        assert f"longstream/backbones/ops/csrc/{src}" in names, src
    assert "longstream/pipelines/CONTRACT.md" in names
    data = [rel for rel in _tracked() if rel.split("/")[0] in DATA_DIRS]
    assert any(rel.endswith("model.safetensors") for rel in data) and any(rel.startswith("demos/") for rel in data)
    missing = [rel for rel in data if f"longstream/{rel}" not in names]
    assert not missing, f"shipped files left out of the wheel: {missing[:5]}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_installed_cli_lists_and_evaluates_shipped_models(outside):
    """`longstream list` names every shipped model; `evaluate --json` reproduces a recorded metric."""
    r = _cli(outside, "list", "--json")
    assert r.returncode == 0, r.stderr
    listed = {m["name"] for m in json.loads(r.stdout.strip().splitlines()[-1])["models"] if m["shipped"]}
    ckpts = outside["site"] / "longstream" / "checkpoints"
    shipped = {f"{c.parent.parent.name}/{c.parent.name}" for c in ckpts.glob("*/*/config.json")}
    repo = {f"{c.parent.parent.name}/{c.parent.name}" for c in (REPO / "checkpoints").glob("*/*/config.json")}
    assert repo and shipped == repo, f"installed checkpoints differ from the repository's: {shipped ^ repo}"
    assert listed == shipped, f"`longstream list` misses {sorted(shipped - listed)}"

    name = "template/sine-attn"  # the fastest shipped evaluation
    r = _cli(outside, "template", "evaluate", "--checkpoint", name, "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"non-finite {c}"))
    recorded = json.loads((ckpts / name / "config.json").read_text())["metrics"]
    for key in ("accuracy", "macro_f1", "mcc", "n"):
        assert got[key] == pytest.approx(recorded[key], rel=1e-6), key


_PROBE = r'''
import importlib.util, json, sys
from pathlib import Path

import longstream

lazy = "torch" not in sys.modules  # `import longstream` stays cheap: torch comes with the first real use
version = getattr(longstream, "__version__", None)
create_backbone = getattr(getattr(longstream, "create_backbone", None), "__module__", None)
from longstream.pipelines.hub import default_hub
from longstream.pipelines.registry import PIPELINES, get_pipeline

site, out_dir = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
entries = default_hub().entries()
try:
    import gradio as gr
except ImportError:
    gr = None


def attempt(fn, *args):
    """``fn(*args)``, or the error as a string: one broken part must not hide the others' results."""
    try:
        return fn(*args)
    except BaseException as e:  # noqa: BLE001 - SystemExit from a CLI too
        return f"error: {type(e).__name__}: {e}"


def load_name(name):
    return type(longstream.load(name)).__name__


def demo_report(domain):
    """Dropdowns with no choices (a demo input or the hub not found) and model names the hub lacks."""
    demo = get_pipeline(domain, "demo").build_demo()
    empty, unknown, values = [], [], []
    for b in demo.blocks.values():
        if isinstance(b, gr.Dropdown):
            choices = [c[1] if isinstance(c, (list, tuple)) else c for c in (b.choices or [])]
            if not choices:
                empty.append(b.label)
            values += [b.value, *choices]
        if isinstance(b, gr.Dataset):
            values += [v for row in (b.samples or []) for v in row]
    for v in values:
        if isinstance(v, str) and v.split("/")[0] in PIPELINES and v.count("/") == 1 and v not in entries:
            unknown.append(v)
    return {"empty_dropdowns": empty, "unknown_models": sorted(set(unknown))}


report = {"api_file": longstream.__file__, "bare": importlib.util.find_spec("backbones") is not None,
          "lazy": lazy, "version": version, "create_backbone": create_backbone}
for domain in PIPELINES:
    rec = report[domain] = {}
    shipped = sorted(n for n, e in entries.items() if e.domain == domain and e.shipped)
    rec["shipped"] = {n: str(entries[n].shipped) for n in shipped}
    rec["loaded"] = {n: attempt(load_name, n) for n in shipped}
    examples = list(get_pipeline(domain, "evaluate").EXAMPLE_INPUTS)
    rec["example_files"] = {x: Path(x).is_file() for x in examples if "/" in x or "\\" in x}
    (out_dir / domain).mkdir(parents=True)
    if shipped:
        rec["predict_rc"] = attempt(get_pipeline(domain, "cli").main, [
            "predict", "--checkpoint", shipped[0], *examples[:1], "--out", str(out_dir / domain / "pred"), "--quiet"])
    rec["demo"] = attempt(demo_report, domain) if gr is not None else None
report["foreign_modules"] = sorted(
    n for n, m in list(sys.modules.items())
    if n.split(".")[0] == "longstream" and getattr(m, "__file__", None)
    and not Path(m.__file__).resolve().is_relative_to(site))
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def probe(outside) -> dict:
    """One process in the installed copy that loads, predicts and builds the demo of every pipeline."""
    script = outside["cwd"] / "probe.py"
    script.write_text(_PROBE)
    r = _run(outside, sys.executable, str(script), str(outside["site"]), str(outside["cwd"] / "out"), timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_installed_copy_imports_only_itself(probe, outside):
    """The API is the wheel's ``longstream/__init__.py``, cheap to import; nothing comes from the repo."""
    assert probe["api_file"], "the installed longstream has no __init__.py (an implicit namespace package)"
    assert Path(probe["api_file"]).resolve() == (outside["site"] / "longstream" / "__init__.py").resolve()
    assert probe["lazy"], "`import longstream` imported torch"
    assert probe["version"] == _pyproject_version() and probe["create_backbone"] == "longstream.backbones.stack"
    assert not probe["bare"], "a bare `backbones` package is importable"
    assert not probe["foreign_modules"], f"modules loaded from outside the wheel: {probe['foreign_modules'][:5]}"


@pytest.mark.parametrize("domain", list(PIPELINES))
def test_installed_pipeline_finds_its_models_and_demo_inputs(domain, probe, outside):
    rec = probe[domain]
    root = (outside["site"] / "longstream" / "checkpoints").resolve()
    repo = sorted(f"{domain}/{c.parent.name}" for c in (REPO / "checkpoints" / domain).glob("*/config.json"))
    assert sorted(rec["shipped"]) == repo, f"{domain}: the installed hub lists {sorted(rec['shipped'])}, not {repo}"
    assert all(Path(p).resolve().is_relative_to(root) for p in rec["shipped"].values()), rec["shipped"]
    failed = {n: v for n, v in rec["loaded"].items() if v.startswith("error:")}
    assert not failed, f"{domain}: longstream.load failed in the installed copy: {failed}"
    for x, ok in rec["example_files"].items():
        assert ok and Path(x).resolve().is_relative_to(outside["site"].resolve()), (
            f"{domain}: EXAMPLE_INPUTS {x} is not in the installed package (use paths.DEMOS_DIR)")
    if not repo:
        pytest.skip(f"{domain} ships no checkpoint: predict and the demo's model were not tried")
    assert rec["predict_rc"] == 0, f"{domain}: predict on EXAMPLE_INPUTS failed in the installed copy"
    assert list((outside["cwd"] / "out" / domain).iterdir()), f"{domain}: predict --out wrote nothing"
    if rec["demo"] is None:
        pytest.skip("gradio not installed")
    assert rec["demo"] == {"empty_dropdowns": [], "unknown_models": []}, f"{domain}: {rec['demo']}"


def test_editable_install_maps_the_api_and_the_data(tmp_path):
    """``pip install -e .`` (``make setup``): ``longstream`` is apps/api, the data dirs map to the repo."""
    src = _copy_tracked(tmp_path / "src")
    code = "import sys; from setuptools import build_meta; print(build_meta.build_editable(sys.argv[1]))"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=src, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    whl = zipfile.ZipFile(tmp_path / r.stdout.strip().splitlines()[-1])
    (finder,) = [n for n in whl.namelist() if n.endswith("_finder.py")]
    text = whl.read(finder).decode()
    mapping = ast.literal_eval(re.search(r"^MAPPING[^=]*= (\{.*?\})$", text, re.M).group(1))
    want = {"longstream": src / "apps" / "api", **{f"longstream.{d}": src / d for d in (*TOP_LEVEL, *DATA_DIRS)}}
    assert {k: Path(v) for k, v in mapping.items()} == want


def test_no_symlinks_are_tracked():
    """A symlink in the tree (a helper worktree's ``.ns`` link committed by mistake) dangles on a fresh
    clone and breaks packaging: git must track none."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=root, capture_output=True, text=True, check=True)
    links = [line.split("\t", 1)[1] for line in listing.stdout.splitlines() if line.startswith("120000 ")]
    assert links == [], f"tracked symlinks: {links}"
