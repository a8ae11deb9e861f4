"""The Gradio demo in a real headless browser: upload a photo, the overlay and segment list appear.

Needs gradio and playwright (the dev extras: `make install`) and Debian's chromium (never
`playwright install`): `apt-get install -y chromium`; `.ci/run` installs it when missing.

Skipped on a machine without chromium, except under CI (`CI=true`), where a missing browser fails
the test instead, so CI always reports it passed. The app runs on localhost with
analytics off and no share link; the model is the tiny test checkpoint with hand-made outputs
(wall at the top, two excavators at the bottom), so the page content is known.
"""

from __future__ import annotations

import os
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio  # noqa: E402, F401  (dev extras: a missing package is an error, not a skip)
from playwright import sync_api  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None and not IN_CI, reason="Debian's chromium is not installed"),
    pytest.mark.filterwarnings("ignore::Warning:gradio.*"),  # gradio's own pandas deprecations
]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def app_url(tmp_path, monkeypatch):
    import demo
    from finetune.inference import PanopticPredictor
    from tests.tiny_checkpoints import handmade_outputs, save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "final")
    predictor = PanopticPredictor.from_pretrained(checkpoint, device="cpu", batch_size=1)
    config = predictor.model.config
    predictor.full_forward = True  # the hand-made outputs replace the full forward
    monkeypatch.setattr(
        predictor.model,
        "forward",
        lambda pixel_values, pixel_mask=None, **_: handmade_outputs(
            pixel_values, pixel_mask, config.num_queries, config.num_labels
        ),
    )
    app = demo.build_demo(predictor)
    port = _free_port()
    app.queue().launch(
        server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def test_upload_shows_overlay_and_segments(app_url, repo_root, tmp_path):
    samples = sorted((repo_root / "sample_data").glob("*/images/*.jpg"))
    if samples:
        photo = samples[0]
    else:  # a user's trimmed clone: any picture will do
        photo = tmp_path / "photo.png"
        Image.new("RGB", (160, 120), (110, 120, 130)).save(photo)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(app_url, wait_until="domcontentloaded")
            page.locator("#input-image input[type=file]").set_input_files(str(photo))
            overlay = page.locator("#overlay img")
            overlay.wait_for(state="visible", timeout=60_000)
            table = page.locator("#segments")
            sync_api.expect(table).to_contain_text("excavator", timeout=30_000)
            table_text = table.inner_text()
            shot = tmp_path / "overlay.png"
            overlay.screenshot(path=str(shot))
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()

    assert "wall" in table_text and "stuff" in table_text
    assert table_text.count("excavator") == 2  # two thing instances, one fused wall
    # The overlay shown is a real picture, not a blank placeholder.
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[0] > 20 and pixels.std() > 5
