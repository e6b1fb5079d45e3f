"""One import namespace: every module is ``longstream.<folder>...``; no bare top-level package ships."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("apps", "backbones", "encoders", "memory", "pipelines")
SOURCE_DIRS = (*TOP_LEVEL, "tests", "benchmarks", "demos")


def _py_files():
    for d in SOURCE_DIRS:
        yield from sorted((REPO / d).rglob("*.py"))


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
    import longstream.backbones as bb
    import longstream.pipelines.registry as reg

    assert Path(bb.__file__).resolve().parent == REPO / "backbones"
    assert reg.__name__ == "longstream.pipelines.registry"


def test_wheel_installs_only_the_namespace(tmp_path):
    """A built wheel holds ``longstream/<folder>/...`` and no bare top-level package."""
    src = tmp_path / "src"  # build from a copy of the tracked files: an in-tree build leaves build/ behind
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, timeout=600,
    )
    (whl,) = tmp_path.glob("longstream-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert roots == {"longstream"}, roots
    for t in TOP_LEVEL:
        assert f"longstream/{t}/__init__.py" in names
    assert "longstream/backbones/ops/csrc/scan_cpu.cpp" in names
    assert "longstream/pipelines/CONTRACT.md" in names
    # install it into a fresh target and import from outside the repository
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(whl)],
                   check=True, capture_output=True, timeout=600)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import longstream.backbones, longstream.apps.cli;"
            "assert longstream.backbones.__file__.startswith(sys.argv[1]), longstream.backbones.__file__;"
            "import importlib.util; assert importlib.util.find_spec('backbones') is None")
    r = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
