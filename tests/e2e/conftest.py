"""Browser tests: headless Chromium from Debian, driven by Playwright, against the live server."""

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from playwright.sync_api import Page, expect

from tests.billing.conftest import localstripe_url, stripe_api  # noqa: F401
from tests.capacity.conftest import catalog  # noqa: F401

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(
    os.environ.get("SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / "var" / "screenshots")
)

# Pages wait on the worker (e-mail, provisioning, refunds) and poll every few seconds.
expect.set_options(timeout=10_000)

# Playwright's sync API runs an event loop in this thread; the test's own database reads are
# still ordinary synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def fill_card(page: Page, number: str) -> None:
    """Type a test card into localstripe's card Element: number, expiry, CVC, postal code."""
    fields = page.locator("#card-element input")
    for index, value in enumerate([number, "12", "34", "123", "94105"]):
        fields.nth(index).fill(value)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        message = "Chromium is not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("BROWSER_TESTS_REQUIRED") == "1":
            # Where Chromium was meant to be installed, a missing browser is a failure.
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.set_default_timeout(20_000)
    yield page
    context.close()


SCREENSHOTS_TAKEN = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def screenshots(browser: object, request: pytest.FixtureRequest) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nScreenshots: {SCREENSHOTS}")
    request.config.stash[SCREENSHOTS_TAKEN] = True
    return SCREENSHOTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Output captured from a passing test is not shown, so the folder is named here as well.
    if terminalreporter.config.stash.get(SCREENSHOTS_TAKEN, False):
        terminalreporter.write_line(f"Browser test screenshots: {SCREENSHOTS}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.call_failed = report.failed
    return report


@pytest.fixture
def new_page(browser, request: pytest.FixtureRequest) -> Iterator[Callable[..., object]]:
    """`new_page()` opens a page in a fresh browser context: another person, with their own
    cookies. Keyword arguments go to the context (a phone-sized viewport, permissions).
    When the test fails, each page is saved as it was, to show what the browser showed."""
    contexts = []

    def make(**options: object) -> object:
        context = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **options})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        return page

    yield make
    for index, context in enumerate(contexts, 1):
        if getattr(request.node, "call_failed", False):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            for page in context.pages:
                page.screenshot(path=SCREENSHOTS / f"failed-{request.node.name}-{index}.png")
        context.close()


@pytest.fixture
def celery_worker(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A real Celery worker (a thread of this process) consuming every queue of the test broker,
    so e-mail, webhooks, provisioning and refunds run as queued tasks, not inline."""
    from celery.contrib.testing.worker import start_worker

    from portal.celery import app as celery_app

    monkeypatch.setattr(celery_app.conf, "task_always_eager", False)
    options = celery_app.conf.broker_transport_options
    if options and "data_folder_in" in options:
        # The on-disk broker is polled; a short interval keeps the journey's many hops quick.
        monkeypatch.setitem(options, "polling_interval", 0.1)
    queues = [queue.name for queue in settings.CELERY_TASK_QUEUES]
    with start_worker(
        celery_app, perform_ping_check=False, queues=queues, shutdown_timeout=30
    ) as worker:
        yield worker
