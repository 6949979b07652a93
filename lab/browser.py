"""Headless Chromium for the LAN map's tests and benchmark: Debian's `chromium`, driven by
Playwright (pip `playwright`; its own browser downloads are never used)."""
from __future__ import annotations

import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# What Chromium needs here as root, and to not hang on network connections it would open itself
# (updates, sync, QUIC probes): this machine reaches no network but its package registries.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


def launch(playwright):
    """A headless Chromium browser (each new context gets a fresh profile)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=list(CHROMIUM_ARGS))


class MapPage:
    """One tab on the map, recording the requests it makes and the errors it meets."""

    def __init__(self, browser, url: str, artefacts: Path | None = None):
        self.context = browser.new_context(viewport={"width": 1400, "height": 860})
        self.page = self.context.new_page()
        self.artefacts = artefacts
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.goto(url)

    def wait_for(self, script: str, arg=None, timeout: int = 15_000) -> None:
        """Until `script` (a JavaScript function of `arg`) is true. Polled from here: the page's
        Content-Security-Policy forbids the eval that Playwright's wait_for_function uses."""
        deadline = time.monotonic() + timeout / 1000
        while not self.page.evaluate(script, arg):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {script[:200]} ({arg})")
            self.page.wait_for_timeout(50)

    def rendered(self):
        self.wait_for("() => window.megalosMap && window.megalosMap.stats.renders > 0")

    def labels(self, kind: str) -> dict[str, str]:
        """Element label -> its state class (s-converged...) or node class (up/down)."""
        return self.page.evaluate("""(kind) => Object.fromEntries(
            [...document.querySelectorAll(`#map [data-kind="${kind}"]`)].map((el) => [
              (el.querySelector(kind === "node" ? ".node-title" : kind === "lan" ? ".label" : "text")
                 || el).textContent,
              [...el.classList].find((c) => c.startsWith("s-") || c === "up" || c === "down")]))""",
                                  kind)

    def shot(self, name: str) -> None:
        """A screenshot into the artefacts directory, as <name>.png."""
        self.page.screenshot(path=str(self.artefacts / f"{name}.png"))

    def close(self) -> None:
        self.context.close()
