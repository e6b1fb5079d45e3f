"""The ``longstream`` command line: one entry point that composes the pipelines.

::

    longstream list [--json]                         pipelines, backbones, memories, pretrained models
    longstream <domain> train|evaluate|predict ...   a pipeline's verbs (pipelines/<domain>/cli.py)
    longstream hub list [--json] | info NAME | download NAME [--force] | verify [NAME] | register DIR --url URL
                    | import hf:<repo_id>[@revision]
    longstream data list [--json] | verify [NAME ...] [--quick] | path NAME
    longstream demo [--port N] [--host H] [--share no]
    longstream bench [NAME [ARGS...]]                run benchmarks/NAME.py (no NAME: list them)

Exit codes: 0 success, 2 bad usage or bad input (one ``error:`` line, no traceback),
1 internal failure. Also runnable as ``python -m longstream.apps.cli`` (e.g. under ``torchrun``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

from longstream.pipelines.common import REPO_ROOT, UserError, make_parser, print_json, run_cli_guarded

TOP_COMMANDS = ("list", "hub", "data", "demo", "bench")


def _first_line(doc: str | None, width: int = 100) -> str:
    """The first paragraph of a docstring on one line, shortened to ``width``."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    return para if len(para) <= width else para[: width - 3].rsplit(" ", 1)[0] + "..."


# --------------------------------------------------------------------------- list


def _inventory() -> dict:
    from longstream.pipelines.hub import default_hub
    from longstream.pipelines.registry import get_pipeline, list_pipelines

    pipes = []
    for name in list_pipelines():  # every registered pipeline imports (else list_pipelines raises)
        desc = _first_line(get_pipeline(name).__doc__)
        presets = list(getattr(get_pipeline(name, "config"), "PRESETS", {}))
        pipes.append({"name": name, "available": True, "description": desc, "presets": presets})
    try:
        from longstream.backbones import list_backbones

        backbones = list_backbones()
    except Exception as e:  # pragma: no cover - defensive
        backbones = [f"(unavailable: {e})"]
    try:
        from longstream.memory import list_memories  # optional while memory/ is being written

        memories = list(list_memories())
    except Exception:
        memories = []
    models = [
        {"name": e.name, "domain": e.domain, "kind": e.kind, "task": e.task, "metrics": e.metrics,
         "shipped": e.shipped is not None}
        for e in default_hub().entries().values()
    ]
    return {"pipelines": pipes, "backbones": backbones, "memories": memories, "models": models}


def cmd_list(argv: Sequence[str]) -> int:
    p = make_parser("longstream list", "everything that is registered")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    inv = _inventory()
    if args.json:
        print_json(inv)
        return 0
    print("pipelines:")
    for d in inv["pipelines"]:
        print(f"  {d['name']:<14} {d['description']}")
        if d["presets"]:
            print(f"  {'':<14} presets: {', '.join(d['presets'])}")
    print(f"backbones ({len(inv['backbones'])}):")
    for b in inv["backbones"]:
        print(f"  {b}")
    print(f"memories ({len(inv['memories'])}):")
    for m in inv["memories"]:
        print(f"  {m}")
    print(f"pretrained models ({len(inv['models'])}):")
    for m in inv["models"]:
        print(f"  {m['name']:<32} {m['task']}  {_fmt_metrics(m['metrics'])}")
    return 0


def _fmt_metrics(m: dict) -> str:
    parts = []
    for k, v in list(m.items())[:4]:
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, (int, str)):
            parts.append(f"{k}={v}")
    return " ".join(parts)


# --------------------------------------------------------------------------- hub


