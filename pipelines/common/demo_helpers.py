"""Gradio helpers for every pipeline's ``demo.py``: readable errors, cleared outputs, numeric
widgets checked, and a loaded-model cache.

- :func:`gradio_errors` wraps an event handler. A :class:`UserError` (bad upload, too-long
  input, unknown checkpoint) becomes ONE visible ``gr.Error`` whose text is written for the
  page (:func:`page_message`): the server's temporary upload path (Gradio's cache folder and
  a hash) is replaced by the user's file name, CLI flags are replaced by the page's control
  names or dropped, and ``UserError(..., ui_message=...)`` wins when given. The server log
  gets one line per user error; only other exceptions log a traceback (and the browser sees
  a short generic message). Generator handlers (streaming outputs) are wrapped too.
- :func:`connect` registers a wrapped handler on an event and clears its visible outputs
  when it fails, so an old result never stays on screen under the error.
- :func:`number_input` checks a numeric widget's value (empty, not finite, not whole, out of
  range) and returns it as ``int`` / ``float``, or raises a :class:`UserError`.
- :class:`ModelCache` keeps the last few loaded models keyed by checkpoint name, so a tab
  does not reload a model on every click; thread-safe (Gradio runs handlers in threads).

``gradio`` is imported only inside the functions that need it, never on import.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import math
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError

__all__ = ["ModelCache", "connect", "file_path", "gradio_errors", "number_input", "page_message"]

log = logging.getLogger("longstream.demo")
F = TypeVar("F", bound=Callable[..., Any])

_FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w.-]*")


def file_path(value: Any) -> str | None:
    """A ``gr.File`` / ``gr.Audio`` / ``gr.Image`` (type="filepath") value -- a path string, an object with
    ``.name`` or a dict with ``"path"`` / ``"name"`` -- as a path; None when the component is empty."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return value.get("path") or value.get("name")
    return str(getattr(value, "name", value))


def upload_folder() -> Path:
    """Gradio's upload cache (``$GRADIO_TEMP_DIR``, else ``<tmp>/gradio``), where uploads land."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def _arg_paths(values: Iterable[Any]) -> list[str]:
    """File paths among handler arguments (str, ``Path``, or objects with ``.path`` / ``.name``)."""
    out: list[str] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out += _arg_paths(v)
            continue
        if isinstance(v, dict):
            v = v.get("path") or v.get("name")
        elif not isinstance(v, (str, os.PathLike)):
            v = getattr(v, "path", None) or getattr(v, "name", None)
        if isinstance(v, (str, os.PathLike)) and str(v) and ("/" in str(v) or os.sep in str(v)):
            s = str(v)
            if len(s) < 4096 and os.path.isfile(s):
                out.append(s)
    return out


def _hide_paths(message: str, args: Sequence[Any]) -> str:
    """Replace every file path the handler got (and any path in Gradio's cache) by its file name."""
    paths = set(_arg_paths(args))
    for p in list(paths):
        paths.add(os.path.realpath(p))
    for p in sorted(paths, key=len, reverse=True):  # longest first: a path never half-replaced
        message = message.replace(p, os.path.basename(p))
    for root in {str(upload_folder()), os.path.realpath(upload_folder())}:
        message = re.sub(re.escape(root.rstrip("/")) + r"/(?:[^/\s'\"]+/)*([^/\s'\"]+)", r"\1", message)
    return message


def _rewrite_flags(message: str, flags: Mapping[str, str]) -> str:
    """``--flag`` -> the page's control name; an alternative naming an unmapped flag is dropped.

    Messages read "<what is wrong>; <fix> or <other fix>": ``;``-clauses are split into their
    ``or``-alternatives, and an alternative that names a flag the page lacks goes.
    """
    def mapped(part: str) -> str | None:
        names = _FLAG.findall(part)
        if any(n not in flags for n in names):
            return None  # a fix only the command line has: not on this page
        for n in sorted(names, key=len, reverse=True):
            part = re.sub(r"(?<![\w-])" + re.escape(n) + r"(?![\w.-])", flags[n], part)
        return part

    clauses = [c.strip() for c in message.split(";")]
    kept: list[str] = []
    for c in clauses:
        alts = [a for a in (mapped(p) for p in re.split(r",?\s+or\s+", c)) if a is not None]
        if alts:
            kept.append(" or ".join(alts).strip().rstrip(","))
    if not kept:  # every clause named a CLI flag: keep the first, flags named as settings
        kept = [_FLAG.sub(lambda m: f"'{m.group(0)[2:]}'", clauses[0])]
    return "; ".join(k for k in kept if k)


def page_message(e: BaseException, args: Sequence[Any] = (), flags: Mapping[str, str] | None = None) -> str:
    """The text a page shows for user error ``e`` raised by a handler called with ``args``.

    ``e.ui_message`` (``UserError(msg, ui_message=...)``) wins. Otherwise the message has
    the handler's file paths (uploads land in Gradio's cache as ``<cache>/<hash>/<name>``)
    replaced by the file names, each ``--flag`` in ``flags`` replaced by its page label, and
    every ``;``-separated clause that names another CLI flag dropped.
    """
    ui = getattr(e, "ui_message", None)
    msg = str(ui) if ui else str(e)
    msg = _hide_paths(msg, args)
    if not ui:
        msg = _rewrite_flags(msg, flags or {})
    return msg.strip() or type(e).__name__


def _to_gr_error(fn_name: str, e: BaseException, args: Sequence[Any], flags: Mapping[str, str] | None,
                 where: str = "") -> BaseException:
    import gradio as gr

    where = where or fn_name
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, UserError):
        msg = page_message(e, args, flags)
        log.warning("demo %s: user error: %s", where, msg.replace("\n", " "))  # one line, no traceback
        # the message is rendered as HTML in the toast: escape it; the traceback is not printed
        return gr.Error(html.escape(msg), print_exception=False)
    log.error("demo handler %s failed", where, exc_info=(type(e), e, e.__traceback__))
    return gr.Error(f"internal error in {fn_name} ({type(e).__name__}); the traceback is in the server log",
                    print_exception=False)


