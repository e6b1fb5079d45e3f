"""The Gradio app in a real browser: start ``longstream demo``, drive headless chromium through
one example per tab, check the output appears, save screenshots under ``tests/artifacts/``.

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str | None:
    return os.environ.get("LONGSTREAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def app_url():
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO), "LONGSTREAM_OFFLINE": "1"}
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
    finally:
        page.screenshot(path=str(ARTIFACTS / f"browser_{domain}.png"), full_page=True)
    assert status == "ok", f"{domain}: {status}"
    if domain == "template":
        assert "Predicted class" in page.input_value("#template-output textarea")
    assert not [e for e in page.page_errors if "gradio" in e.lower()], page.page_errors
