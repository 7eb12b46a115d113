"""The studio page in headless Chromium (Debian's ``chromium`` driven by Playwright with ``executable_path``): load,
sample with live previews, cancel, refusals shown on the page, inpaint a drawn mask, re-run from a saved PNG.
First-preview and cancel latencies are measured in the browser and printed."""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.request

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("playwright")

from tests.test_ui import LiveServer, make_runs


def chromium_path() -> str | None:
    """Debian's chromium (installed by the Makefile / .ci/run), or $CHROMIUM."""
    for cand in (os.environ.get("CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):  # fmt: skip
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


CHROMIUM = chromium_path()
if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must run the browser tests: install Debian's chromium (apt-get install -y chromium)")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `apt-get install -y chromium` (make test does it)"),
    pytest.mark.xdist_group("browser"),
]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    srv = LiveServer(make_runs(tmp_path_factory.mktemp("browser")))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(studio):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        pg = browser.new_page(viewport={"width": 1300, "height": 1100})
        pg.goto(studio.url)
        pg.wait_for_selector("body[data-ready='1']", timeout=30000)
        yield pg
        browser.close()


def pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def set_fields(page, **values):
    for k, v in values.items():
        page.fill(f"#{k}", str(v))


def test_load_lists_checkpoints_and_solvers(page):
    options = page.eval_on_selector_all("#ckpt option", "els => els.map(e => e.value)")
    assert options == ["digits/model.safetensors", "rings/model.safetensors"]
    solvers = page.eval_on_selector_all("#solver option", "els => els.map(e => e.value)")
    assert {"euler", "heun", "dpmpp_2m", "unipc", "ddpm"} <= set(solvers)
    assert "digits" in page.inner_text("#ckpt-info") or "10 classes" in page.inner_text("#ckpt-info")


def test_previews_arrive_and_cancel_stops_within_one_step(page, studio):
    page.select_option("#ckpt", "digits/model.safetensors")
    page.select_option("#solver", "euler")
    set_fields(page, steps=1000, batch=128, seed=0, **{"preview-every": 1})
    page.click("#sample-btn")
    page.wait_for_function("window.studio.times.firstPreview !== undefined", timeout=30000)
    page.wait_for_function("window.studio.events.filter(e => e.event === 'progress').length >= 5", timeout=30000)
    assert page.get_attribute("#preview", "src").startswith("data:image/png")
    page.click("#cancel-btn")
    page.wait_for_function("window.studio.lastCancelled !== null", timeout=30000)
    t = page.evaluate("window.studio.times")
    cancelled = page.evaluate("window.studio.lastCancelled")
    job = next(iter(j for j in studio.app.state.studio.jobs.values() if j.kind == "sample" and j.cancel_time))
    step = float(np.median(job.step_seconds))
    first_preview = (t["firstPreview"] - t["click"]) / 1000
    cancel = (t["cancelled"] - t["cancelClick"]) / 1000
    print(json.dumps({"model_step_s": step, "first_preview_s": first_preview, "cancel_s": cancel,
                      "steps_after_cancel": cancelled["steps_after_cancel"]}))  # fmt: skip
    assert cancelled["steps_after_cancel"] <= 1  # the run stopped at the first step boundary after the click
    # in wall time: one model step plus an allowance for HTTP, the event stream and drawing on a busy machine
    assert cancel <= max(job.step_seconds) + 0.5
    assert first_preview <= job.step_seconds[0] + 0.5
    assert cancelled["step"] < 1000
    assert "cancelled after step" in page.inner_text("#status")
    assert page.get_attribute("#result", "src").startswith("data:image/png")  # the state when cancelled
    assert page.is_enabled("#sample-btn")


def test_bad_request_shows_the_error_on_the_page(page):
    set_fields(page, steps=0)
    page.click("#sample-btn")
    page.wait_for_selector("#error:not([hidden])")
    assert "400: steps must be in [1, 1000]" in page.inner_text("#error")
    set_fields(page, steps=4)


def test_sample_then_rerun_from_the_saved_png_gives_the_same_pixels(page, studio, tmp_path):
    page.select_option("#solver", "heun")
    set_fields(page, steps=5, batch=9, seed=11, **{"preview-every": 2})
    page.click("#sample-btn")
    page.wait_for_function("window.studio.lastDone !== null", timeout=60000)
    done = page.evaluate("window.studio.lastDone")
    assert page.evaluate("window.studio.events.filter(e => e.event === 'progress').length") == 3  # steps 1, 3, 5
    assert page.get_attribute("#result", "src") == done["image"]
    first = urllib.request.urlopen(studio.url + done["image"]).read()
    f = tmp_path / "saved.png"
    f.write_bytes(first)
    page.wait_for_function("!document.getElementById('sample-btn').disabled")
    page.set_input_files("#rerun-upload", str(f))
    page.wait_for_function(f"window.studio.lastDone !== null && window.studio.lastDone.name !== '{done['name']}'",
                           timeout=60000)  # fmt: skip
    again = page.evaluate("window.studio.lastDone")
    assert again["params"] == done["params"]
    second = urllib.request.urlopen(studio.url + again["image"]).read()
    assert np.array_equal(pixels(first), pixels(second))
    # the gallery lists both, each with a re-run button
    page.wait_for_selector(f"button.rerun[data-name='{again['name']}']")
    assert page.locator(f"button.rerun[data-name='{done['name']}']").count() == 1


def test_inpaint_a_drawn_mask_keeps_the_unmasked_pixels(page, tmp_path):
    from PIL import Image

    page.wait_for_function("!document.getElementById('inpaint-btn').disabled")
    page.click("#clear-mask")
    box = page.locator("#mask-canvas").bounding_box()
    # drag the brush across the middle rows (cells are 32 px on the 256 px canvas of an 8x8 image)
    page.mouse.move(box["x"] + 40, box["y"] + 112)
    page.mouse.down()
    page.mouse.move(box["x"] + 220, box["y"] + 112, steps=12)
    page.mouse.move(box["x"] + 220, box["y"] + 144, steps=4)
    page.mouse.move(box["x"] + 40, box["y"] + 144, steps=12)
    page.mouse.up()
    mask = np.array(page.evaluate("Array.from(state.mask)")).reshape(8, 8).astype(bool)
    assert 8 <= mask.sum() <= 24 and mask[3:5, 2:6].all()
    # the eraser takes cells back out
    page.check("#tool-eraser")
    page.mouse.click(box["x"] + 40, box["y"] + 112)
    page.check("#tool-brush")
    mask = np.array(page.evaluate("Array.from(state.mask)")).reshape(8, 8).astype(bool)
    assert not mask[3, 1]
    page.select_option("#method", "dps")
    set_fields(page, **{"inpaint-steps": 10, "inpaint-seed": 2})
    page.click("#inpaint-btn")
    page.wait_for_function("window.studio.lastDone !== null && window.studio.lastDone.result", timeout=60000)
    done = page.evaluate("window.studio.lastDone")
    x, src = np.array(done["result_values"])[0], np.array(done["source_values"])[0]
    assert np.abs(x[~mask] - src[~mask]).max() < 1e-6
    assert np.abs(x[mask] - src[mask]).max() > 1e-3
    assert page.get_attribute("#inpaint-result", "src") == done["result"]
    # an uploaded mask of the wrong size is refused with a message on the page
    wrong = tmp_path / "mask.png"
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(wrong)
    page.set_input_files("#mask-upload", str(wrong))
    page.click("#inpaint-btn")
    page.wait_for_selector("#error:not([hidden])")
    assert "the mask is 10x10 pixels but the model's images are 8x8" in page.inner_text("#error")


def test_autotune_and_search_from_the_page(page, studio):
    """Solver ``auto`` tunes and says what it chose; the search panel runs a search, shows the best samples and
    draws the score-versus-calls curve; a searched grid saved for the model is offered in the grid list."""
    import torch

    from diffusio.app.config import load_model
    from diffusio.samplers.tuning import SearchedGrid, model_fingerprint, save_grid

    model, _ = load_model(studio.app.state.studio.root / "rings" / "model.safetensors")
    ts = torch.tensor([0.999, 0.5, 0.1, 0.001], dtype=torch.float64)
    save_grid(SearchedGrid(ts, "heun", 3, 0.0, model_fingerprint(model), method="test"), "browser-rings")
    page.wait_for_function("!document.getElementById('sample-btn').disabled")
    page.select_option("#ckpt", "rings/model.safetensors")
    page.wait_for_function("document.getElementById('ckpt-info').textContent.includes('[2]')")
    names = page.eval_on_selector_all("#grid-names option", "els => els.map(e => e.value)")
    assert "saved:browser-rings" in names and "karras" in names
    page.select_option("#solver", "auto")
    assert page.is_visible("#nfe") and page.is_disabled("#steps")
    set_fields(page, nfe=6, batch=64, seed=2)
    page.click("#sample-btn")
    page.wait_for_function("window.studio.lastDone !== null", timeout=120000)
    done = page.evaluate("window.studio.lastDone")
    plan = done["params"]["plan"]
    assert done["nfe"] <= 6 and plan["solver"] in page.inner_text("#result-caption")
    assert "auto (6 calls)" in page.inner_text("#result-caption")
    assert any(e["event"] == "status" for e in page.evaluate("window.studio.events"))
    # the search panel (self-consistency verifier on a 2-D model)
    page.wait_for_function("!document.getElementById('search-btn').disabled")
    assert page.input_value("#verifier") == "self"
    page.select_option("#strategy", "best_of_n")
    set_fields(page, **{"search-budget": 40, "search-steps": 4, "search-n": 8, "search-seed": 1})
    page.click("#search-btn")
    page.wait_for_function("window.studio.lastDone !== null && window.studio.lastDone.scores", timeout=120000)
    found = page.evaluate("window.studio.lastDone")
    assert found["params"]["strategy"] == "best_of_n" and found["nfe"] <= 40
    assert page.get_attribute("#search-result", "src") == found["image"]
    points = page.get_attribute("#search-curve polyline", "points").split()
    assert len(points) == len(found["history"]) >= 2
    assert "best_of_n" in page.inner_text("#search-caption")
    # a bad search is refused on the page
    set_fields(page, **{"search-budget": 2})
    page.click("#search-btn")
    page.wait_for_selector("#error:not([hidden])")
    assert "below one sample's cost" in page.inner_text("#error")
    set_fields(page, **{"search-budget": 40})
