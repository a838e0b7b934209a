"""The Memorization tab in a real browser: Debian's Chromium driven by Playwright against ``python -m memguard.ui``.

Skipped, with the reason, when Playwright or ``/usr/bin/chromium`` is missing (CI installs both). Playwright's own
browser download is never used. The model is the bundled miniature when it exists, else the tiny random one.
Writes ``docs/tab.png``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from memguard.miniature import MODEL_DIR

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ATTACK = "<img src=x onerror=alert(1)>"
FALLBACK_PROMPT = "a photo of a cat, sitting on a red sofa, oil painting"
START_TIMEOUT_S = 180
RUN_TIMEOUT_MS = 300_000


def _sync_api():
    try:
        from playwright import sync_api
    except ImportError as err:
        pytest.skip(f"playwright is not importable ({err}); pip install playwright")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing; apt-get install -y chromium")
    return sync_api


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memorized_prompt() -> str:
    listed = MODEL_DIR / "prompts" / "memorized.txt"
    if listed.is_file():
        lines = [line for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines:
            return lines[0]
    return FALLBACK_PROMPT


def _wait_until_served(url: str, proc: subprocess.Popen, log: Path) -> None:
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


@pytest.fixture(scope="module")
def sync_api():
    return _sync_api()


@pytest.fixture(scope="module")
def server(sync_api, request, tmp_path_factory) -> Iterator[str]:
    model = MODEL_DIR if (MODEL_DIR / "unet").is_dir() else request.getfixturevalue("tiny_dir")
    folder = tmp_path_factory.mktemp("launcher")
    log = folder / "launcher.log"
    port = _free_port()
    command = [sys.executable, "-m", "memguard.ui", "--model", str(model), "--port", str(port)]
    command += ["--store", str(folder / "calibration.json")]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as handle:
        proc = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_served(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def browser(sync_api):
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Session:
    """One page on the launcher, with the dialogs, page errors and off-machine requests it saw."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.offsite: list[str] = []
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

    def subtab(self, name: str) -> None:
        self.page.locator("#memguard_tabs .tab-nav button", has_text=name).click()


@pytest.fixture
def session(browser, server):
    s = Session(browser, server)
    yield s
    s.page.close()


def _strongest_word(page):
    words = page.locator("#memguard_analysis .memguard-word")
    levels = [int(c.split("memguard-heat-")[1][0]) for c in words.evaluate_all("ws => ws.map(w => w.className)")]
    return words.nth(levels.index(max(levels)))


def test_calibrate_analyze_edit_words_and_send_to_txt2img(session):
    page = session.page
    session.subtab("Calibrate")
    page.click("#memguard_calibrate")
    page.wait_for_selector("#memguard_calibration .memguard-hist", timeout=RUN_TIMEOUT_MS)
    assert "Calibrated" in page.text_content("#memguard_calibration")
    session.subtab("Analyze")

    prompt = _memorized_prompt()
    session.analyze(prompt, seeds=2)
    analysis = page.text_content("#memguard_analysis")
    assert "Not calibrated" not in analysis and page.locator("#memguard_analysis .memguard-seeds tbody tr").count() == 2

    word = _strongest_word(page)
    text, start = word.get_attribute("data-word"), int(word.get_attribute("data-start"))
    assert prompt[start : start + len(text)] == text
    word.click()
    page.wait_for_selector(".memguard-menu")
    page.screenshot(path=str(REPO / "docs" / "tab.png"), full_page=True)
    page.locator(".memguard-menu-item", has_text="Remove").click()
    edited = session.prompt()
    assert edited != prompt and edited.count(text) == prompt.count(text) - 1
    assert "memguard-removed" in word.get_attribute("class")

    other = page.locator("#memguard_analysis .memguard-word:not(.memguard-removed)").last
    other_text = other.get_attribute("data-word")
    other.click()
    page.locator(".memguard-menu-item", has_text="De-emphasize").click()
    assert f"[{other_text}]" in session.prompt()

    final = session.prompt()
    page.click("#memguard_send")
    page.wait_for_selector("#txt2img_prompt textarea", state="visible")
    assert page.input_value("#txt2img_prompt textarea") == final

    page.fill("#txt2img_prompt textarea", "pasted back from txt2img")
    page.locator("#tabs button", has_text="Memorization").click()
    page.click("#memguard_paste")
    page.wait_for_function("document.querySelector('#memguard_prompt textarea').value.startsWith('pasted back')")
    assert session.errors == [] and session.dialogs == [] and session.offsite == []


def test_injected_prompt_is_shown_as_text_and_runs_nothing(session, tmp_path):
    page = session.page
    session.analyze(f"a cat {ATTACK} on a sofa", seeds=1)
    shown = page.locator("#memguard_analysis .memguard-prompt")
    assert shown.text_content() == f"a cat {ATTACK} on a sofa"
    assert page.locator("#memguard_analysis img").count() == 0

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f'a cat\n{ATTACK}\n"><script>alert(1)</script>\n', encoding="utf-8")
    session.subtab("Batch audit")
    page.set_input_files("#memguard_audit_file input[type=file]", str(prompts))
    page.wait_for_selector("#memguard_audit_file >> text=prompts.txt")
    page.click("#memguard_audit")
    page.wait_for_selector("#memguard_audit_summary .memguard-hist", timeout=RUN_TIMEOUT_MS)
    assert "Audited 3 prompts" in page.text_content("#memguard_audit_summary")
    link = page.wait_for_selector("#memguard_audit_csv a", timeout=30_000)
    report = page.request.get(link.get_attribute("href")).text().splitlines()
    assert report[0] == "index,prompt,score,threshold,flagged,seed_scores" and len(report) == 4
    table = page.locator("#memguard_audit_table")
    assert ATTACK in table.text_content()
    assert table.locator("img").count() == 0 and table.locator("script").count() == 0
    page.wait_for_timeout(1000)
    assert session.dialogs == [] and session.errors == []


EDITS = [
    ("remove", "a big cat", "big", "a cat"),
    ("remove", "a cat, sitting", "cat", "a, sitting"),
    ("remove", "a, cat, b", "cat", "a, b"),
    ("remove", "cat, b", "cat", "b"),
    ("remove", "a, cat", "cat", "a"),
    ("remove", "cat", "cat", ""),
    ("deemphasize", "a big cat", "big", "a [big] cat"),
    ("deemphasize", "[big] cat", "big", "[[big]] cat"),
]


def test_prompt_edit_functions(session):
    """memguard.js's string edits, run in the page: the seam left by a removed word is tidied."""
    for action, prompt, word, expected in EDITS:
        start = prompt.index(word)
        fn = "removeWord" if action == "remove" else "deemphasizeWord"
        got = session.page.evaluate(f"([p, s, e]) => window.memguard.{fn}(p, s, e)", [prompt, start, start + len(word)])
        assert got == expected, (action, prompt, word)
    located = session.page.evaluate("() => window.memguard.locateWord('a cat and a cat', 'cat', 11)")
    assert located == 12
