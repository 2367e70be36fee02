"""The console in a real browser: the whole stack as processes (the console among them), and
Debian's Chromium driven by Playwright. Without Chromium these tests skip, saying why."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from paylayer.catalogue import Catalogue, load_catalogue
from paylayer.settings import REPO_ROOT
from tests.fakes.bot_api import FakeBotApi
from tests.stack import Stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "browser tests skipped: no Chromium on PATH (apt-get install -y chromium)"
# Kept after the run, for a person to look at (CI keeps the folder as an artefact).
SCREENSHOTS = REPO_ROOT / ".paylayer" / "test-artifacts" / "screenshots"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM is None:
        skip = pytest.mark.skip(reason=SKIP_REASON)
        for item in items:
            if Path(__file__).parent in Path(str(item.path)).parents:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if CHROMIUM is None:
        terminalreporter.write_line(SKIP_REASON)


@pytest.fixture(scope="module")
def catalogue(stack: Stack) -> Catalogue:
    return load_catalogue(stack.settings.catalogue_path)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(autouse=True)
def fresh_bot_api(bot_api: FakeBotApi) -> None:
    bot_api.reset()


@pytest.fixture(scope="session")
def console_url(stack: Stack) -> str:
    return f"http://{stack.instances['console'].listen_addr}"


@pytest.fixture(scope="session")
def screenshots() -> Iterator[Path]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield SCREENSHOTS
    print(f"\nconsole screenshots: {SCREENSHOTS}")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        # Root in CI containers: Chromium's sandbox needs user namespaces it may not have.
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh browser context (no cookies) at 1280x800; console errors fail the test."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    problems: list[str] = []
    # A CSP refusal or a script error; a page answered 401 or 404 on purpose is not one.
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page
    await context.close()
    # A CSP violation or a script error shows up here: the console must run clean.
    assert problems == []


async def sign_in(page: Any, console_url: str, token: str, name: str = "alice") -> None:
    await page.goto(f"{console_url}/")
    await page.fill("input[name=name]", name)
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
    await page.wait_for_selector("h1:has-text('Overview')")
