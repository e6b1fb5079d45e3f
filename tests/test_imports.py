"""The import graph of the project, read from the source with ``ast`` (no imports run).

- No import cycles among the project's modules at FILE level, counting lazy
  (function-level) imports. Package ``__init__`` re-exports are set aside: an
  ``__init__``'s imports of its own package's modules are not edges, and
  ``from longstream.pkg import name`` resolves ``name`` to the module the ``__init__``
  re-exports it from. Imports under ``if TYPE_CHECKING:`` never run and are not edges.
- DESIGN's one-way layering: library code (backbones, encoders, memory) never imports
  pipelines, apps or gradio; pipelines never import apps; ``backbones/ops`` imports no
  other backbones module; heavy optional packages are imported only inside functions.
- Registries cannot shrink silently: every mixer module, memory entry and pipeline
  imports, and every ``backbones/*.py`` that calls ``register_mixer`` is listed in
  ``MIXER_MODULES``.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("apps", "backbones", "encoders", "memory", "pipelines")
ROOT = "longstream"
LIBRARY = ("backbones", "encoders", "memory")
HEAVY_OPTIONAL = ("gradio", "decord", "mamba_ssm", "causal_conv1d")


@dataclass
class Module:
    """One source file: its dotted name and the imports it makes."""

    name: str
    path: Path
    is_package: bool
    #: (target dotted name, imported names or None for ``import x``, line, at module level)
    imports: list[tuple[str, tuple[str, ...] | None, int, bool]] = field(default_factory=list)
    defined: set[str] = field(default_factory=set)  # names bound by def/class/assignment


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([ROOT, *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _parse(path: Path) -> Module:
    name = _module_name(path)
    is_pkg = path.name == "__init__.py"
    mod = Module(name, path, is_pkg)
    package = name if is_pkg else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for c in child.orelse:  # the else branch does run
                    visit_one(c, top)
                continue
            visit_one(child, top)

    def visit_one(child: ast.AST, top: bool) -> None:
        if isinstance(child, ast.Import):
            for a in child.names:
                mod.imports.append((a.name, None, child.lineno, top))
                if top:
                    mod.defined.add((a.asname or a.name).split(".")[0])
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = package.split(".")
                base = base[: len(base) - (child.level - 1)]
                target = ".".join(base + ([child.module] if child.module else []))
            else:
                target = child.module or ""
            mod.imports.append((target, tuple(a.name for a in child.names), child.lineno, top))
        elif top and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            mod.defined.add(child.name)
        elif top and isinstance(child, (ast.Assign, ast.AnnAssign)):
            for t in child.targets if isinstance(child, ast.Assign) else [child.target]:
                if isinstance(t, ast.Name):
                    mod.defined.add(t.id)
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(child, False)
        elif not isinstance(child, (ast.Import, ast.ImportFrom)):
            visit(child, top)

    visit(tree, True)
    return mod


def project_modules() -> dict[str, Module]:
    """Every ``.py`` under the five import packages, by dotted name."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            m = _parse(path)
            out[m.name] = m
    return out


def _reexport_source(mods: dict[str, Module], pkg: str, name: str, seen: frozenset = frozenset()) -> str:
    """The module that package ``pkg``'s ``__init__`` takes ``name`` from (or ``pkg`` itself)."""
    init = mods[pkg]
    if name in init.defined or pkg in seen:
        return pkg
    for target, names, _, top in init.imports:
        if top and names and name in names and target.startswith(pkg + "."):
            if target in mods and mods[target].is_package:
                return _reexport_source(mods, target, name, seen | {pkg})
            if f"{target}.{name}" in mods:
                return f"{target}.{name}"
            return target if target in mods else pkg
    return pkg


