"""The web console in Chromium: sign in; run echo, tiny-llama (its text arriving in pieces), tiny-sd (its
image) and tiny-esrgan (a file input) from their forms; a bad value's error at its field; cancel; what
one user's console shows of another's; the fleet page for admins only. Every test fails on a console
error (``conftest.page``)."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from tests.browser.conftest import sign_in, user
from tests.integration.conftest import ECHO
from google.protobuf.struct_pb2 import Struct
from warmfleet.v1 import deployments_pb2 as D, deployments_pb2_grpc, models_pb2 as M, predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration

TERMINAL = ("succeeded", "failed", "canceled", "aborted")
PREDICTION_URL = re.compile(r".*/predictions/[a-z0-9]+$")

# Kept by every page of the test (before its scripts run): the output's length and the status each time
# the page changes, so that a test can tell text that came in pieces while running from text that came
# at once at the end.
RECORD_OUTPUT = """
window.__seen = [];
new MutationObserver(function () {
  var out = document.getElementById("output-text"), status = document.getElementById("status");
  if (!out || !status) return;
  window.__seen.push([out.textContent.length, status.textContent]);
  if (!/^(succeeded|failed|canceled|aborted)$/.test(status.textContent)) window.__streamed = out.textContent;
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture
def admin(gateway) -> str:
    return gateway.api.token


async def open_model(page, base: str, token: str, model: str) -> None:
    await sign_in(page, base, token)
    await page.goto(f"{base}/models/{model}")
    await page.get_by_role("heading", name=model).wait_for()


async def run_and_wait(page, expect: str = "succeeded") -> str:
    """Press Run; wait for the prediction's page and for its status to end; returns the page's URL."""
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.wait_for_url(PREDICTION_URL)
    await page.wait_for_function(
        "t => t.includes(document.getElementById('status').textContent)", arg=list(TERMINAL)
    )
    status = await page.locator("#status").text_content()
    assert status == expect, f"{status}: {await page.locator('#result').inner_text()}"
    return page.url


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_a_visitor_signs_in_with_a_token_and_a_wrong_one_is_refused(page, base, admin):
    await page.goto(f"{base}/models")
    await page.wait_for_url(re.compile(r".*/signin\?next=%2Fmodels$"))  # not signed in: to the sign-in page
    page.console_errors.expect_status(401)
    await page.get_by_label("API token", exact=True).fill("wf_not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_text("Could not sign in: unknown token").wait_for()
    assert await page.get_by_label("API token", exact=True).get_attribute("aria-invalid") == "true"
    await sign_in(page, base, admin)
    names = await page.locator("tbody tr td:first-child").all_inner_texts()
    assert {ECHO, "warmfleet/tiny-llama", "warmfleet/tiny-sd"} <= set(names)
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["wf_token"]["httpOnly"] and cookies["wf_token"]["sameSite"] == "Strict"
    await page.get_by_label("Search models", exact=True).fill("llama")
    await page.get_by_label("Search models", exact=True).press("Enter")
    await page.wait_for_url(re.compile(r".*/models\?q=llama$"))
    assert await page.locator("tbody tr td:first-child").all_inner_texts() == ["warmfleet/tiny-llama"]
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(re.compile(r".*/signin$"))
    await page.goto(f"{base}/predictions")
    await page.wait_for_url(re.compile(r".*/signin\?next=%2Fpredictions$"))


async def test_echo_runs_from_its_form_and_shows_its_output_and_code(page, base, admin):
    await open_model(page, base, admin, ECHO)
    assert (
        await page.get_by_label("Chunks", exact=True).input_value() == "1"
    )  # the schema's default, filled in
    await page.get_by_label("Text", exact=True).fill("hello from the console")
    url = await run_and_wait(page)
    assert await page.locator("#output-text").text_content() == "hello from the console"
    api = await page.request.get(f"{base}/v1/predictions/{url.rsplit('/', 1)[-1]}",
                                 headers={"Authorization": f"Bearer {admin}"})
    assert (await api.json())["source"] == "web"  # made in the console, as Replicate says of its own
    assert await page.locator("#metrics").get_by_text("predict time").count() == 1
    await page.get_by_role("tab", name="cURL", exact=True).click()
    curl = await page.get_by_role("tabpanel").inner_text()
    assert f"/v1/models/{ECHO}/predictions" in curl and "hello from the console" in curl
    await page.get_by_role("tab", name="cURL", exact=True).press("ArrowRight")  # the tabs go by keyboard too
    assert "replicate.Client" in await page.get_by_role("tabpanel").inner_text()


async def test_tiny_llama_text_arrives_in_more_than_one_piece_before_it_ends(page, base, admin):
    await page.add_init_script(RECORD_OUTPUT)
    await open_model(page, base, admin, "warmfleet/tiny-llama")
    await page.get_by_label("Prompt", exact=True).fill("Once upon a time")
    # Nearly the model's whole context (1,024), so the generation outlasts the page's connecting to it
    # even on a loaded machine (96 tokens once ended before the EventSource opened).
    await page.get_by_label("Max new tokens", exact=True).fill("1000")
    await page.get_by_label("Min new tokens", exact=True).fill("1000")
    await page.get_by_label("Temperature", exact=True).fill("0")
    await run_and_wait(page)
    seen = await page.evaluate("window.__seen")
    while_running = sorted({n for n, status in seen if n > 0 and status not in TERMINAL})
    assert len(while_running) >= 2, f"the text did not stream: lengths seen while running {while_running}"
    final = await page.locator("#output-text").text_content()
    # The streamed text is the start of the final one, character for character (random tokens make
    # carriage returns and invalid UTF-8, which the page must show as the API returns them).
    streamed = await page.evaluate("window.__streamed")
    at = next((i for i, (a, b) in enumerate(zip(final, streamed)) if a != b), min(len(final), len(streamed)))
    assert final.startswith(streamed), f"the streamed text differs at {at}: {streamed[at - 5:at + 5]!r} " \
                                       f"streamed, {final[at - 5:at + 5]!r} in the output"
    assert len(final) >= while_running[-1] > 0
    assert await page.locator("#metrics").get_by_text("output token count").count() == 1


async def test_tiny_sd_draws_an_image_shown_on_the_page(page, base, admin):
    await open_model(page, base, admin, "warmfleet/tiny-sd")
    await page.get_by_label("Prompt", exact=True).fill("a red fox in the snow")
    for name, value in (("Width", "64"), ("Height", "64"), ("Num inference steps", "1"), ("Seed", "3")):
        await page.get_by_label(name, exact=True).fill(value)
    await page.get_by_label("Scheduler", exact=True).select_option(label="Euler a")
    await run_and_wait(page)
    image = page.locator("#output-images img").first
    await image.wait_for()
    await page.wait_for_function("() => document.querySelector('#output-images img').naturalWidth > 0")
    assert await image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]


async def test_a_file_input_is_previewed_sent_and_upscaled(page, base, admin):
    await open_model(page, base, admin, "warmfleet/tiny-esrgan")
    await page.get_by_label("Image", exact=True).set_input_files(
        {"name": "red.png", "mimeType": "image/png", "buffer": png(16, 12)}
    )
    preview = page.locator("#in-image-preview")
    await preview.wait_for(state="visible")
    assert (await preview.get_attribute("src")).startswith("data:image/png;base64,")
    await run_and_wait(page)
    await page.wait_for_function(
        "() => (document.querySelector('#output-images img') || {}).naturalWidth > 0"
    )
    width, height = await page.locator("#output-images img").first.evaluate(
        "img => [img.naturalWidth, img.naturalHeight]"
    )
    assert width > 16 and width * 12 == height * 16  # upscaled, same shape
    assert "a file: " in await page.locator("section[aria-labelledby=input-h]").inner_text()


async def test_a_bad_value_is_shown_at_its_field_and_the_form_keeps_the_rest(page, base, admin):
    await open_model(page, base, admin, ECHO)
    page.console_errors.expect_status(422)
    await page.get_by_label("Text", exact=True).fill("kept")
    await page.get_by_label("Chunks", exact=True).fill("0")
    await page.get_by_role("button", name="Run", exact=True).click()
    error = page.locator("#in-chunks-error")
    await error.wait_for()
    assert "less than the minimum of 1" in await error.inner_text()
    assert await page.get_by_label("Chunks", exact=True).get_attribute("aria-invalid") == "true"
    assert await page.get_by_label("Text", exact=True).input_value() == "kept"
    await page.get_by_label("Chunks", exact=True).fill(
        "1.5"
    )  # not whole: refused by the form, at the field too
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.get_by_text("must be a whole number").wait_for()
    await page.get_by_label("Text", exact=True).fill("")  # a required field left empty
    await page.get_by_label("Chunks", exact=True).fill("")
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.locator("#in-text-error").get_by_text("required").wait_for()


async def test_a_slow_prediction_is_canceled_from_its_page(page, base, admin):
    await open_model(page, base, admin, ECHO)
    await page.get_by_label("Text", exact=True).fill("slow")
    await page.get_by_label("Delay ms", exact=True).fill("30000")
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.wait_for_url(PREDICTION_URL)
    await page.get_by_role("button", name="Cancel").click()
    await page.wait_for_function("() => document.getElementById('status').textContent === 'canceled'")
    assert await page.get_by_role("button", name="Cancel").count() == 0


async def test_a_users_console_does_not_show_another_users_predictions(page, base, gateway):
    alice, bob = await user(gateway.api, "alice-web"), await user(gateway.api, "bob-web")
    theirs = await alice.create(text="alice's secret")
    await sign_in(page, base, bob.token)
    await page.goto(f"{base}/predictions")
    assert theirs.id not in await page.locator("main").inner_text()
    page.console_errors.expect_status(404)
    await page.goto(f"{base}/predictions/{theirs.id}")
    await page.get_by_role("heading", name="Not found").wait_for()
    assert "alice's secret" not in await page.content()
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(re.compile(r".*/signin$"))
    await sign_in(page, base, alice.token)
    await page.goto(f"{base}/predictions")
    await page.get_by_role("link", name=theirs.id[:12]).click()
    await page.get_by_text("alice's secret").first.wait_for()


async def test_a_form_post_without_its_csrf_token_is_refused(page, base, admin):
    await open_model(page, base, admin, ECHO)
    page.console_errors.expect_status(403)
    await page.locator(".run-form input[name=csrf]").evaluate("el => el.value = 'forged'")
    await page.get_by_label("Text", exact=True).fill("forged")
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.get_by_role("heading", name="Not allowed").wait_for()


async def test_the_fleet_page_is_for_admins_and_updates_itself(page, base, gateway, admin):
    carol = await user(gateway.api, "carol-web")
    await sign_in(page, base, carol.token)
    assert await page.get_by_role("link", name="Fleet", exact=True).count() == 0
    page.console_errors.expect_status(403)
    await page.goto(f"{base}/fleet")
    await page.get_by_role("heading", name="Not allowed").wait_for()
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(re.compile(r".*/signin$"))
    await sign_in(page, base, admin)
    await page.get_by_role("link", name="Fleet", exact=True).click()
    await page.wait_for_url(f"{base}/fleet")
    nodes = page.locator("#fleet table").first
    assert "cpu" in await nodes.inner_text()
    assert ECHO in await page.get_by_role("table", name="Instances by state").inner_text()
    # Marked now, and gone when the part is rendered again: the page follows the fleet by itself.
    await page.locator("#fleet table").first.evaluate("t => t.dataset.old = '1'")
    await page.wait_for_function("() => !document.querySelector('#fleet table[data-old]')")


# Kept by the deployment's page: the instance counts by state each time its part is rendered again.
RECORD_COUNTS = """
window.__counts = [];
new MutationObserver(function () {
  var s = document.getElementById("count-starting"), i = document.getElementById("count-idle");
  if (s && i) window.__counts.push([+s.textContent, +i.textContent]);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


async def test_a_deployment_made_with_the_form_shows_its_instance_set_up_then_idle_and_its_activity(
        page, base, gateway, admin, tmp_path):
    # A model whose setup ends when the test says (echo's setup_waits_for), so "setting up" is on screen.
    gate = tmp_path / "set-up"
    options = Struct()
    options.update({"setup_waits_for": str(gate)})
    await gateway.api.models.CreateModel(M.CreateModelRequest(
        name="test/echo-gated", runner="echo", options=options), metadata=gateway.api.md)
    await page.add_init_script(RECORD_COUNTS)
    await sign_in(page, base, admin)
    await page.get_by_role("link", name="Deployments", exact=True).click()
    await page.get_by_label("Name (owner/name)", exact=True).fill("acme/echo-web")
    await page.get_by_label("Model", exact=True).select_option(label="test/echo-gated")
    await page.get_by_label("Hardware", exact=True).select_option(label="cpu")
    await page.get_by_label("Min instances", exact=True).fill("1")
    await page.get_by_label("Max instances (empty: no limit)", exact=True).fill("1")
    await page.get_by_role("button", name="Create deployment").click()
    await page.wait_for_url(f"{base}/deployments/acme/echo-web")
    await page.wait_for_function("() => document.getElementById('count-starting').textContent === '1'")
    assert await page.locator("#count-idle").text_content() == "0"
    gate.touch()
    await page.wait_for_function("() => document.getElementById('count-idle').textContent === '1'")
    counts = await page.evaluate("window.__counts")
    idle_at = next(i for i, (_, idle) in enumerate(counts) if idle == 1)
    assert [1, 0] in counts[:idle_at] and all(idle == 0 for _, idle in counts[:idle_at])
    assert await page.locator("#count-starting").text_content() == "0"
    assert await page.locator("#activity").get_attribute("data-total") == "0"
    assert await page.locator("#latency").get_attribute("data-points") == "0"
    for text in ("one", "two"):  # through the deployment, by the API: the charts follow
        await gateway.api.predictions.CreatePrediction(P.CreatePredictionRequest(
            deployment="acme/echo-web", wait_s=10, input=T.PredictionInput(echo=T.EchoInput(text=text))),
            metadata=gateway.api.md)
    await page.wait_for_function("() => document.getElementById('activity').dataset.total === '2'")
    assert "2 in all" in await page.locator("#activity").get_attribute("aria-label")
    assert await page.locator("#activity rect").count() >= 1
    # Both completed in the last minute or two: one point per percentile per minute, p50 <= p99.
    latency = page.locator("#latency")
    assert int(await latency.get_attribute("data-points")) >= 1
    assert 0 <= float(await latency.get_attribute("data-p50")) <= float(await latency.get_attribute("data-p99"))
    assert await page.locator("#latency g.series").count() == 3
    assert await page.locator("#queue").get_attribute("data-now") == "0"

    # A new release from the form: two instances at most now.
    await page.get_by_label("Max instances (empty: no limit)", exact=True).fill("2")
    await page.get_by_role("button", name="Update deployment").click()
    await page.wait_for_url(f"{base}/deployments/acme/echo-web")
    assert "1 to 2" in await page.locator("main").inner_text()
    reply = await deployments_pb2_grpc.DeploymentsStub(gateway.api.channel).GetDeployment(
        D.GetDeploymentRequest(name="acme/echo-web"), metadata=gateway.api.md)
    assert reply.max_instances == 2
    await page.get_by_role("button", name="Delete deployment").click()
    await page.wait_for_url(f"{base}/deployments")
    assert "acme/echo-web" not in await page.locator("main").inner_text()


async def focus_by_tab(page, matches: str, most: int = 60) -> None:
    """Press Tab until the focused element matches the CSS selector ``matches``."""
    for _ in range(most):
        await page.keyboard.press("Tab")
        if await page.evaluate("s => document.activeElement.matches(s)", matches):
            return
    raise AssertionError(f"{matches} never took the focus in {most} presses of Tab")


async def test_a_model_runs_with_the_keyboard_alone(page, base, admin):
    await open_model(page, base, admin, ECHO)
    await page.keyboard.press("Tab")  # first the skip link, shown when focused
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    assert await page.locator("a.skip").evaluate("a => a.getBoundingClientRect().left >= 0")
    await focus_by_tab(page, "textarea[name=text], input[name=text]")
    await page.keyboard.type("typed, not clicked")
    await focus_by_tab(page, "button[type=submit]")
    assert await page.evaluate("document.activeElement.textContent") == "Run"
    # The focus ring is drawn (the style sheet's :focus-visible).
    assert await page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    await page.keyboard.press("Enter")
    await page.wait_for_url(PREDICTION_URL)
    await page.wait_for_function("() => document.getElementById('status').textContent === 'succeeded'")
    assert await page.locator("#output-text").text_content() == "typed, not clicked"
    await focus_by_tab(page, "[role=tab]")  # the snippets' tabs follow the arrow keys
    first = await page.evaluate("document.activeElement.textContent")
    await page.keyboard.press("ArrowRight")
    assert await page.evaluate("document.activeElement.textContent") != first
    assert await page.evaluate("document.activeElement.getAttribute('aria-selected')") == "true"


@pytest.mark.parametrize("path", ["/models", f"/models/{ECHO}", "/models/warmfleet/tiny-sd", "/predictions",
                                  "/deployments", "/fleet"])
async def test_every_page_fits_a_narrow_window_without_scrolling_sideways(page, base, admin, path):
    await page.set_viewport_size({"width": 390, "height": 800})
    await sign_in(page, base, admin)
    await page.goto(f"{base}{path}")
    await page.locator("main").wait_for()
    width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{path} is {width[0]} px wide in a {width[1]} px window"
    # Every form field keeps a visible label (or, for a slider beside its number box, a name of its own),
    # and the navigation stays reachable.
    unlabelled = await page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(f => !f.getAttribute('aria-label')
                     && !(f.labels && f.labels.length && f.labels[0].getBoundingClientRect().width > 0))
        .map(f => f.name || f.id)""")
    assert unlabelled == [], f"fields without a visible label on {path}"
    assert await page.get_by_role("link", name="Predictions", exact=True).is_visible()
