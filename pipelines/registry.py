"""The pipeline registry: one line per domain.

Each entry maps a domain name to the import path of its package. Every package holds
the same files (``config.py``, ``data.py``, ``model.py``, ``train.py``, ``evaluate.py``,
``cli.py``, ``demo.py``, ``README.md``); the CLI, the Gradio app and the smoke tests
find pipelines only through this table. Adding a domain = copy ``pipelines/_template``
and add one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PIPELINES: dict[str, str] = {
    "template": "longstream.pipelines._template",
    "recall": "longstream.pipelines.recall",
    "timeseries": "longstream.pipelines.timeseries",
    "genomics": "longstream.pipelines.genomics",
    "speech": "longstream.pipelines.speech",
    "vision": "longstream.pipelines.vision",
}


def list_pipelines() -> list[str]:
    """Every registered domain, each imported once: a registered package that fails to import
    is an error (never a silently shorter list)."""
    for name, path in PIPELINES.items():
        try:
            importlib.import_module(path)
        except ImportError as e:
            raise ImportError(f"pipeline {name!r} is registered in pipelines/registry.py but {path} does not "
                              f"import ({e}); fix the package or remove its registry line") from e
    return list(PIPELINES)


def get_pipeline(name: str, part: str | None = None) -> ModuleType:
    """Import pipeline ``name`` (or one of its files, e.g. ``part="cli"``)."""
    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    path = PIPELINES[name] + (f".{part}" if part else "")
    return importlib.import_module(path)