def import_edges(mods: dict[str, Module]) -> dict[str, dict[str, int]]:
    """``{importer: {imported project module: first line}}`` (re-exports resolved, see module doc)."""
    edges: dict[str, dict[str, int]] = {n: {} for n in mods}
    for m in mods.values():
        for target, names, line, _ in m.imports:
            if not target.startswith(ROOT + "."):
                continue
            targets = []
            if names is None:
                # ``import a.b.c`` binds ``a`` but runs a.b.c: the edge is to the named module
                t = target
                while t not in mods and "." in t:
                    t = t.rpartition(".")[0]
                targets.append(t)
            else:
                for n in names:
                    if f"{target}.{n}" in mods:
                        targets.append(f"{target}.{n}")  # a submodule
                    elif target in mods and mods[target].is_package:
                        targets.append(_reexport_source(mods, target, n))
                    elif target in mods:
                        targets.append(target)
            for t in targets:
                if t not in mods or t == m.name:
                    continue
                if m.is_package and t.startswith(m.name + "."):
                    continue  # an __init__ re-exporting its own package: set aside
                edges[m.name].setdefault(t, line)
    return edges


def find_cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # recursion depth <= number of modules (~100)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return sorted(out)


def _describe(cycle: list[str], edges: dict[str, dict[str, int]], mods: dict[str, Module]) -> str:
    inside = set(cycle)
    lines = [" <-> ".join(c.removeprefix(ROOT + ".") for c in cycle)]
    for a in cycle:
        for b, line in sorted(edges[a].items()):
            if b in inside:
                rel = mods[a].path.relative_to(REPO)
                lines.append(f"    {rel}:{line} imports {b.removeprefix(ROOT + '.')}")
    return "\n".join(lines)


MODS = project_modules()
EDGES = import_edges(MODS)


# ---------------------------------------------------------------------------- the detector itself
def test_detector_sees_lazy_relative_and_reexported_imports(tmp_path):
    """The detector on a synthetic graph: a lazy import closes a cycle; re-exports resolve."""
    mods = {
        "longstream.p": Module("longstream.p", tmp_path, True,
                               imports=[("longstream.p.a", ("f",), 1, True), ("longstream.p.b", ("g",), 2, True)]),
        "longstream.p.a": Module("longstream.p.a", tmp_path, False, imports=[("longstream.p", ("g",), 1, True)]),
        "longstream.p.b": Module("longstream.p.b", tmp_path, False, imports=[("longstream.p.a", ("f",), 9, False)]),
        "longstream.p.c": Module("longstream.p.c", tmp_path, False, imports=[("longstream.p", ("f",), 1, True)]),
    }
    edges = import_edges(mods)
    assert edges["longstream.p"] == {}  # the __init__'s re-exports are set aside
    assert edges["longstream.p.a"] == {"longstream.p.b": 1}  # g resolved through the __init__
    assert edges["longstream.p.b"] == {"longstream.p.a": 9}  # the lazy import counts
    assert find_cycles(edges) == [["longstream.p.a", "longstream.p.b"]]


def test_parser_resolves_relative_and_lazy_imports():
    """On the real tree: relative imports resolve, function-level imports are recorded."""
    reg = MODS["longstream.backbones.registry"]
    assert any(t == "longstream.backbones.config" and top for t, _, _, top in reg.imports)  # `from .config`
    ckpt = MODS["longstream.pipelines.common.checkpoint"]
    assert any(t == "longstream.pipelines.hub" and not top for t, _, _, top in ckpt.imports), (
        "load_pretrained's function-level `from longstream.pipelines.hub import resolve` was not seen"
    )
    assert len(MODS) > 50 and sum(map(len, EDGES.values())) > 100


# ---------------------------------------------------------------------------- the rules
def test_no_import_cycles():
    cycles = find_cycles(EDGES)
    assert not cycles, (
        f"{len(cycles)} import cycle(s) among the project's modules (lazy imports included; "
        "DESIGN.md: no two modules import each other, not even lazily). Move the shared code "
        "down a layer or into its own module:\n" + "\n".join(_describe(c, EDGES, MODS) for c in cycles)
    )


def _layer(name: str) -> str:
    return name.removeprefix(ROOT + ".").split(".")[0]


def _all_imports():
    for m in MODS.values():
        for target, names, line, top in m.imports:
            yield m, target, names, line, top


