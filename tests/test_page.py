"""The page in a real browser, at a desktop's and a phone's width: calibrated percentages, the
notice for a picture that is not clothing (its classes greyed), and the "why?" heatmap.

Screenshots go to the test's folder, and also to $FMNIST_SCREENSHOTS when it is set, to be
looked at."""

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port
from test_serve import CHROMIUM, png, wait_ready

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from fmnist_alexnet.data.sources import load_splits  # noqa: E402
from fmnist_alexnet.infer.ood_sets import ood_set  # noqa: E402
from fmnist_alexnet.infer.predict import answers  # noqa: E402
from fmnist_alexnet.serve.app import create_app  # noqa: E402
from fmnist_alexnet.serve.loading import load_served  # noqa: E402
from fmnist_alexnet.serve.server import build_server  # noqa: E402

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="no Debian chromium (make setup installs it as root)"
)
WIDTHS = {"desktop": (1280, 800), "phone": (390, 844)}


@pytest.fixture(scope="module")
def served(taught_run, real_data):
    """The taught small network behind a real server, and what it says offline of a garment
    and of a handwritten digit it flags as not clothing."""
    model, info = load_served(taught_run, device="cpu", precision="fp32")
    garment = load_splits(real_data)["test"][0][7]
    digits = ood_set("digits")
    said = answers(model.logits(digits[:64]), model.spec, top_k=3)
    digit = next(int(i) for i, answer in enumerate(said) if answer.ood)
    offline = answers(
        model.logits(torch.from_numpy(np.stack([garment, digits[digit, 0].numpy()]))[:, None]),
        model.spec,
        top_k=3,
    )
    server = build_server(create_app(model, info), "127.0.0.1", free_port())
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.config.port}"
    wait_ready(base)
    yield base, (garment, digits[digit, 0].numpy()), offline
    server.should_exit = True
    thread.join(timeout=30)


@pytest.mark.parametrize("width", list(WIDTHS))
def test_a_non_garment_is_said_so_and_why_shows_the_heatmap(served, width, tmp_path):
    base, (garment, digit), offline = served
    files = [tmp_path / "test-image-7.png", tmp_path / "digit.png"]
    files[0].write_bytes(png(garment))
    files[1].write_bytes(png(digit))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            w, h = WIDTHS[width]
            page = browser.new_page(viewport={"width": w, "height": h})
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('px')")
            assert "calibrated probabilities" in page.locator("#model").inner_text()
            page.set_input_files("#picker", [str(f) for f in files])
            page.wait_for_selector(".card .why")
            coat, other = page.locator(".card").nth(0), page.locator(".card").nth(1)
            # the calibrated percentages the API computed, as predict computes them offline
            shown = coat.locator(".bar .prob").all_inner_texts()
            assert shown == [f"{100 * s.prob:.1f}%" for s in offline[0].top]
            assert not offline[0].ood and coat.locator(".notice").count() == 0
            assert "ood" in other.get_attribute("class")
            notice = other.locator(".notice").inner_text()
            assert notice.startswith("This does not look like a clothing item")
            assert other.locator(".bar .label").first.inner_text() == offline[1].top[0].class_name
            grey = other.locator(".bar .fill").first.evaluate(
                "e => getComputedStyle(e).backgroundColor"
            )
            assert grey == "rgb(170, 177, 189)"  # greyed, not the accent colour
            preview = coat.locator("img").get_attribute("src")
            coat.locator(".why").click()
            page.wait_for_selector(".card .caption")
            assert coat.locator(".why").get_attribute("aria-pressed") == "true"
            heatmap = coat.locator("img").get_attribute("src")
            assert heatmap.startswith("data:image/png;base64,") and heatmap != preview
            caption = coat.locator(".caption").inner_text()
            assert caption.endswith("made it say " + offline[0].top[0].class_name)
            size = coat.locator("img").evaluate("e => [e.naturalWidth, e.naturalHeight]")
            assert size == [224, 224]
            page.screenshot(path=str(tmp_path / f"page-{width}.png"), full_page=True)
            coat.locator(".why").click()  # and back to the input
            assert coat.locator("img").get_attribute("src") == preview
            assert coat.locator(".caption").count() == 0
        finally:
            browser.close()
    if os.environ.get("FMNIST_SCREENSHOTS"):
        keep = Path(os.environ["FMNIST_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"page-{width}.png", keep)