def cmd_hub(argv: Sequence[str]) -> int:
    from longstream.pipelines.hub import default_hub

    p = make_parser("longstream hub", "pretrained checkpoints: list, inspect, download, verify")
    sub = p.add_subparsers(dest="cmd", metavar="{list,info,download,verify,register,import}")
    s = sub.add_parser("list", help="registered models")
    s.add_argument("--json", action="store_true")
    s.add_argument("--domain", default=None)
    s = sub.add_parser("info", help="one model's record")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("download", help="fetch into the cache (resumable, verified)")
    s.add_argument("name")
    s.add_argument("--force", action="store_true", help="re-download even if cached")
    s = sub.add_parser("verify", help="check sha256 of local copies (shipped and cached)")
    s.add_argument("name", nargs="?")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("register", help="add a remote entry for DIR to checkpoints/registry.json")
    s.add_argument("dir")
    s.add_argument("--url", required=True, help="base URL serving DIR's files")
    s.add_argument("--name", default=None, help="<domain>/<name> (default: from DIR)")
    s.add_argument("--registry", default=None, help="registry file (default checkpoints/registry.json)")
    s = sub.add_parser("import", help="download + convert hf:<repo_id>[@revision] from the Hugging Face Hub")
    s.add_argument("name", help="e.g. hf:state-spaces/mamba-130m or hf:LongSafari/hyenadna-tiny-1k-seqlen@main")
    s.add_argument("--force", action="store_true", help="re-import even if already imported")
    s.add_argument("--trust-pickle", action="store_true", help="allow Lightning weights.ckpt that pickle objects")
    args = p.parse_args(argv)
    hub = default_hub()
    if args.cmd is None:
        p.print_help()
        return 2
    if args.cmd == "list":
        ents = [e for e in hub.entries().values() if args.domain in (None, e.domain)]
        if args.json:
            print_json([
                {"name": e.name, "domain": e.domain, "kind": e.kind, "task": e.task, "metrics": e.metrics,
                 "preset": e.preset, "shipped": e.shipped is not None, "urls": e.urls}
                for e in ents
            ])
        else:
            if not ents:
                print("no pretrained models registered")
            for e in ents:
                where = "shipped" if e.shipped else ("cached" if (hub.cache_dir_for(e.name) / "config.json").exists()
                                                     else "remote")
                print(f"{e.name:<32} {e.kind:<9} {where:<8} {e.task}  {_fmt_metrics(e.metrics)}")
        return 0
    if args.cmd == "info":
        e = hub.entry(args.name)
        rec = e.to_json()
        if args.json:
            print_json(rec)
        else:
            for k, v in rec.items():
                print(f"{k:>10}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
        return 0
    if args.cmd == "download":
        e = hub.entry(args.name)
        if e.shipped is not None and not args.force:
            print(f"{e.name} is shipped with the repository: {e.shipped}")
            return 0
        path = hub.download(e.name, force=args.force)
        print(f"{e.name} -> {path}")
        return 0
    if args.cmd == "verify":
        res = hub.verify(args.name)
        bad = {n: p for n, p in res.items() if p and p != ["not downloaded"]}
        if args.json:
            print_json({"ok": not bad, "models": res})
        else:
            for n, probs in res.items():
                status = "ok" if not probs else ("not downloaded" if probs == ["not downloaded"] else "FAILED")
                print(f"{n:<32} {status}")
                for pr in probs if status == "FAILED" else []:
                    print(f"    {pr}")
            print(f"{len(res) - len(bad)}/{len(res)} verified" if res else "no models registered")
        if bad:
            raise UserError(f"{len(bad)} checkpoint(s) failed verification: {', '.join(bad)}")
        return 0
    if args.cmd == "import":
        from longstream.pipelines.hf_import import import_hf

        path = import_hf(args.name, cache=hub.cache, force=args.force, trust_pickle=args.trust_pickle,
                         offline=True if hub.offline else None)
        print(f"{args.name} -> {path}")
        return 0
    if args.cmd == "register":
        e = hub.register(args.dir, args.url, registry_file=args.registry, name=args.name)
        print(f"registered {e.name} ({len(e.files)} files) at {args.url}")
        return 0
    return 2


# --------------------------------------------------------------------------- data


def cmd_data(argv: Sequence[str]) -> int:
    from longstream.pipelines.datasets import DATASETS, data_root, dataset_path, verify_dataset

    p = make_parser("longstream data", "datasets: list, verify checksums, print paths")
    sub = p.add_subparsers(dest="cmd", metavar="{list,verify,path}")
    s = sub.add_parser("list")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("verify")
    s.add_argument("names", nargs="*")
    s.add_argument("--quick", action="store_true", help="presence only, no sha256")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("path")
    s.add_argument("name", nargs="?", help="dataset (no name: the data root)")
    args = p.parse_args(argv)
    if args.cmd is None:
        p.print_help()
        return 2
    root = data_root()
    if args.cmd == "list":
        if args.json:
            print_json({"root": str(root), "datasets": [
                {**d.to_json(), "present": (root / d.path).exists()} for d in DATASETS.values()]})
            return 0
        print(f"data root: {root}  (set LONGSTREAM_DATA to change)")
        for d in DATASETS.values():
            mark = "present" if (root / d.path).exists() else "missing"
            print(f"  {d.name:<18} {mark:<8} {d.size:<32} {d.licence}")
            print(f"  {'':<18} {d.path}  <- {d.source}")
        return 0
    if args.cmd == "path":
        print(dataset_path(args.name) if args.name else root)
        return 0
    if args.cmd == "verify":
        names = args.names or list(DATASETS)
        results = {n: verify_dataset(n, quick=args.quick) for n in names}
        if args.json:
            print_json({"root": str(root), "ok": not any(results.values()), "datasets": results})
        else:
            for n, probs in results.items():
                print(f"{n:<18} {'ok' if not probs else 'FAILED'}")
                for pr in probs[:5]:
                    print(f"    {pr}")
                if len(probs) > 5:
                    print(f"    ... and {len(probs) - 5} more")
        bad = [n for n, pr in results.items() if pr]
        if bad:
            raise UserError(f"dataset(s) {', '.join(bad)} missing or corrupt under {root} (details above)")
        return 0
    return 2


# --------------------------------------------------------------------------- demo / bench


def cmd_demo(argv: Sequence[str]) -> int:
    p = make_parser("longstream demo", "serve the Gradio app (one tab per pipeline)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--share", choices=["yes", "no"], default="no", help="gradio share link (needs internet)")
    p.add_argument("--only", default=None, help="comma-separated pipelines to include")
    args = p.parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the demo needs gradio: pip install 'longstream[demo]'") from None
    from longstream.apps.gradio_app import launch

    launch(host=args.host, port=args.port, share=args.share == "yes",
           only=args.only.split(",") if args.only else None)
    return 0


def cmd_bench(argv: Sequence[str]) -> int:
    bdir = REPO_ROOT / "benchmarks"
    scripts = sorted(p.stem for p in bdir.glob("*.py") if not p.name.startswith("_"))
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: longstream bench NAME [ARGS...]   (runs benchmarks/NAME.py; results in benchmarks/results/)")
        print("benchmarks: " + (", ".join(scripts) if scripts else "(none yet)"))
        return 0 if argv else 2
    name = argv[0].removesuffix(".py")
    if name not in scripts:
        raise UserError(f"unknown benchmark {name!r}; available: {', '.join(scripts) or 'none'}")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.call([sys.executable, str(bdir / f"{name}.py"), *argv[1:]], cwd=REPO_ROOT, env=env)


# --------------------------------------------------------------------------- main

USAGE = __doc__.split("::", 1)[1].split("Exit codes")[0].rstrip() if __doc__ else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``longstream`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage:" + USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from longstream.pipelines.common import code_version

        print(code_version())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in TOP_COMMANDS:
        fn = {"list": cmd_list, "hub": cmd_hub, "data": cmd_data, "demo": cmd_demo, "bench": cmd_bench}[cmd]
        return run_cli_guarded(lambda: fn(rest))

    def dispatch() -> int:
        from longstream.pipelines.registry import PIPELINES, get_pipeline

        if cmd not in PIPELINES:
            raise UserError(
                f"unknown command or pipeline {cmd!r}; commands: {', '.join(TOP_COMMANDS)}; "
                f"pipelines: {', '.join(PIPELINES)}"
            )
        return int(get_pipeline(cmd, "cli").main(rest) or 0)

    return run_cli_guarded(dispatch)


if __name__ == "__main__":
    sys.exit(main())
