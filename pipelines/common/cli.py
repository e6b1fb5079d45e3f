"""The uniform pipeline command line (``train`` / ``evaluate`` / ``predict`` + extra verbs) and its
error guard: :class:`UserError` -> one line, exit 2; anything else -> traceback, exit 1."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import apply_overrides, config_to_dict, validate_config
from .errors import UserError
from .finite import check_finite_result, dumps_strict
from .inputs import resolve_out, write_out
from .paths import check_out_dir
from .progress import quiet


def print_json(obj: Any) -> None:
    """Print ``obj`` as one strict JSON line on stdout (the machine-readable last line).

    Strict: ``allow_nan=False``, so ``NaN`` / ``Infinity`` never leave the program; a
    non-finite value here is a bug and raises :class:`~.finite.NonFiniteValueError`
    (naming its key path) before anything is printed.
    """
    print(to_json(obj), flush=True)


def to_json(obj: Any, **kwargs: Any) -> str:
    """``obj`` as strict JSON text (tensors, paths, numpy values and dataclasses converted)."""
    return dumps_strict(obj, default=_json_default, **kwargs)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return config_to_dict(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (exit 2, one line) instead of printing usage and exiting.

    Abbreviations are off, so a dotted override is never taken for a prefix of an option.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


def make_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    return _Parser(prog=prog, description=description)


def run_cli_guarded(fn: Callable[[], int | None]) -> int:
    """Run ``fn`` mapping UserError -> 2 (one line), other exceptions -> 1 (traceback)."""
    try:
        rc = fn()
        return 0 if rc is None else int(rc)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # always one line (parser messages have newlines)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` etc.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0
    except SystemExit as e:  # argparse --help
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except Exception:
        traceback.print_exc()
        print("error: internal failure (the traceback above); please report it", file=sys.stderr)
        return 1


def _signature(path: Path | None) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of ``path``, None if absent: tells whether a verb (re)wrote it."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _lazy(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function, imported on first call (keeps ``--help`` fast)."""
    if callable(fn):
        return fn
    mod, _, attr = fn.partition(":")
    if not attr:
        raise ValueError(f"lazy reference {fn!r} must look like 'package.module:function'")

    def call(*args: Any, **kwargs: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(mod), attr)(*args, **kwargs)

    return call


