"""The web page in a real browser (Debian's Chromium driven by Playwright) against the real
gateway and worker: upload, two methods side by side, cancel a long job, a bad file's error.

The screenshots are kept under the test's temporary directory (printed at the end).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import Service
from tests.gateway.fakes import announce, model_info
from tests.worker.support import png

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (make test installs Debian's package)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, live: Service) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    opened.goto(live.url + "/")
    expect(opened.locator("#model option")).not_to_have_count(0)
    expect(opened.locator("#methods .method > input[type=checkbox]").first).to_be_visible()
    yield opened
    context.close()


def picture(tmp_path: Path, name: str = "photo.png") -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path / name
    path.write_bytes(png(rng.integers(0, 256, size=(48, 64, 3))))
    return path


def tick_only(page: Page, *methods: str) -> None:
    for box in page.locator("#methods .method > input[type=checkbox]").all():
        box.set_checked(box.get_attribute("value") in methods)


def test_two_methods_side_by_side(page: Page, tmp_path: Path) -> None:
    page.set_input_files("#file", str(picture(tmp_path)))
    expect(page.locator("#preview")).to_be_visible()
    page.select_option("#model", "tiny")
    tick_only(page, "gradcam", "occlusion")
    page.fill("#p-occlusion-window", "8")
    page.click("#run")
    cards = page.locator("#results .card")
    expect(cards).to_have_count(2)
    for method in ("gradcam", "occlusion"):
        card = page.locator(f'#results .card[data-method="{method}"]')
        expect(card).to_have_attribute("data-status", "succeeded", timeout=30_000)
        heat = card.locator("img.heat")
        expect(heat).to_have_attribute("src", lambda_src_contains("blob:"))
        page.wait_for_function(
            "img => img.complete && img.naturalWidth === 64", arg=heat.element_handle()
        )
        expect(card.locator(".facts")).to_contain_text("ms")
        expect(card.locator("a.png")).to_be_visible()
        expect(card.locator("a.json")).to_be_visible()
    expect(page.locator("#prediction li")).to_have_count(3)  # the tiny model has 3 classes
    occlusion = page.locator('#results .card[data-method="occlusion"]')
    expect(occlusion.locator(".facts")).to_contain_text("forward pass")
    occlusion.locator("button.curl").click()
    expect(occlusion.locator(".curl-text")).to_contain_text('"window":8')
    page.fill("#opacity", "20")
    page.dispatch_event("#opacity", "input")
    assert page.locator("img.heat").first.evaluate("img => img.style.opacity") == "0.2"
    shot = tmp_path / "two-methods.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")


def test_drag_and_drop_then_cancel_a_long_job(page: Page, live: Service, tmp_path: Path) -> None:
    data = picture(tmp_path).read_bytes()
    page.evaluate(
        """bytes => {
            const file = new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            document.querySelector("#drop").dispatchEvent(
                new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        list(data),
    )
    expect(page.locator("#drop-text")).to_contain_text("dropped.png")
    page.select_option("#model", "tiny_slow")
    tick_only(page, "occlusion")
    page.fill("#p-occlusion-window", "4")
    page.fill("#p-occlusion-stride", "1")
    page.fill("#p-occlusion-max_batch_size", "1")
    page.click("#run")
    card = page.locator('#results .card[data-method="occlusion"]')
    expect(card).to_have_attribute("data-status", "running", timeout=30_000)
    page.wait_for_function(
        "() => document.querySelector('#results .card progress').value > 0", timeout=30_000
    )
    card.locator("button.cancel").click()
    expect(card).to_have_attribute("data-status", "cancelled", timeout=10_000)
    job_id = card.get_attribute("data-job")
    assert live.http.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    page.screenshot(path=str(tmp_path / "cancelled.png"), full_page=True)


def test_a_bad_file_shows_the_apis_message(page: Page, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these bytes are not a picture")
    page.set_input_files("#file", str(bad))
    page.select_option("#model", "tiny")
    tick_only(page, "gradcam")
    page.click("#run")
    card = page.locator('#results .card[data-method="gradcam"]')
    expect(card).to_have_attribute("data-status", "failed")
    message = card.locator(".error-text")
    expect(message).to_be_visible()
    text = message.inner_text()
    assert text and "undefined" not in text and "[object" not in text
    assert "image" in text.lower()
    page.screenshot(path=str(tmp_path / "bad-file.png"), full_page=True)


def lambda_src_contains(fragment: str):  # type: ignore[no-untyped-def]
    """A regular expression matching attribute values that contain ``fragment``."""
    import re

    return re.compile(re.escape(fragment))


def test_methods_a_model_cannot_run_are_greyed_out_with_the_reason(
    browser: Browser, live: Service
) -> None:
    # A second worker's announcement: a model whose LRP the worker found unsupported.
    reason = "LRP: activation 'features.1' (Sigmoid) is not supported"
    announce(live.redis, live.keys, [model_info("sigmoid", unsupported={"lrp": reason})],
             worker_id="announcer")  # fmt: skip
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(live.url + "/")
        expect(page.locator("#model option[value=sigmoid]")).to_have_count(1)
        lrp = page.locator("#methods .method").filter(has=page.locator("#m-lrp"))
        page.select_option("#model", "tiny")
        expect(lrp).not_to_have_class(re.compile("unsupported"))
        page.check("#m-lrp")
        page.select_option("#model", "sigmoid")
        expect(lrp).to_have_class(re.compile("unsupported"))
        expect(page.locator("label[for=m-lrp]")).to_have_attribute("title", re.compile("Sigmoid"))
        expect(page.locator("#m-lrp")).not_to_be_checked()
    finally:
        context.close()
        live.redis.delete(live.keys.worker("announcer"))
        live.redis.zrem(live.keys.workers, "announcer")
