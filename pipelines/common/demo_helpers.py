"""Gradio helpers for every pipeline's ``demo.py``: visible errors and a loaded-model cache.

- :func:`gradio_errors` wraps an event handler so that a :class:`UserError` (bad upload,
  too-long input, unknown checkpoint) is shown to the user as a ``gr.Error`` with its
  message, and any other exception becomes a short generic ``gr.Error`` (its traceback is
  logged on the server, not shown in the browser). Generator handlers (streaming
  outputs) are wrapped too.
- :class:`ModelCache` keeps the last few loaded models keyed by checkpoint name, so a tab
  does not reload a model on every click; thread-safe (Gradio runs handlers in threads).

``gradio`` is imported only inside the functions that raise its error, never on import.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import UserError

__all__ = ["ModelCache", "gradio_errors"]

log = logging.getLogger("longstream.demo")
F = TypeVar("F", bound=Callable[..., Any])


def _to_gr_error(fn_name: str, e: BaseException) -> BaseException:
    import gradio as gr

    if isinstance(e, gr.Error):
        return e
    if isinstance(e, UserError):
        return gr.Error(str(e))
    log.error("demo handler %s failed", fn_name, exc_info=(type(e), e, e.__traceback__))
    return gr.Error(f"internal error in {fn_name} ({type(e).__name__}); the traceback is in the server log")


def gradio_errors(fn: F) -> F:
    """Decorator for Gradio event handlers: UserError -> ``gr.Error(message)``; others -> generic ``gr.Error``."""
    name = getattr(fn, "__name__", "handler")
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kw: Any):
            try:
                yield from fn(*args, **kw)
            except Exception as e:  # noqa: BLE001
                raise _to_gr_error(name, e) from None

        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any):
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001
            raise _to_gr_error(name, e) from None

    return wrapper  # type: ignore[return-value]


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
