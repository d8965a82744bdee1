"""A screenshot of each console page at 1280x800 (PNG), and the model page's first-visit weight and time.

Both run with the other browser tests and check what they take. They are kept only when asked:
``WARMFLEET_SCREENSHOTS=docs/screenshots`` writes the PNGs there (the README links them), and
``WARMFLEET_CONSOLE_RESULTS=bench/results/console.json`` writes the figures there."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.browser.conftest import VIEWPORT, sign_in
from tests.browser.test_console import PREDICTION_URL, TERMINAL
from warmfleet.v1 import predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration

# The model page's first visit, cold cache: its HTML, style sheet and script. Budget: 64 KiB moved and
# first contentful paint within 1.5 s on the test machine (2 shared CPU cores, the gateway and a cluster
# in the same process). Why: the page is one server-rendered document and two small files of our own (no
# framework, no web font, no image), so it stays a few tens of KiB whatever the schema; 64 KiB is room
# for the largest schema we serve (tiny-sd's, with ControlNet units) twice over, and a page that needs
# more has grown a dependency someone should notice. 1.5 s: the console must feel instant on a
# loopback gateway; what takes longer here is the gateway's loop being busy, which users would feel too.
BUDGET = {"transfer_bytes": 64 * 1024, "first_contentful_paint_ms": 1500.0}


async def test_a_screenshot_of_each_page(page, base, gateway, tmp_path):
    out = Path(os.environ.get("WARMFLEET_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shots = []

    async def shot(name: str) -> None:
        await page.wait_for_load_state("load")
        path = out / f"{name}.png"
        await page.screenshot(path=str(path), full_page=False)
        shots.append(path)

    await page.goto(f"{base}/signin")
    await shot("signin")
    await sign_in(page, base, gateway.api.token)
    await shot("models")
    await page.goto(f"{base}/models/warmfleet/tiny-sd")
    await shot("model-tiny-sd")
    await page.goto(f"{base}/models/warmfleet/tiny-llama")
    await page.get_by_label("Prompt", exact=True).fill("Once upon a time")
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.wait_for_url(PREDICTION_URL)
    await page.wait_for_function(
        "t => t.includes(document.getElementById('status').textContent)", arg=list(TERMINAL)
    )
    await shot("prediction-tiny-llama")
    await page.goto(f"{base}/models/warmfleet/tiny-sd")
    await page.get_by_label("Prompt", exact=True).fill("a red fox in the snow")
    for name, value in (("Width", "64"), ("Height", "64"), ("Num inference steps", "2")):
        await page.get_by_label(name, exact=True).fill(value)
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.wait_for_url(PREDICTION_URL)
    await page.wait_for_function(
        "() => (document.querySelector('#output-images img') || {}).naturalWidth > 0"
    )
    await shot("prediction-tiny-sd")
    await page.goto(f"{base}/predictions")
    await shot("predictions")
    await page.goto(f"{base}/deployments")
    await shot("deployments")
    await page.get_by_label("Name (owner/name)", exact=True).fill("acme/echo-shot")
    await page.get_by_label("Min instances", exact=True).fill("1")
    await page.get_by_role("button", name="Create deployment").click()
    await page.wait_for_url(f"{base}/deployments/acme/echo-shot")
    await page.wait_for_function("() => document.getElementById('count-idle').textContent === '1'")
    for text in ("one", "two", "three"):  # some activity for its charts
        await gateway.api.predictions.CreatePrediction(P.CreatePredictionRequest(
            deployment="acme/echo-shot", wait_s=10, input=T.PredictionInput(echo=T.EchoInput(text=text))),
            metadata=gateway.api.md)
    await page.wait_for_function("() => document.getElementById('activity').dataset.total === '3'")
    await shot("deployment")
    await page.goto(f"{base}/fleet")
    await shot("fleet")
    for path in shots:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (VIEWPORT["width"], VIEWPORT["height"]), path


async def test_the_model_page_first_visit_is_within_its_budget(browser, base, gateway):
    context = await browser.new_context(viewport=VIEWPORT)  # a new profile: nothing cached
    try:
        host = re.sub(r"^https?://", "", base).split(":")[0]
        await context.add_cookies(
            [
                {
                    "name": "wf_token",
                    "value": gateway.api.token,
                    "domain": host,
                    "path": "/",
                    "httpOnly": True,
                    "sameSite": "Strict",
                }
            ]
        )
        page = await context.new_page()
        started = time.perf_counter()
        await page.goto(f"{base}/models/warmfleet/tiny-sd")
        await page.wait_for_function(
            "() => performance.getEntriesByName('first-contentful-paint').length > 0"
        )
        wall_ms = (time.perf_counter() - started) * 1000
        figures = await page.evaluate("""() => {
          const nav = performance.getEntriesByType('navigation')[0];
          const resources = performance.getEntriesByType('resource');
          return {
            document_bytes: nav.transferSize,
            resources: resources.map(r => ({name: new URL(r.name).pathname, transfer_bytes: r.transferSize})),
            transfer_bytes: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
            first_contentful_paint_ms: performance.getEntriesByName('first-contentful-paint')[0].startTime,
            dom_content_loaded_ms: nav.domContentLoadedEventEnd,
          };
        }""")
    finally:
        await context.close()
    figures["wall_to_first_paint_ms"] = round(wall_ms, 1)
    result = {
        "scenario": "console-model-page-first-visit",
        "command": "WARMFLEET_CONSOLE_RESULTS=bench/results/console.json HF_HUB_OFFLINE=1 "
                   ".venv/bin/python -m pytest -q tests/browser/test_screenshots.py -k budget",
        "page": "/models/warmfleet/tiny-sd",
        "browser": "Debian Chromium, headless, 1280x800",
        "budget": BUDGET,
        **figures,
        "within_budget": all(figures[k] <= v for k, v in BUDGET.items()),
    }
    if os.environ.get("WARMFLEET_CONSOLE_RESULTS"):
        Path(os.environ["WARMFLEET_CONSOLE_RESULTS"]).write_text(json.dumps(result, indent=2) + "\n")
    assert {r["name"] for r in figures["resources"]} == {"/static/console.css", "/static/console.js"}
    assert 0 < figures["transfer_bytes"] <= BUDGET["transfer_bytes"], result  # bytes: the same on any machine
    # Time is a figure, not a test (a shared machine's load would decide it): recorded, with its budget,
    # in bench/results/console.json (WARMFLEET_CONSOLE_RESULTS) and checked there.
    assert figures["first_contentful_paint_ms"] > 0, result
