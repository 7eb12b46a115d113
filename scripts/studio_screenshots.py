"""Screenshots of the running studio for the docs (docs/img/): a sampling run with its x0 preview, an
inpainting result, and a search (digits classifier verifier) with its score curve. Needs Debian's chromium and a checkpoint folder:

    python scripts/studio_screenshots.py --root runs --ckpt digits/model.safetensors --out docs/img
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_ui import LiveServer
from tests.test_ui_browser import CHROMIUM


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--ckpt", required=True, help="a checkpoint under --root (relative path)")
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    srv = LiveServer(args.root)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(srv.url)
            page.wait_for_selector("body[data-ready='1']")
            page.select_option("#ckpt", args.ckpt)
            page.wait_for_timeout(500)
            # a finished run first (the result and the gallery), then a long one caught mid-way (the preview)
            page.select_option("#solver", "dpmpp_2m")
            for k, v in {"steps": 12, "batch": 36, "seed": 3}.items():
                page.fill(f"#{k}", str(v))
            page.click("#sample-btn")
            page.wait_for_function("window.studio.lastDone !== null", timeout=120000)
            page.select_option("#solver", "euler")
            for k, v in {"steps": 400, "seed": 5, "preview-every": 5}.items():
                page.fill(f"#{k}", str(v))
            page.click("#sample-btn")
            page.wait_for_function("window.studio.events.filter(e => e.event === 'progress').length >= 30")
            page.screenshot(path=str(out / "studio.png"), full_page=False)
            page.click("#cancel-btn")
            page.wait_for_function("window.studio.lastCancelled !== null")
            page.wait_for_function("!document.getElementById('inpaint-btn').disabled")
            page.fill("#source-index", "7")
            page.dispatch_event("#source-index", "change")
            page.wait_for_timeout(500)
            box = page.locator("#mask-canvas").bounding_box()
            page.fill("#brush-size", "2")
            page.mouse.move(box["x"] + 40, box["y"] + 150)
            page.mouse.down()
            page.mouse.move(box["x"] + 220, box["y"] + 150, steps=15)
            page.mouse.up()
            page.select_option("#method", "dps")
            page.fill("#inpaint-steps", "100")
            page.click("#inpaint-btn")
            page.wait_for_function("window.studio.lastDone !== null && window.studio.lastDone.result", timeout=300000)
            page.locator("#inpaint-panel").screenshot(path=str(out / "studio_inpaint.png"))
            page.wait_for_function("!document.getElementById('search-btn').disabled")
            page.select_option("#strategy", "zero_order")
            for k, v in {"search-label": 3, "search-budget": 400, "search-n": 16, "search-steps": 10}.items():
                page.fill(f"#{k}", str(v))
            page.click("#search-btn")
            page.wait_for_function("window.studio.lastDone !== null && window.studio.lastDone.scores", timeout=300000)
            page.locator("#search-panel").screenshot(path=str(out / "studio_search.png"))
            browser.close()
    finally:
        srv.stop()
    print(f"wrote {out / 'studio.png'}, {out / 'studio_inpaint.png'} and {out / 'studio_search.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
