"""The Gradio app in a real browser: start ``longstream demo``, drive headless chromium through
one example per tab, check the output appears, then give each tab its ``DEMO_BAD_INPUT`` (a bad
upload, or a bad value where the tab has no upload) and check that exactly one readable error
appears (the user's file name, no server path, no CLI flag) and the old result is cleared;
screenshots under ``tests/artifacts/``.

Run with ``pytest -m browser tests/test_browser.py`` (``.ci/run`` does, after installing
Debian's chromium). Each pipeline's demo follows pipelines/CONTRACT.md: a button
``#<domain>-run`` that works on the default/example input and an output ``#<domain>-output``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
]
# The output "appears" when the element holds a filled text field, media, or real text, and is
# no longer pending; an error toast is returned as a string so the test can report it.
_HAS_OUTPUT_JS = """(id) => {
  for (const t of document.querySelectorAll('[data-testid="toast-body"]')) {
    if (/error/i.test(t.innerText || '')) return 'ERROR: ' + t.innerText.replace(/\\s+/g, ' ').trim();
  }
  const el = document.getElementById(id);
  if (!el) return false;
  if (el.querySelector('.progress-text, .eta-bar')) return false;  // still pending
  for (const f of el.querySelectorAll('textarea, input')) { if (f.value && f.value.trim()) return 'ok'; }
  if (el.querySelector('img[src], video[src], audio[src], canvas, .js-plotly-plot, table td, svg path'))
    return 'ok';
  let txt = el.innerText || '';
  for (const l of el.querySelectorAll('label, [data-testid="block-label"], [data-testid="block-info"]'))
    txt = txt.replace(l.innerText || '', '');
  txt = txt.replace(/\\d+(\\.\\d+)?s/g, '').replace(/\\s+/g, ' ').trim();
  return txt.length >= 3 ? 'ok' : false;
}"""


# the error toasts on the page: [{"text": ...}] (a toast holds the title "Error" and the message)
_ERROR_TOASTS_JS = """() => [...document.querySelectorAll('[data-testid="toast-body"]')]
  .map(t => (t.innerText || '').replace(/\\s+/g, ' ').trim()).filter(t => /error/i.test(t))"""
# True when #id shows no result: no filled field, no media, no text beyond its labels
_OUTPUT_EMPTY_JS = """(id) => {
  const el = document.getElementById(id);
  if (!el) return false;
  if (el.querySelector('.progress-text, .eta-bar')) return false;  // still pending
  for (const f of el.querySelectorAll('textarea, input')) { if (f.value && f.value.trim()) return false; }
  if (el.querySelector('img[src], video[src], audio[src], canvas, .js-plotly-plot, table td')) return false;
  return true;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str | None:
    return os.environ.get("LONGSTREAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def app_url():
    port = _free_port()
    # the server imports the same longstream as this process (a PYTHONPATH given to pytest comes first)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": path, "LONGSTREAM_OFFLINE": "1"}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "demo_server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "longstream.apps.cli", "demo", "--port", str(port)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"demo server exited with {proc.returncode}; see {ARTIFACTS / 'demo_server.log'}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("demo server did not come up within 300 s")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _domains_with_demo() -> list[tuple[str, str]]:
    from longstream.pipelines.registry import get_pipeline, list_pipelines

    out = []
    for name in list_pipelines():
        try:
            mod = get_pipeline(name, "demo")
        except ModuleNotFoundError:
            continue  # no demo.py yet: the smoke test reports that
        out.append((name, getattr(mod, "DEMO_TITLE", name)))
    return out


@pytest.fixture(scope="module")
def page(app_url):
    chromium = _chromium()
    if not chromium:
        pytest.skip("chromium not installed (apt-get install -y chromium; .ci/run does this)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 1000})
            pg.page_errors = []  # type: ignore[attr-defined]
            pg.on("pageerror", lambda e: pg.page_errors.append(str(e)))  # type: ignore[attr-defined]
            pg.goto(app_url, wait_until="domcontentloaded", timeout=120_000)
            pg.wait_for_selector("[role=tab]", timeout=120_000)
            yield pg
        finally:
            browser.close()


DOMAINS = _domains_with_demo()


def test_template_tab_is_present():
    assert any(d == "template" for d, _ in DOMAINS)


@pytest.mark.parametrize("domain,title", DOMAINS, ids=[d for d, _ in DOMAINS])
def test_tab_runs_its_example(page, domain, title):
    """Open the tab, click ``#<domain>-run`` on the default example, wait for ``#<domain>-output``."""
    page.evaluate("() => document.querySelectorAll('[data-testid=toast-close]').forEach(b => b.click())")
    page.get_by_role("tab", name=title).click(timeout=30_000)
    button = page.locator(f"#{domain}-run")
    button.wait_for(state="visible", timeout=60_000)
    button.click()
    try:
        status = page.wait_for_function(_HAS_OUTPUT_JS, arg=f"{domain}-output", timeout=180_000).json_value()
        page.wait_for_timeout(1_500)  # outputs fade in and images load after the first one lands
    finally:
        page.screenshot(path=str(ARTIFACTS / f"browser_{domain}.png"), full_page=True)
    assert status == "ok", f"{domain}: {status}"
    if domain == "template":
        assert "Predicted class" in page.input_value("#template-output textarea")
    assert not [e for e in page.page_errors if "gradio" in e.lower()], page.page_errors


def _bad_inputs() -> list[tuple[str, str, dict]]:
    from longstream.pipelines.registry import get_pipeline

    return [(d, t, getattr(get_pipeline(d, "demo"), "DEMO_BAD_INPUT", None)) for d, t in DOMAINS]


def _close_toasts(page) -> None:
    page.evaluate("() => document.querySelectorAll('[data-testid=toast-close]').forEach(b => b.click())")
    page.wait_for_function("() => !document.querySelector('[data-testid=toast-body]')", timeout=10_000)


@pytest.mark.parametrize("domain,title,bad", _bad_inputs(), ids=[d for d, _ in DOMAINS])
def test_tab_bad_input_shows_one_readable_error_and_clears(page, domain, title, bad):
    """Run the example (a result on screen), then the tab's DEMO_BAD_INPUT: one error, result gone."""
    assert isinstance(bad, dict), f"{domain}/demo.py: define DEMO_BAD_INPUT (pipelines/CONTRACT.md, demo.py)"
    _close_toasts(page)
    page.get_by_role("tab", name=title).click(timeout=30_000)
    button = page.locator(f"#{domain}-run")
    button.wait_for(state="visible", timeout=60_000)
    button.click()
    status = page.wait_for_function(_HAS_OUTPUT_JS, arg=f"{domain}-output", timeout=180_000).json_value()
    assert status == "ok", f"{domain}: the example failed: {status}"
    target = f"#{bad['elem_id']}"
    if "file" in bad:
        name, content = bad["file"]
        page.set_input_files(f"{target} input[type=file]", files=[
            {"name": name, "mimeType": "text/plain", "buffer": content.encode()}])
        # the upload landed: the file block shows its name (gradio 6 splits stem and extension
        # into separate elements, so compare the block's text with whitespace removed)
        page.wait_for_function(
            "([sel, name]) => { const el = document.querySelector(sel);"
            " return !!el && (el.innerText || '').replace(/\\s+/g, '').includes(name.replace(/\\s+/g, '')); }",
            arg=[target, name], timeout=60_000)
    else:
        field = page.locator(f"{target} textarea, {target} input").first
        field.fill(str(bad["value"]))
        field.press("Tab")  # commit the value (a Number commits on blur)
    page.wait_for_timeout(1_000)  # a change event (if any) settles first
    button.click()
    try:
        page.wait_for_function(f"() => ({_ERROR_TOASTS_JS})().length > 0", timeout=120_000)
        page.wait_for_function(_OUTPUT_EMPTY_JS, arg=f"{domain}-output", timeout=30_000)
        page.wait_for_timeout(2_000)  # a second toast would show up by now
        toasts = page.evaluate(_ERROR_TOASTS_JS)
    finally:
        page.screenshot(path=str(ARTIFACTS / f"browser_{domain}_bad_input.png"), full_page=True)
    assert len(toasts) == 1, f"{domain}: expected one error, got {toasts}"
    msg = toasts[0]
    assert bad["expect"] in msg, f"{domain}: the error should name {bad['expect']!r}: {msg}"
    assert "/tmp/" not in msg and "gradio/" not in msg, f"{domain}: the error shows a server path: {msg}"
    assert "--" not in msg, f"{domain}: the error names a CLI flag: {msg}"
    assert "internal error" not in msg, msg
    # the server log: one line for this user error, no traceback
    server_log = (ARTIFACTS / "demo_server.log").read_text()
    lines = [ln for ln in server_log.splitlines() if "user error:" in ln and bad["expect"] in ln]
    assert len(lines) == 1, f"{domain}: expected one log line for the error, got {lines}"
    assert "Traceback" not in server_log, f"{domain}: the server log has a traceback: {server_log[-2000:]}"
    _close_toasts(page)
