"""The Gradio app: one tab per registered pipeline, each built by its ``demo.build_demo()``.

Nothing launches (or imports gradio) on import. ``build_app()`` returns the ``gr.Blocks``;
``launch()`` serves it (``longstream demo`` / ``make demo``). Per-user state lives in each
tab's ``gr.State``; every event has an ``api_name`` (set by the pipelines); uploads are
capped by ``max_file_size`` (``$LONGSTREAM_MAX_UPLOAD``, default 25 MB).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

MAX_UPLOAD = os.environ.get("LONGSTREAM_MAX_UPLOAD", "25mb")


def _quiet_gradio_env() -> None:
    # the app must work offline: no analytics, no version check
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _demo_log_to_stderr() -> None:
    """Tab errors reach the server log: one line per user error, a traceback for internal ones."""
    import logging

    log = logging.getLogger("longstream.demo")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[longstream demo] %(levelname)s %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


def build_app(only: Sequence[str] | None = None) -> Any:
    """Build (don't launch) the app: a header and one tab per pipeline with a ``demo.py``.

    A pipeline whose ``build_demo()`` fails gets a tab that shows the error instead of
    taking the whole app down (the failure is also printed on stderr).
    """
    _quiet_gradio_env()
    import gradio as gr

    from longstream.pipelines.registry import get_pipeline, list_pipelines

    names = [n for n in list_pipelines() if only is None or n in only]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            from longstream.pipelines.common import UserError

            raise UserError(f"unknown or unavailable pipeline(s) {unknown}; available: {list_pipelines()}")
    # Build each tab's Blocks first, outside the app context (a Blocks created inside
    # another one would render there immediately), then render them into the tabs.
    tabs: list[tuple[str, str, Any, str | None]] = []  # (name, title, blocks or None, error)
    for name in names:
        try:
            mod = get_pipeline(name, "demo")
        except Exception as e:  # pipeline without a working demo.py
            print(f"[longstream demo] {name}: cannot import demo.py: {e}", file=sys.stderr)
            tabs.append((name, name, None, f"The `{name}` pipeline has no demo yet."))
            continue
        title = getattr(mod, "DEMO_TITLE", name)
        try:
            tabs.append((name, title, mod.build_demo(), None))
        except Exception as e:
            traceback.print_exc()
            tabs.append((name, title, None, f"**The `{name}` demo failed to build:** `{type(e).__name__}: {e}`"))
    with gr.Blocks(title="longstream") as app:
        gr.Markdown(
            "# longstream\nLong-sequence models (Mamba, Mamba-2, S4D, Hyena, attention, hybrids) "
            "with streaming memory. One tab per pipeline; each runs a small shipped checkpoint on CPU."
        )
        with gr.Tabs():
            for name, title, blocks, err in tabs:
                with gr.Tab(title, id=name, elem_id=f"tab-{name}"):
                    if blocks is not None:
                        blocks.render()
                    else:
                        gr.Markdown(err or "")
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           only: Sequence[str] | None = None, **kwargs: Any) -> Any:
    """Build and serve the app (blocks until interrupted)."""
    _demo_log_to_stderr()
    app = build_app(only)
    app.queue(default_concurrency_limit=2)
    print(f"longstream demo: http://{host}:{port}", flush=True)
    return app.launch(
        server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD,
        show_error=True, **kwargs,
    )


if __name__ == "__main__":  # python -m longstream.apps.gradio_app [port]
    launch(port=int(sys.argv[1]) if len(sys.argv) > 1 else 7860)
