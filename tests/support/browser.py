"""Real headless Chromium (Debian's package) driven by Playwright, with a fake camera clip."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Measured on these machines (ARCHITECTURE.md): these flags let headless Chromium stream a fake camera to aiortc
# on loopback without touching the network.
FLAGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-sandbox",
    # A backgrounded headless tab would otherwise throttle timers and the encoder.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


# The page marks its connection state on the pill; waiting on a selector needs no eval (the page's CSP forbids it).
CONNECTED = "#conn-state[data-state=connected]"


def chromium_args(clip: Path | None) -> list[str]:
    args = list(FLAGS)
    if clip is not None:
        args.append(f"--use-file-for-fake-video-capture={clip}")
    return args


def have_chromium() -> bool:
    return Path(CHROMIUM).exists()


async def join_and_start(page, join_url: str) -> None:  # type: ignore[no-untyped-def]
    """What a candidate does: open the link, consent, pass the camera check, take the photo, start."""
    await page.goto(join_url)
    await page.check("#consent-box")
    await page.click("#consent-btn")
    await page.wait_for_selector("#photo-btn:not([disabled])", timeout=30_000)
    await page.click("#photo-btn")
    await page.wait_for_selector("#step-exam:not([hidden])", timeout=15_000)
    await page.click("#start-btn")
    await page.wait_for_selector(CONNECTED, timeout=20_000)
