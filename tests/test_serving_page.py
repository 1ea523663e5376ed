"""The page of `focalnet serve` in a real browser (Debian's Chromium, headless, through Playwright),
against a real server: what a person sees for each task equals what `/predict` answers, the
controls redraw, errors are shown in words, the API key is asked for once. No console errors and
no failed requests; every state is saved as a screenshot at desktop and phone widths."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from servers import PHOTOS, save_classifier, save_detector, save_simmim, save_upernet, serve_command, start

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")]

DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
DONE = "document.querySelectorAll('.card[data-state=done]').length === {count}"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("the browser tests need Chromium: sudo apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need: pip install playwright")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


class Watched:
    """A page whose console errors and failed requests are collected, to be asserted empty (but for
    the HTTP error statuses a test provokes on purpose, which Chromium logs as console errors)."""

    def __init__(self, browser, url: str, shots: Path) -> None:
        self.page = browser.new_page(viewport=DESKTOP)
        self.shots = shots
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on("requestfailed", lambda request: self.errors.append(f"failed request: {request.url}"))
        self.page.goto(url)

    def shoot(self, name: str) -> None:
        """Screenshots of the whole page at desktop and phone widths."""
        self.shots.mkdir(exist_ok=True)
        for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            self.page.set_viewport_size(viewport)
            self.page.wait_for_timeout(150)
            self.page.screenshot(path=str(self.shots / f"{name}-{width}.png"), full_page=True)
        self.page.set_viewport_size(DESKTOP)

    def upload(self, paths: list[Path]) -> None:
        self.page.set_input_files("#files", [str(path) for path in paths])
        self.page.wait_for_function(DONE.format(count=len(paths)), timeout=60_000)

    def check_clean(self, expected_statuses: tuple[int, ...] = ()) -> None:
        provoked = [f"status of {status}" for status in expected_statuses]
        unexpected = [error for error in self.errors if not any(p in error for p in provoked)]
        assert unexpected == [], unexpected
        self.page.close()


def predict(url: str, path: Path, **params) -> object:
    response = httpx.post(f"{url}/predict", content=path.read_bytes(), params=params, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("page-models")
    return {
        "classifier": save_classifier(root / "classifier"),
        "mask_rcnn": save_detector(root / "mask", "mask_rcnn"),
        "upernet": save_upernet(root / "upernet"),
        "simmim": save_simmim(root / "simmim"),
    }


def served(model: Path, tmp_path: Path, *options: str, env: dict | None = None):
    return start(serve_command(model, *options), tmp_path / "server.log", env=env)


# ------------------------------------------------------------------------------------------------
def test_classifier_page_shows_the_labels_and_redraws_the_modulators(browser, model_dirs, tmp_path) -> None:
    server = served(model_dirs["classifier"], tmp_path)
    try:
        watched = Watched(browser, server.url, tmp_path / "screenshots")
        page = watched.page
        page.wait_for_selector("#model strong")
        assert "image-classification" in page.inner_text("#model") and "6 labels" in page.inner_text("#model")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "files"  # the picker is the first stop
        watched.shoot("classifier-empty")
        watched.upload(PHOTOS)
        for card, photo in zip(page.query_selector_all(".card"), PHOTOS, strict=True):
            expected = predict(server.url, photo, top_k=5)
            rows = card.query_selector_all(".labels li")
            assert [row.get_attribute("data-label") for row in rows] == [e["label"] for e in expected]
            assert [float(row.get_attribute("data-score")) for row in rows] == pytest.approx(
                [e["score"] for e in expected], abs=1e-6
            )
            assert card.eval_on_selector(".picture img", "image => image.naturalWidth") > 100
        watched.shoot("classifier-results")

        first = page.query_selector(".card")
        before = first.eval_on_selector(".picture img", "image => image.src")
        first.query_selector("input[type=range]").fill("0.9")  # opacity: a new figure
        page.wait_for_function("([card, src]) => card.querySelector('.picture img').src !== src", arg=[first, before])
        after_opacity = first.eval_on_selector(".picture img", "image => image.src")
        first.query_selector("select").select_option("all")
        page.wait_for_function(
            "([card, src]) => card.querySelector('.picture img').src !== src", arg=[first, after_opacity]
        )
        watched.shoot("classifier-all-blocks")

        with page.expect_download() as download:
            first.query_selector(".download-json").click()
        saved = json.loads(Path(download.value.path()).read_text())
        assert saved == predict(server.url, PHOTOS[0], top_k=5)
        watched.check_clean()
    finally:
        assert server.stop() == 0, server.output()


def test_detector_page_draws_the_boxes_and_filters_them_without_asking_again(browser, model_dirs, tmp_path) -> None:
    server = served(model_dirs["mask_rcnn"], tmp_path, "--threshold", "0.26")
    try:
        watched = Watched(browser, server.url, tmp_path / "screenshots")
        page = watched.page
        watched.upload(PHOTOS)
        watched.shoot("detector-results")
        cards = page.query_selector_all(".card")
        for card, photo in zip(cards, PHOTOS, strict=True):
            every = predict(server.url, photo, threshold=0)
            count = card.query_selector(".count")
            assert int(count.get_attribute("data-total")) == len(every) > 0
            assert int(count.get_attribute("data-drawn")) == sum(d["score"] >= 0.26 for d in every)
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        threshold, card = cards[0].query_selector("input[type=range]"), cards[0]
        threshold.fill("0")
        assert card.eval_on_selector(".count", "c => c.dataset.drawn") == card.eval_on_selector(
            ".count", "c => c.dataset.total"
        )
        threshold.fill("1")
        assert card.eval_on_selector(".count", "c => c.dataset.drawn") == "0"
        threshold.fill("0.25")
        assert requests == []  # filtered in the page
        pixels_before = card.eval_on_selector("canvas", "c => c.toDataURL()")
        card.query_selector_all("input[type=range]")[1].fill("0.9")  # the masks' opacity
        assert card.eval_on_selector("canvas", "c => c.toDataURL()") != pixels_before
        watched.shoot("detector-filtered")
        watched.check_clean()
    finally:
        assert server.stop() == 0, server.output()


def test_segmentation_page_shows_the_classes_and_names_the_pixel_under_the_pointer(
    browser, model_dirs, tmp_path
) -> None:
    server = served(model_dirs["upernet"], tmp_path)
    try:
        watched = Watched(browser, server.url, tmp_path / "screenshots")
        page = watched.page
        watched.upload(PHOTOS[:2])
        card = page.query_selector(".card")
        answer = predict(server.url, PHOTOS[0], label_map="true")
        legend = [item.get_attribute("data-label") for item in card.query_selector_all(".legend li")]
        assert legend == [segment["label"] for segment in answer["segments"]]

        canvas = card.query_selector("canvas")
        box = canvas.bounding_box()
        width = canvas.evaluate("c => c.width")
        for fx, fy in ((0.2, 0.3), (0.7, 0.8), (0.5, 0.5)):
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            hover = card.query_selector(".hover")
            page.wait_for_function("h => h.dataset.x !== undefined", arg=hover)
            x, y = int(hover.get_attribute("data-x")), int(hover.get_attribute("data-y"))
            under = [
                s["label"] for s in answer["segments"] if mask_array(s["mask"])[y, x] == 255
            ]  # exactly one class per pixel
            assert hover.get_attribute("data-label") == under[0] and len(under) == 1, (x, y, width)
        before = canvas.evaluate("c => c.toDataURL()")
        card.query_selector("input[type=range]").fill("0.1")
        assert canvas.evaluate("c => c.toDataURL()") != before
        watched.shoot("segmentation-results")
        watched.check_clean()
    finally:
        assert server.stop() == 0, server.output()


def mask_array(text: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(text))))


def test_simmim_page_redraws_the_reconstruction_for_another_mask_ratio(browser, model_dirs, tmp_path) -> None:
    server = served(model_dirs["simmim"], tmp_path)
    try:
        watched = Watched(browser, server.url, tmp_path / "screenshots")
        page = watched.page
        watched.upload(PHOTOS[:1])
        card = page.query_selector(".card")
        loss = card.query_selector(".loss")
        assert float(loss.get_attribute("data-loss")) == pytest.approx(predict(server.url, PHOTOS[0])["loss"], abs=1e-6)
        watched.shoot("simmim-results")
        card.query_selector("input[type=range]").fill("0.3")
        expected = predict(server.url, PHOTOS[0], mask_ratio=0.3)["loss"]
        page.wait_for_function(
            "([element, value]) => Math.abs(Number(element.dataset.loss) - value) < 1e-6", arg=[loss, expected]
        )
        assert card.eval_on_selector(".picture img", "image => image.naturalWidth") > 200
        watched.shoot("simmim-ratio")
        watched.check_clean()
    finally:
        assert server.stop() == 0, server.output()


DROP = """([name, type, data]) => {
    const files = new DataTransfer();
    files.items.add(new File([Uint8Array.from(atob(data), c => c.charCodeAt(0))], name, { type }));
    const target = document.getElementById("drop");
    target.dispatchEvent(new DragEvent(EVENT, { dataTransfer: files, bubbles: true, cancelable: true }));
}"""
PASTE = DROP.replace('document.getElementById("drop")', "document").replace(
    "new DragEvent(EVENT, { dataTransfer: files,", 'new ClipboardEvent("paste", { clipboardData: files,'
)


def send(page, script: str, name: str, kind: str, data: bytes) -> None:
    page.evaluate(script.replace("EVENT", '"drop"'), [name, kind, base64.b64encode(data).decode()])


def test_errors_are_shown_in_words_and_the_api_key_is_asked_once(browser, model_dirs, tmp_path) -> None:
    server = served(model_dirs["classifier"], tmp_path, "--api-key-env", "PAGE_KEY", env={"PAGE_KEY": "open-sesame"})
    try:
        watched = Watched(browser, server.url, tmp_path / "screenshots")
        page = watched.page
        page.wait_for_selector("#key-dialog[open]")
        watched.shoot("key-asked")
        page.fill("#key-input", "wrong")
        page.press("#key-input", "Enter")
        page.wait_for_function("document.getElementById('key-message').textContent.includes('refused')")
        assert page.is_visible("#key-dialog")
        page.fill("#key-input", "open-sesame")
        page.press("#key-input", "Enter")
        page.wait_for_selector("#model strong")
        assert page.evaluate("sessionStorage.getItem('focalnet-api-key')") == "open-sesame"

        send(page, DROP, "notes.txt", "text/plain", b"a shopping list")  # dropped: refused in the page
        send(page, DROP, "broken.png", "image/png", b"\x89PNG\r\n\x1a\n not really")  # the server says why
        send(page, PASTE, "", "image/jpeg", PHOTOS[2].read_bytes())  # pasted from the clipboard
        page.wait_for_function("document.querySelectorAll('.card[data-state=error]').length === 2")
        page.wait_for_function(DONE.format(count=1))
        errors = [text.inner_text() for text in page.query_selector_all(".card .error") if text.is_visible()]
        assert "notes.txt is not an image (text/plain)" in errors[0]
        assert "The server cannot read this image" in errors[1] and "not an image" in errors[1]
        assert page.query_selector(".card[data-state=done] .card-title").inner_text() == "pasted image"
        watched.shoot("errors")
        watched.check_clean(expected_statuses=(401, 400))  # the two refused keys, the broken file
    finally:
        assert server.stop() == 0, server.output()
