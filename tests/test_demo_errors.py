"""Gradio error handling without a server or browser (the wrapped handlers called directly).

The rules (pipelines/CONTRACT.md, "demo.py"): a user error shows once, in words written for
the page (the user's file name, not Gradio's temporary copy; no CLI flags the page lacks),
logs one line (a traceback only for internal errors), and the handler's outputs are cleared.
The last test is generated from the registry: every tab's ``DEMO_BAD_INPUT`` is fed to its
``#<domain>-run`` handler.
"""

from __future__ import annotations

import logging
import re

import pytest

from longstream.pipelines.common import UserError, connect, gradio_errors, number_input, page_message
from longstream.pipelines.registry import PIPELINES, get_pipeline

gr = pytest.importorskip("gradio")


@pytest.fixture
def upload(tmp_path, monkeypatch):
    """A file as Gradio stores an upload: ``$GRADIO_TEMP_DIR/<hash>/<the user's name>``."""
    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))

    def make(name: str, content: str | bytes) -> str:
        p = cache / "3f2a9c0d1e5b7a64c8e1f0b2d4a6c8e0f1a3b5c7d9e1f3a5b7c9d1e3f5a7b9c1" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(p)

    make.cache = cache  # type: ignore[attr-defined]
    return make


def test_upload_path_becomes_the_users_file_name(upload):
    path = upload("sales 2024.csv", "a,b\n")

    @gradio_errors
    def handler(f):
        raise UserError(f"{f}: column 'b' has no values; fill it in")

    with pytest.raises(gr.Error) as info:
        handler(path)
    assert info.value.message == "sales 2024.csv: column &#x27;b&#x27; has no values; fill it in"
    assert str(upload.cache) not in info.value.message
    # a path in Gradio's cache is hidden even when the handler did not get it as an argument
    e = UserError(f"cannot read {path} (bad bytes)")
    assert page_message(e) == "cannot read sales 2024.csv (bad bytes)"


def test_cli_flags_are_mapped_or_their_clause_dropped():
    e = UserError("data file x.csv does not exist; pass --data PATH to a CSV file")
    assert page_message(e) == "data file x.csv does not exist"
    assert page_message(e, flags={"--data": "the CSV file box"}) == (
        "data file x.csv does not exist; pass the CSV file box PATH to a CSV file")
    e = UserError("length 9000 is too long; lower --eval.max_len or use --stream")
    assert page_message(e) == "length 9000 is too long"
    assert page_message(UserError("--foo.bar must be positive")) == "'foo.bar' must be positive"
    # --data-dir is not --data: no partial replacement
    assert "--" not in page_message(UserError("bad; use --data-dir X"), flags={"--data": "Y"})
    # a message written for the page wins
    e = UserError("lower --eval.max_len", ui_message="pick a smaller length in the list")
    assert page_message(e) == "pick a smaller length in the list"
    with pytest.raises(gr.Error, match="pick a smaller length"):
        gradio_errors(lambda: (_ for _ in ()).throw(e))()


def test_user_error_logs_one_line_internal_error_a_traceback(caplog):
    @gradio_errors
    def user():
        raise UserError("horizon 0 is out of range; enter 1 to 2000")

    @gradio_errors
    def broken():
        raise ZeroDivisionError("secret internals")

    with caplog.at_level(logging.INFO, logger="longstream.demo"):
        with pytest.raises(gr.Error) as info:
            user()
    assert info.value.print_exception is False  # Gradio itself prints no traceback either
    assert [r.getMessage() for r in caplog.records] == [
        f"demo {__name__}.user: user error: horizon 0 is out of range; enter 1 to 2000"]
    assert "Traceback" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="longstream.demo"):
        with pytest.raises(gr.Error) as info:
            broken()
    assert info.value.print_exception is False  # logged once, by us
    assert "secret internals" not in info.value.message
    assert caplog.text.count("Traceback") == 1 and "secret internals" in caplog.text


def test_message_is_escaped_for_the_html_toast():
    with pytest.raises(gr.Error) as info:
        gradio_errors(lambda: (_ for _ in ()).throw(UserError("value <script> is not a number")))()
    assert info.value.message == "value &lt;script&gt; is not a number"