def gradio_errors(fn: F | None = None, *, flags: Mapping[str, str] | None = None) -> Any:
    """Decorator for Gradio event handlers (``@gradio_errors`` or ``@gradio_errors(flags=...)``).

    UserError -> one ``gr.Error(page_message(...))`` and one log line; anything else -> a
    generic ``gr.Error`` and a logged traceback. ``flags`` maps CLI flags that messages may
    name (``"--data"``) to the page control that does the same (``"the CSV file box"``).
    """
    if fn is None:
        return functools.partial(gradio_errors, flags=flags)
    if getattr(fn, "__gradio_errors__", False):
        return fn
    name = getattr(fn, "__name__", "handler")
    module = str(getattr(fn, "__module__", "") or "").removeprefix("longstream.pipelines.")
    where = f"{module}.{name}" if module else name  # e.g. recall.demo.run, for the server log
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kw: Any):
            try:
                yield from fn(*args, **kw)
            except Exception as e:  # noqa: BLE001
                raise _to_gr_error(name, e, [*args, *kw.values()], flags, where) from None

        gen_wrapper.__gradio_errors__ = True  # type: ignore[attr-defined]
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any):
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001
            raise _to_gr_error(name, e, [*args, *kw.values()], flags, where) from None

    wrapper.__gradio_errors__ = True  # type: ignore[attr-defined]
    return wrapper


def connect(event: Callable[..., Any], fn: Callable[..., Any], inputs: Any, outputs: Any, *,
            api_name: str, flags: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    """``event(gradio_errors(fn), inputs, outputs, api_name=...)`` plus: on failure, clear the outputs.

    ``event`` is a bound listener such as ``button.click`` or ``upload.change``. Every
    output that is not a ``gr.State`` is reset to empty when the handler fails, so the
    previous result is never left on screen under the error (per-user state is kept).
    Returns the event's dependency (chain ``.then`` on it as usual).
    """
    import gradio as gr

    dep = event(gradio_errors(fn, flags=flags), inputs, outputs, api_name=api_name, **kwargs)
    outs = outputs if isinstance(outputs, (list, tuple)) else ([] if outputs is None else [outputs])
    visible = [o for o in outs if not isinstance(o, gr.State)]
    if visible:

        def clear_outputs():
            vals = [gr.update(value=None) for _ in visible]
            return vals[0] if len(vals) == 1 else vals

        dep.failure(clear_outputs, None, visible, queue=False, show_progress="hidden", api_visibility="private")
    return dep


def number_input(value: Any, label: str, *, lo: float | None = None, hi: float | None = None,
                 integer: bool = False) -> int | float:
    """A numeric widget's value checked and converted, or a :class:`UserError` naming ``label``.

    Empty, non-numeric, NaN / infinite, non-whole (with ``integer``) and out-of-range values
    are errors (``1e20`` as a seed says so instead of "Overflow when unpacking long long").
    """
    rng = f" from {_fmt(lo)} to {_fmt(hi)}" if lo is not None and hi is not None else (
        f" of at least {_fmt(lo)}" if lo is not None else (f" of at most {_fmt(hi)}" if hi is not None else ""))
    kind = "a whole number" if integer else "a number"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{label} is empty; enter {kind}{rng}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{label} {str(value)[:40]!r} is not a number; enter {kind}{rng}") from None
    if not math.isfinite(x):
        raise UserError(f"{label} {x} is not a finite number; enter {kind}{rng}")
    if integer and not x.is_integer():
        raise UserError(f"{label} {x:g} is not a whole number; enter {kind}{rng}")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise UserError(f"{label} {x:g} is out of range; enter {kind}{rng}")
    return int(x) if integer else x


def _fmt(v: float | None) -> str:
    return f"{int(v)}" if v is not None and float(v).is_integer() else f"{v}"


class ModelCache:
    """Least-recently-used cache of loaded models: ``cache.get(name)`` loads once per name.

    ``loader(name)`` builds the model (e.g. a pipeline's ``from_pretrained``). At most
    ``maxsize`` models stay loaded; the least recently used one is dropped first. A failed
    load is not cached (the next click tries again).
    """

    def __init__(self, loader: Callable[[str], Any], maxsize: int = 2) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.loader, self.maxsize = loader, maxsize
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # number of loader calls (for tests and logs)

    def get(self, name: str) -> Any:
        """The model for checkpoint ``name``, loading it on first use."""
        with self._lock:
            if name in self._items:
                self._items.move_to_end(name)
                return self._items[name]
            model = self.loader(name)  # held under the lock: two clicks never load twice
            self.loads += 1
            self._items[name] = model
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
            return model

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """Drop every loaded model."""
        with self._lock:
            self._items.clear()
