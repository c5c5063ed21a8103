"""Driving Debian's Chromium through Playwright in the end-to-end tests.

The daemon runs in the test's event loop, and Playwright's async API shares it. axe-core
(npm, tests/browser) is injected into each page checked; the pages' own CSP allows no
script, so the browser context the tests use bypasses CSP for the test tooling only.
Screenshots of the main pages, at phone and desktop widths, go to one folder
(`ALLIANCE_SCREENSHOTS`, else artifacts/screenshots), which CI keeps.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")    # Debian's package
AXE = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = Path(os.environ.get("ALLIANCE_SCREENSHOTS") or ROOT / "artifacts" / "screenshots")
WIDTHS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}


def browser_or_skip() -> None:
    """Skip, saying why, where Chromium, Playwright or axe-core is missing; in CI they
    must be there (`.ci/run` installs them)."""
    missing = []
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the Python package playwright")
    if not CHROMIUM.exists():
        missing.append(f"Debian's chromium ({CHROMIUM})")
    if not AXE.exists():
        missing.append("axe-core (npm ci --prefix tests/browser)")
    if missing:
        if os.environ.get("CI"):
            raise RuntimeError("CI needs " + ", ".join(missing))
        pytest.skip("no " + ", ".join(missing))


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium and one browser context (phone width first)."""
    browser_or_skip()
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                               args=["--no-sandbox"])
        try:
            context = await browser.new_context(bypass_csp=True, viewport=WIDTHS["desktop"])
            yield context
        finally:
            await browser.close()


async def axe_problems(page: Any) -> list[str]:
    """The serious and critical accessibility violations axe-core finds in the page."""
    await page.add_script_tag(content=AXE.read_text())
    result = await page.evaluate("async () => await axe.run(document)")
    return [f"{v['id']} ({v['impact']}): {v['help']} — {len(v['nodes'])} node(s)"
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


async def shoot(page: Any, name: str) -> list[Path]:
    """Screenshots of the page at phone and desktop widths; the paths written."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^a-z0-9_-]+", "-", name.lower())
    written = []
    for width, size in WIDTHS.items():
        await page.set_viewport_size(size)
        path = SHOTS / f"{safe}-{width}.png"
        await page.screenshot(path=str(path), full_page=True)
        written.append(path)
    await page.set_viewport_size(WIDTHS["desktop"])
    return written


async def check_page(page: Any, name: str) -> None:
    """What every main page must hold: no serious or critical axe violation, a phone
    width with no sideways scrolling, and its screenshots kept."""
    problems = await axe_problems(page)
    assert problems == [], f"{name}: {problems}"
    await page.set_viewport_size(WIDTHS["phone"])
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name} scrolls sideways on a phone by {overflow}px"
    await shoot(page, name)