@pytest.mark.parametrize("value,msg", [
    (1e20, "example seed 1e+20 is out of range; enter a whole number from 0 to 100"),
    (None, "example seed is empty; enter a whole number from 0 to 100"),
    ("", "example seed is empty"),
    ("abc", "example seed 'abc' is not a number"),
    (float("nan"), "example seed nan is not a finite number"),
    (float("inf"), "example seed inf is not a finite number"),
    (2.5, "example seed 2.5 is not a whole number"),
    (-1, "example seed -1 is out of range"),
])
def test_number_input_rejects_bad_widget_values(value, msg):
    with pytest.raises(UserError) as info:
        number_input(value, "example seed", lo=0, hi=100, integer=True)
    assert str(info.value).startswith(msg)


def test_number_input_converts():
    assert number_input(7.0, "seed", lo=0, hi=10, integer=True) == 7
    assert isinstance(number_input("7", "seed", integer=True), int)
    assert number_input(0.25, "noise", lo=0.0) == 0.25


def test_connect_clears_visible_outputs_on_failure_and_keeps_state():
    with gr.Blocks() as demo:
        box = gr.Textbox()
        out = gr.Textbox(elem_id="out")
        state = gr.State([1])
        btn = gr.Button()
        connect(btn.click, lambda t, s: (t, s), [box, state], [out, state], api_name="x")
    fns = list(demo.fns.values())
    main, clear = fns[0], fns[1]
    assert getattr(main.fn, "__gradio_errors__", False)
    assert clear.trigger_only_on_failure and clear.trigger_after == 0
    assert [o._id for o in clear.outputs] == [out._id]  # the state is not cleared
    assert clear.fn() == gr.update(value=None)


# --- generated from the registry: every tab's bad input -------------------------------------

def _demos() -> list[str]:
    out = []
    for name in PIPELINES:
        try:
            get_pipeline(name, "demo")
        except ModuleNotFoundError:
            continue
        out.append(name)
    return out


def _run_fn(demo, domain: str):
    """The event function triggered by the ``#<domain>-run`` button, and its index."""
    for fid, f in demo.fns.items():
        for block_id, _event in f.targets:
            if getattr(demo.blocks.get(block_id), "elem_id", None) == f"{domain}-run":
                return fid, f
    raise AssertionError(f"{domain}: no event on #{domain}-run (pipelines/CONTRACT.md, demo.py)")


@pytest.mark.parametrize("domain", _demos())
def test_tab_bad_input_gives_one_readable_error_and_clears(domain, upload, caplog):
    mod = get_pipeline(domain, "demo")
    bad = getattr(mod, "DEMO_BAD_INPUT", None)
    assert isinstance(bad, dict) and "elem_id" in bad and "expect" in bad and ("file" in bad or "value" in bad), (
        f"{domain}/demo.py: define DEMO_BAD_INPUT (pipelines/CONTRACT.md, demo.py)")
    demo = mod.build_demo()
    fid, fn = _run_fn(demo, domain)
    ids = [getattr(c, "elem_id", None) for c in fn.inputs]
    assert bad["elem_id"] in ids, f"{domain}: DEMO_BAD_INPUT names #{bad['elem_id']}, not an input of #{domain}-run"
    args = [c.value for c in fn.inputs]
    if "file" in bad:
        name, content = bad["file"]
        args[ids.index(bad["elem_id"])] = upload(name, content)
    else:
        args[ids.index(bad["elem_id"])] = bad["value"]
    with caplog.at_level(logging.INFO, logger="longstream.demo"):
        with pytest.raises(gr.Error) as info:
            fn.fn(*args)
    msg = info.value.message
    assert bad["expect"] in msg or bad["expect"] in __import__("html").unescape(msg), msg
    assert str(upload.cache) not in msg and "/tmp/" not in msg, msg
    assert not re.search(r"(?<![\w-])--[A-Za-z]", msg), f"{domain}: the page has no CLI flags: {msg}"
    assert not msg.startswith("internal error"), msg
    assert "Traceback" not in caplog.text and len(caplog.records) == 1, caplog.text
    # the failure clears every visible output of the run event (the old result does not stay)
    clears = [f for f in demo.fns.values() if f.trigger_only_on_failure and f.trigger_after == fid]
    visible = {o._id for o in fn.outputs if not isinstance(o, gr.State)}
    assert clears and {o._id for o in clears[0].outputs} == visible, f"{domain}: use common.connect"
    assert any(getattr(o, "elem_id", None) == f"{domain}-output" for o in clears[0].outputs)


def test_only_the_cli_alternative_of_a_fix_is_dropped():
    e = UserError("f.csv: column 'b' has a non-numeric value 'x' at data row 2 (line 3); fix or remove it, "
                  "or leave 'b' out of --data.targets/--data.covariates")
    assert page_message(e) == "f.csv: column 'b' has a non-numeric value 'x' at data row 2 (line 3); fix or remove it"
