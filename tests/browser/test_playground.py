"""The playground page in headless Chromium driven by Playwright: draw a digit, type a sentence, read the answer.

Run with ``make test-browser`` (it installs Debian's chromium where missing).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from tests.conftest import (
    LiveServer,
    free_port,
    make_artifact,
    make_diffusion_artifact,
    make_generator_artifact,
    make_text_artifact,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    make_artifact(tmp_path, "tiny-cnn", 1, "cnn")
    make_text_artifact(tmp_path, "tiny-lstm")
    make_generator_artifact(tmp_path, "tiny-cgan")
    make_diffusion_artifact(tmp_path, "tiny-ddpm")
    settings = Settings(weights_dir=tmp_path, device="cpu", torch_threads=1, port=free_port())
    with LiveServer(settings) as live:
        yield live


def test_draw_a_digit_and_classify_a_sentence(server: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 900, "height": 800})
        outside: list[str] = []
        local = (f"http://{server.url}", "blob:", "data:")  # blob: the generated grid, made by the page itself
        page.on("request", lambda request: outside.append(request.url)
                if not request.url.startswith(local) else None)
        page.goto(f"http://{server.url}/")
        page.wait_for_selector("#model option[value='tiny-cnn']", state="attached")
        box = page.locator("#pad").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + 140, box["y"] + 40)
        page.mouse.down()
        page.mouse.move(box["x"] + 140, box["y"] + 240, steps=10)
        page.mouse.up()
        page.click("#send")
        page.wait_for_function("document.querySelector('#status').innerText.includes('tiny-cnn v1')")
        assert page.inner_text("#status b").startswith("class-")
        assert page.locator("#result tr").count() == 5

        page.select_option("#text-model", "tiny-lstm")
        page.fill("#text", "not bad at all")
        page.click("#send-text")
        page.wait_for_function("document.querySelector('#status').innerText.includes('tiny-lstm v1')")
        assert page.inner_text("#status b") in ("negative", "positive")

        page.select_option("#gen-model", "tiny-ddpm")
        page.wait_for_function("document.querySelector('#gen-steps').value === '6'")  # its default, from metadata
        assert page.is_disabled("#gen-label")  # unconditional
        page.fill("#gen-seed", "7")
        page.click("#generate")
        page.wait_for_function("document.querySelector('#status').innerText.includes('seed 7')")
        page.wait_for_function("document.querySelector('#samples').naturalWidth === 122")  # a 4x4 grid of 28 px
        page.select_option("#gen-model", "tiny-cgan")
        page.wait_for_function("document.querySelector('#gen-steps').disabled")  # a GAN has no steps
        page.select_option("#gen-label", "3")
        page.click("#generate")
        page.wait_for_function("document.querySelector('#status').innerText.includes('tiny-cgan')")
        page.screenshot(path=str(tmp_path / "playground.png"))
        browser.close()
    assert outside == []  # the page makes no external requests
