"""README's picture of the demo: ``hf-spam demo``'s app on a model folder, a message typed into it and the answer,
as seen by a real headless Chromium (Debian's, through Playwright).

    python scripts/demo_screenshot.py --model runs/tiny [--output docs/demo.png]
"""

from __future__ import annotations

import argparse
import re
import socket

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MESSAGE = "WINNER!! You have been selected for a FREE holiday. Call 09061701461 now to claim your prize!"


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask_in_browser(url: str, message: str, screenshot: str | None = None) -> dict:
    """Open the demo at ``url``, click each example, type ``message`` and press Classify: what the page then shows
    (``examples``: the box's text after each click, ``label``, ``confidences``) and, at ``screenshot``, a PNG."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 680})
            page.goto(url, wait_until="networkidle")
            box, examples = page.locator("#message textarea"), []
            for example in page.locator("#examples button").all():
                before = box.input_value()
                example.click()
                expect(box).not_to_have_value(before)  # the app fills the box a moment later
                examples.append(box.input_value())
            box.fill(message)
            expect(box).to_have_value(message)
            page.locator("#classify").click()
            shown = page.locator("#label [data-testid='label-output-value']")
            expect(shown).to_have_text(re.compile(r"\S"), timeout=60_000)
            expect(page.locator("#label [data-testid='status-tracker']")).to_have_class(re.compile(r"\bhide\b"))
            meters = page.locator("#label meter").all()
            seen = {"examples": examples, "label": shown.inner_text().strip(),
                    "confidences": {m.get_attribute("aria-label"): float(m.get_attribute("value")) for m in meters}}
            if screenshot:
                page.wait_for_timeout(1000)  # the answer's fade-in
                page.screenshot(path=screenshot, full_page=True)
            return seen
        finally:
            browser.close()


def main() -> None:
    from hf_spam.demo import build_demo
    from hf_spam.predict import SpamClassifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder (or Hub id)")
    parser.add_argument("--output", default="docs/demo.png", help="the PNG to write (default docs/demo.png)")
    parser.add_argument("--message", default=MESSAGE, help="what to type")
    args = parser.parse_args()
    port = free_port()
    demo = build_demo(SpamClassifier.from_pretrained(args.model, device="cpu"), args.model)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        seen = ask_in_browser(f"http://127.0.0.1:{port}", args.message, args.output)
        print(f"{args.output}: the page shows {seen['label']}")
    finally:
        demo.close()


if __name__ == "__main__":
    main()
