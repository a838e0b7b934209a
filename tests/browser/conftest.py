"""Fixtures of the browser tests: one launcher for the session, one Chromium per module (see ``browser_helpers``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, Session, free_port, serve, sync_playwright_api

from memguard.miniature import MODEL_DIR

LAUNCHER_LOG: list[Path] = []  # the session's launcher log, once it runs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing browser test's report ends with the launcher's log and the page's console: a job that never
    answers (a timeout in the browser) says why only there."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    if LAUNCHER_LOG and LAUNCHER_LOG[0].is_file():
        report.sections.append(("launcher log (tail)", LAUNCHER_LOG[0].read_text(errors="replace")[-6000:]))
    session = item.funcargs.get("session")
    if isinstance(session, Session) and session.console:
        report.sections.append(("page console (tail)", "\n".join(session.console[-60:])))


@pytest.fixture(scope="module")
def sync_api():
    return sync_playwright_api()


@pytest.fixture(scope="session")
def server(request, tmp_path_factory) -> Iterator[str]:
    """One launcher for every browser test (a process of its own: it outlives each module's Playwright)."""
    sync_playwright_api()  # skip, with the reason, before starting anything
    model = MODEL_DIR if (MODEL_DIR / "unet").is_dir() else request.getfixturevalue("tiny_dir")
    folder = tmp_path_factory.mktemp("launcher")
    port = free_port()
    command = [sys.executable, "-m", "memguard.ui", "--model", str(model), "--port", str(port)]
    command += ["--store", str(folder / "calibration.json")]
    LAUNCHER_LOG[:] = [folder / "launcher.log"]
    with serve(command, folder / "launcher.log", port) as url:
        yield url


@pytest.fixture(scope="module")
def browser(sync_api):
    """Chromium per module: Playwright's sync API keeps an event loop on the main thread while it runs."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def session(browser, server):
    s = Session(browser, server)
    yield s
    s.page.close()
