"""deploy/monitoring/dashboard.html, our page that draws the Grafana dashboard's panels from Prometheus where
Grafana cannot run (``python -m bench.dashboard`` screenshots it for the README).

The first test is part of ``make test`` (it reads two files); the second, under the monitoring marker
(``make test-monitoring``), renders the page in headless Chromium against Debian's Prometheus scraping a
running ``python -m service`` and checks that it draws every panel of serve.json, with data.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from bench.dashboard import page_server
from tests.conftest import make_artifact, make_lm_artifact
from tests.monitoring.test_prometheus import MONITORING, start_prometheus, traffic
from tests.service.test_processes import Server

PAGE = MONITORING / "dashboard.html"
DASHBOARD = json.loads((MONITORING / "grafana" / "dashboards" / "serve.json").read_text())
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_reads_the_dashboard_and_loads_nothing_from_outside() -> None:
    html = PAGE.read_text()
    script = html.split("<script>", 1)[1]
    # the panels come from serve.json, found beside the page by default: none is written into the page
    assert re.search(r'params\.get\("dashboard"\) \|\| "grafana/dashboards/serve\.json"', script)
    for panel in DASHBOARD["panels"]:
        assert panel["title"] not in html
        for target in panel["targets"]:
            assert target["expr"] not in html
    # no CDN, font or other outside resource: the only absolute URLs are the SVG namespace and the examples
    urls = set(re.findall(r"https?://[^\s\"'`)<>]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://localhost:8080/dashboard.html?prometheus=http://localhost:9090"}
    assert not re.search(r"<(?:script|link|img)[^>]+(?:src|href)=", html)


@pytest.mark.monitoring
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test-browser installs it)")
def test_the_page_draws_every_panel_from_a_real_prometheus(tmp_path: Path, digit_png: bytes) -> None:
    from playwright.sync_api import sync_playwright

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: `make test-monitoring` installs Debian's (apt-get install prometheus)")
    weights = tmp_path / "weights"
    make_artifact(weights, "tiny-cnn", 1, "cnn")
    make_lm_artifact(weights, "tiny-gpt")
    server = Server(weights, "--workers", "2")
    prometheus, port = start_prometheus(binary, server.port, tmp_path)
    stop = threading.Event()
    sender = threading.Thread(target=traffic, args=(server.base, digit_png, stop))
    statuses: list[list[str]] = []
    try:
        server.wait_ready()
        sender.start()
        with page_server() as page_base, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            outside: list[str] = []
            page.on("request", lambda request: outside.append(request.url)
                    if not request.url.startswith((page_base, f"http://127.0.0.1:{port}")) else None)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # rates need two scrapes in their window: redraw until they have them
                time.sleep(2)
                page.goto(f"{page_base}/dashboard.html?prometheus=http://127.0.0.1:{port}&from=now-2m&scrape=1"
                          "&refresh=0")
                page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=20_000)
                statuses = page.eval_on_selector_all(
                    ".panel", "panels => panels.map(p => [p.querySelector('h2').textContent, p.dataset.status, "
                              "p.querySelectorAll('svg path').length, p.querySelectorAll('.legend span').length])")
                if statuses and all(status == "data" for _, status, _, _ in statuses):
                    break
            state = page.evaluate("document.body.dataset.state")
            browser.close()
    finally:
        stop.set()
        if sender.is_alive():
            sender.join(timeout=30)
        prometheus.terminate()
        prometheus.wait(timeout=30)
        server.stop()
    assert state == "done"
    assert [title for title, *_ in statuses] == [panel["title"] for panel in DASHBOARD["panels"]]
    assert all(status == "data" and lines >= 1 and legend >= 1 for _, status, lines, legend in statuses), statuses
    assert outside == []
