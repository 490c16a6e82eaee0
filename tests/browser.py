"""Headless Chromium from the system's packages, driven by Playwright, for the playground tests.

Playwright's own browser download does not work on these machines, so the tests launch Debian's
`chromium` (/usr/bin/chromium). Without it they skip, unless REQUIRE_BROWSER=1 (CI) says a
missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

# The flags Chromium needs here: no sandbox as root, no GPU, and no background connections,
# which this machine's closed network refuses (machines/python-svc.md).
LAUNCH_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
OUTPUT = Path(__file__).resolve().parent.parent / "test-output" / "playground"


def chromium_path() -> str:
    """The system Chromium, or a skip (a failure under REQUIRE_BROWSER=1) saying what is missing."""
    problem = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problem = "Playwright is not installed (pip install -e '.[test]')"
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if problem is None and not Path(path).is_file():
        problem = "no Chromium at /usr/bin/chromium (apt-get install chromium)"
    if problem is not None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test needs a browser, and REQUIRE_BROWSER=1: {problem}")
        pytest.skip(f"browser test skipped: {problem}")
    return path


@asynccontextmanager
async def open_page(url: str, *, width: int = 1400, height: int = 1000) -> AsyncIterator[Page]:
    """A fresh headless Chromium (own temporary profile) with one page at `url`."""
    from playwright.async_api import async_playwright

    executable = chromium_path()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(LAUNCH_ARGS)
        )
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(url)
            yield page
            assert not errors, f"the page threw: {errors}"
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    """Save a screenshot under test-output/playground/ (gitignored) and return its path."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name) + ".png")
    await page.screenshot(path=str(path))
    return path
