"""Redraw the README's picture of the playground: `python -m tests.playground_screenshot [PATH]`.

It runs the demo, waits for the watcher's first stale notice in #kps-alerts, asks `/kps` there
so a page of tasks shows under it, and saves the window (default docs/playground.png).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bot.sandbox.demo import Demo, DemoOptions
from tests.browser import open_page

DEFAULT = Path(__file__).resolve().parent.parent / "docs" / "playground.png"


async def capture(path: Path) -> None:
    """Run the demo and save the screenshot to `path`."""
    from playwright.async_api import expect

    options = DemoOptions(port=0, bot_port=0, sim_port=0, seed=6)
    async with Demo(options) as demo, open_page(demo.url, width=1440, height=1480) as page:
        await page.get_by_role("button", name="# kps-alerts").click()
        acknowledge = page.get_by_role("button", name="Acknowledge")
        notice = page.locator("#messages .msg", has=acknowledge).first
        await expect(notice).to_be_visible(timeout=20_000)
        await page.fill("#composer-input", "/kps")
        await page.press("#composer-input", "Enter")
        listing = page.locator("#messages .msg.ephemeral")
        await expect(listing).to_contain_text("Showing 1–10 of", timeout=20_000)
        await page.wait_for_timeout(300)  # let the last frame paint
        path.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(path))
    print(f"saved {path}")


if __name__ == "__main__":
    asyncio.run(capture(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
