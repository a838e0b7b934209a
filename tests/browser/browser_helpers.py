"""What the browser tests share: Debian's Chromium headless through Playwright, the launcher
(``python -m memguard.ui``) on a free port, and a :class:`Session` that records dialogs, page errors and off-machine
requests. Skips, with the reason, when Playwright or ``/usr/bin/chromium`` is missing; Playwright's own browser
download is never used."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT_S = 180
# `make test` names the WebUI host whose Python stack runs the tests (.venv-a1111, .venv-forge); unset on our own.
HOST_STACK = os.environ.get("MEMGUARD_HOST_STACK", "")
RUN_TIMEOUT_MS = 300_000


def screenshot_path(name: str) -> Path:
    """Where a test saves the picture ``name``: ``out/<stack>/`` (``out/ours/`` on our own stack), so that a test
    run leaves the checkout as it was; ``docs/`` (the README shows it) with ``MEMGUARD_DOCS_SCREENSHOTS=1`` on our
    own stack (``make screenshots``)."""
    to_docs = os.environ.get("MEMGUARD_DOCS_SCREENSHOTS") == "1" and not HOST_STACK
    folder = REPO / "docs" if to_docs else REPO / "out" / (HOST_STACK or "ours")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def sync_playwright_api():
    try:
        from playwright import sync_api
    except ImportError as err:
        pytest.skip(f"playwright is not importable ({err}); pip install playwright")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing; apt-get install -y chromium")
    return sync_api


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_served(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the launcher exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the launcher did not serve {url} in {START_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-4000:]}")


@contextlib.contextmanager
def serve(command: list[str], log: Path, port: int) -> Iterator[str]:
    """Run a page server (``command``, output to ``log``) until it serves ``http://127.0.0.1:port/``; stop it after."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as handle:
        proc = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_served(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


class Session:
    """One page on the launcher, with the dialogs, page errors and off-machine requests it saw."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.offsite: list[str] = []
        self.console: list[str] = []  # shown with a failing test's report (see conftest.py)
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        self.page.on("dialog", self._on_dialog)
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.page.on("request", self._on_request)
        self.page.goto(url)
        self.page.locator("#tabs button", has_text="Memorization").click()
        self.page.wait_for_selector("#memguard_prompt textarea")

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _on_request(self, req) -> None:
        if not req.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            self.offsite.append(req.url)

    def prompt(self) -> str:
        return self.page.input_value("#memguard_prompt textarea")

    def analyze(self, prompt: str, seeds: int = 2) -> None:
        self.page.fill("#memguard_prompt textarea", prompt)
        self.page.fill("#memguard_seeds input", str(seeds))
        self.page.click("#memguard_analyze")
        self.page.wait_for_selector("#memguard_analysis .memguard-prompt", timeout=RUN_TIMEOUT_MS)

    def upload(self, elem_id: str, path: Path) -> None:
        """Put ``path`` into the ``gr.File`` with ``elem_id`` and wait until the component shows its name (gradio 3
        writes it as one text, gradio 4 splits stem and extension into two spans with a space between)."""
        self.page.set_input_files(f"#{elem_id} input[type=file]", str(path))
        shown = "([id, name]) => (document.getElementById(id)?.textContent || '').replace(/\\s+/g, '').includes(name)"
        self.page.wait_for_function(shown, arg=[elem_id, path.name], timeout=30_000)

    def subtab(self, name: str) -> None:
        self.page.locator("#memguard_tabs .tab-nav button", has_text=name).click()