def run_pipeline_cli(
    argv: Sequence[str] | None,
    *,
    domain: str,
    presets: dict[str, Callable[[], Any]],
    train: Callable[..., dict[str, Any]] | str,
    evaluate: Callable[..., dict[str, Any]] | str,
    predict: Callable[..., Any] | str,
    default_preset: str = "tiny",
    default_checkpoint: str | None = None,
    description: str = "",
    extra_verbs: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], Any] | str]]
    | None = None,
) -> int:
    """The uniform pipeline command line. Returns the exit code (0 / 1 / 2).

    Verbs and the calls they make (see ``pipelines/CONTRACT.md``):

    - ``train [--preset NAME] [--out DIR] [--resume] [--quiet] [--section.field VALUE ...]``
      -> ``train(cfg, out_dir=Path, resume=bool, preset=str) -> dict`` of final metrics.
    - ``evaluate --checkpoint NAME_OR_DIR [--data PATH] [--json] [--quiet]``
      -> ``evaluate(checkpoint=str, data=str|None) -> dict[str, float]``; ``--json``
      prints one JSON object as the last line of stdout.
    - ``predict [--checkpoint NAME_OR_DIR] INPUT... [--out FILE]`` (``--checkpoint`` may be left out where
      the pipeline names a ``default_checkpoint``: its shipped model)
      -> ``predict(checkpoint=str, inputs=list[str], out=str|None) -> JSON-able``; printed
      as JSON on stdout (and written to ``--out`` by the pipeline if it makes files).
    - ``extra_verbs``: ``{"backtest": (add_arguments(parser), handler(args) -> JSON-able)}``.

    ``train`` / ``evaluate`` / ``predict`` (and extra handlers) may be given as
    ``"pipelines.<domain>.train:train"`` strings, imported only when the verb runs.
    """
    train, evaluate, predict = _lazy(train), _lazy(evaluate), _lazy(predict)
    extra_verbs = {v: (a, _lazy(h)) for v, (a, h) in (extra_verbs or {}).items()}
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"longstream {domain}"
    parser = make_parser(prog, description)
    sub = parser.add_subparsers(dest="verb", metavar="{train,evaluate,predict" + "".join(
        "," + v for v in (extra_verbs or {})) + "}")

    p_train = sub.add_parser("train", help="train a model from a preset (dotted overrides allowed)")
    p_train.add_argument("--preset", default=default_preset, help=f"one of: {', '.join(presets)}")
    p_train.add_argument("--out", default=None, help="output dir (default runs/<domain>/<preset>)")
    p_train.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p_train.add_argument("--overwrite", action="store_true", help="replace a finished run in OUT (fresh log)")
    p_train.add_argument("--quiet", action="store_true")
    p_train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    p_eval = sub.add_parser("evaluate", help="evaluate a checkpoint")
    p_eval.add_argument("--checkpoint", required=True, help="checkpoint dir or hub name")
    p_eval.add_argument("--data", default=None, help="data file/dir (default: the pipeline's dataset)")
    p_eval.add_argument("--json", action="store_true", help="print metrics as one JSON object (last line)")
    p_eval.add_argument("--quiet", action="store_true")

    p_pred = sub.add_parser("predict", help="run a checkpoint on inputs")
    if default_checkpoint:
        p_pred.add_argument("--checkpoint", default=default_checkpoint,
                            help=f"checkpoint dir or hub name (default: the shipped {default_checkpoint})")
    else:
        p_pred.add_argument("--checkpoint", required=True, help="checkpoint dir or hub name")
    p_pred.add_argument("inputs", nargs="+", metavar="INPUT")
    p_pred.add_argument("--out", default=None, metavar="FILE",
                        help="write the result to exactly this file (its folder must exist; an existing file is "
                             "replaced atomically; pipelines that write more files name them after it)")
    p_pred.add_argument("--quiet", action="store_true")

    for verb, (add_args, _) in (extra_verbs or {}).items():
        p = sub.add_parser(verb)
        add_args(p)
        if not any(a.dest == "quiet" for a in p._actions):
            p.add_argument("--quiet", action="store_true")

    def body() -> int:
        args, rest = parser.parse_known_args(argv)
        if args.verb is None:
            parser.print_help()
            return 2
        with quiet(bool(getattr(args, "quiet", False))):
            return run_verb(args, rest)

    def run_verb(args: argparse.Namespace, rest: list[str]) -> int:
        if args.verb != "train" and rest:
            raise UserError(f"{prog} {args.verb}: unrecognised arguments {' '.join(rest)}")
        if args.verb == "train":
            if args.preset not in presets:
                raise UserError(f"unknown preset {args.preset!r} for {domain}; choose from {', '.join(presets)}")
            cfg = validate_config(apply_overrides(presets[args.preset](), rest))  # before anything is written
            if args.print_config:
                print_json(config_to_dict(cfg))
                return 0
            out = Path(args.out) if args.out else Path("runs") / domain / args.preset
            check_out_dir(out, strict=not args.resume)
            metrics = train(cfg, out_dir=out, resume=args.resume, preset=args.preset, overwrite=args.overwrite)
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"saved {out}", file=sys.stderr)
                print_json(metrics or {})
            return 0
        if args.verb == "evaluate":
            metrics = check_finite_result(evaluate(checkpoint=args.checkpoint, data=args.data),
                                          what=f"{prog} evaluate metrics")
            if args.json:
                print_json(metrics)
            else:
                for k, v in metrics.items():
                    print(f"{k:>24s}  {v:.6g}" if isinstance(v, float) else f"{k:>24s}  {v}")
            return 0
        if args.verb == "predict":
            out_file = resolve_out(args.out)[0] if args.out else None  # the --out rule, before any work
            before = _signature(out_file)
            result = predict(checkpoint=args.checkpoint, inputs=list(args.inputs), out=args.out)
            if out_file is not None and result is not None and _signature(out_file) == before:
                # the pipeline wrote no file of its own: --out gets the JSON result (strict, replaced atomically)
                write_out(out_file, to_json(result) + "\n")
            print_json(result)
            return 0
        handler = (extra_verbs or {})[args.verb][1]
        result = handler(args)
        if result is not None:
            print_json(result)
        return 0

    return run_cli_guarded(body)