def test_one_way_layering():
    bad = []
    for m, target, _, line, _ in _all_imports():
        src = _layer(m.name)
        top_pkg = target.split(".")[0]
        dst = _layer(target) if top_pkg == ROOT else None
        rel = m.path.relative_to(REPO)
        if src in LIBRARY and (dst in ("pipelines", "apps") or top_pkg == "gradio"):
            bad.append(f"{rel}:{line} (library code) imports {target}")
        if src == "pipelines" and dst == "apps":
            bad.append(f"{rel}:{line} (a pipeline) imports {target}")
        if m.name.startswith(f"{ROOT}.backbones.ops") and target.startswith(f"{ROOT}.backbones") and not (
            target.startswith(f"{ROOT}.backbones.ops")
        ):
            bad.append(f"{rel}:{line} (backbones/ops, the bottom layer) imports {target}")
    assert not bad, "imports against DESIGN.md's one-way layering:\n  " + "\n  ".join(bad)


def test_heavy_optional_packages_are_imported_lazily():
    bad = [
        f"{m.path.relative_to(REPO)}:{line} imports {target} at module level"
        for m, target, _, line, top in _all_imports()
        if top and target.split(".")[0] in HEAVY_OPTIONAL
    ]
    assert not bad, "import these inside the function that needs them:\n  " + "\n  ".join(bad)


# ---------------------------------------------------------------------------- registries cannot shrink
def _assert_from_this_tree(file: str | None, what: str) -> None:
    """A module must come from the tree under test, not from another checkout on sys.path
    (an editable install of another worktree would hide a deleted file)."""
    assert file is not None and Path(file).resolve().is_relative_to(REPO), (
        f"{what} was imported from {file}, outside the tree under test {REPO}: it is missing here"
    )


def test_every_mixer_module_imports_and_every_registering_file_is_listed():
    from longstream.backbones.registry import MIXER_MODULES, list_mixers

    for mod in MIXER_MODULES:
        m = importlib.import_module(f"longstream.backbones.{mod}")  # a missing/broken file fails here
        _assert_from_this_tree(m.__file__, f"backbones/{mod}.py")
    registering = sorted(
        p.stem for p in (REPO / "backbones").glob("*.py")
        if "@register_mixer(" in p.read_text(encoding="utf-8") and p.stem != "registry"
    )
    unlisted = sorted(set(registering) - set(MIXER_MODULES))
    assert not unlisted, f"backbones/{unlisted} call register_mixer but are not in registry.MIXER_MODULES"
    assert registering, "no backbones/*.py registers a mixer: the scan is broken"
    # every registering file contributes at least one symbol to the registry
    owners = {cls.__module__.rpartition(".")[2] for cls in list_mixers().values()}
    assert set(registering) <= owners, f"files that register no mixer at import: {set(registering) - owners}"


#: The memory modules the project ships (an entry vanishing from the registry must fail here).
MEMORIES = ["carried_state", "compressive_bank", "memory_tokens", "retrieval", "sink_window"]


def test_every_memory_entry_imports():
    from longstream.memory.registry import _MEMORIES, get_memory_class, list_memories

    assert set(MEMORIES) <= set(list_memories()), f"memories gone from the registry: {set(MEMORIES) - set(list_memories())}"
    for name in list_memories():
        cls = get_memory_class(name)  # a missing module or class fails here
        _assert_from_this_tree(importlib.import_module(cls.__module__).__file__, _MEMORIES[name])
        mod = _MEMORIES[name].split(":")[0]
        assert cls.__module__ == mod, f"memory {name!r}: {_MEMORIES[name]} resolved to {cls.__module__}"
    files = sorted(p.stem for p in (REPO / "memory").glob("*.py") if p.stem not in ("__init__", "base", "registry", "stream"))
    listed = sorted(v.split(":")[0].rpartition(".")[2] for v in _MEMORIES.values())
    assert files == listed, f"memory/*.py files and registry entries differ: files {files}, registry {listed}"


@pytest.mark.parametrize("domain", sorted(__import__("longstream.pipelines.registry", fromlist=["x"]).PIPELINES))
def test_every_registered_pipeline_imports(domain):
    from longstream.pipelines.registry import get_pipeline, list_pipelines

    get_pipeline(domain)
    assert domain in list_pipelines()
