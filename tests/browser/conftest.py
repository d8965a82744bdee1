"""The web console in a real browser: Playwright driving Debian's Chromium (``/usr/bin/chromium``,
installed by ``scripts/install.sh``; never Playwright's own download), headless, against a real gateway
and cluster on 127.0.0.1.

The cluster is the integration tests' (``tests/integration/conftest.py``: the same models, the same
``RunningGateway`` and ``user``), imported here, since pytest sees a conftest's fixtures only below its
folder. Two fixtures are this folder's own. A fixture imported into a second conftest is a second
fixture (pytest keys them by folder), so in one run of all the tests the integration tests' session
controller and a session one of ours would both want to be the one named controller actor: ours is per
package, ended after the last browser test (they run first, by name), and is the running one when there
is one (``pytest tests/integration tests/browser``); ``ray_session`` joins a Ray already up.

Every page fails its test on a console error or an uncaught exception (``page``'s teardown)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import ray

from scheduler import ray_adapter
from tests.integration.conftest import (  # noqa: F401 - fixtures, found here by name
    RunningGateway,
    models,
    tiny_annotator_paths,
    tiny_esrgan_dir,
    tiny_llama_dir,
    tiny_sd_lora_dir,
    tiny_sd_paths,
    tiny_sdxl_paths,
    user,
)

CHROMIUM = os.environ.get("WARMFLEET_TEST_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 30_000


@pytest.fixture(scope="session")
def ray_session():
    """The integration tests' Ray, joined when it runs already, else started for this run, and shut
    down at its end (Ray started again in one process does not always come up)."""
    joined = ray.is_initialized()
    if not joined:
        ray_adapter.connect(
            "local", f"warmfleet-test-{uuid.uuid4().hex[:6]}", num_cpus=2, include_dashboard=False
        )
    yield
    if not joined:
        ray.shutdown()


@pytest.fixture(scope="package")
async def controller(ray_session, models, tmp_path_factory):  # noqa: F811 - this folder's own
    """This folder's controller, ended after its last test; the integration tests' when one runs."""
    running = ray_adapter.find_controller()
    if running is not None:
        yield running
        return
    client = ray_adapter.start_controller(
        models, detached=False, cache_dir=str(tmp_path_factory.mktemp("node"))
    )
    await client.start()
    yield client
    await client.shutdown()


@pytest.fixture(scope="module")
async def gateway(controller, tmp_path_factory) -> RunningGateway:
    gw = RunningGateway(tmp_path_factory.mktemp("home"), controller)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture(scope="module")
def base(gateway) -> str:
    return f"http://127.0.0.1:{gateway.gateway.http_port}"


@pytest.fixture(scope="session")
async def browser():
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: scripts/install.sh installs Debian's (apt-get install chromium)"
        )
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield chromium
        await chromium.close()


class ConsoleErrors(list):
    """The console errors and uncaught exceptions a page had, as text. ``expect_status(403)``: a page the
    test means to get with that status (Chromium logs every 4xx document as a console error) is not one."""

    def __init__(self) -> None:
        super().__init__()
        self.expected: set[int] = set()

    def expect_status(self, status: int) -> None:
        self.expected.add(status)

    def unexpected(self) -> list[str]:
        said = tuple(f"the server responded with a status of {s}" for s in self.expected)
        return [e for e in self if not (said and any(s in e for s in said))]


@pytest.fixture
async def page(browser):
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    tab = await context.new_page()
    errors = ConsoleErrors()
    tab.on(
        "console",
        lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None,
    )
    tab.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    tab.console_errors = errors
    yield tab
    await context.close()
    assert not errors.unexpected(), f"the page had console errors: {errors.unexpected()}"


async def sign_in(page, base: str, token: str) -> None:
    """Sign in through the sign-in form, and land on the models page."""
    await page.goto(f"{base}/signin")
    await page.get_by_label("API token", exact=True).fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/models")
