"""The warning panel under a generation in a real browser: Debian's Chromium driven by Playwright against a
WebUI-like page (``webui_page.py``: the A1111 double generating with memguard loaded, its comments shown in
``#html_log_txt2img`` as the host shows them, memguard.js loaded as the host loads extension scripts; the img2img
tab's prompt box and log, which the host never writes memguard's line into: a test writes one there). Writes
``out/ours/panel.png`` (``docs/panel.png`` with ``make screenshots``: ``browser_helpers.screenshot_path``)."""

from __future__ import annotations

import html
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import free_port, screenshot_path, serve, sync_playwright_api

pytestmark = pytest.mark.browser
PAGE = Path(__file__).with_name("webui_page.py")
LOG = "#html_log_txt2img"
ATTACK = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def webui(request, tmp_path_factory) -> Iterator[str]:
    sync_playwright_api()  # skip, with the reason, before starting anything
    model = request.getfixturevalue("tiny_dir")
    port = free_port()
    command = [sys.executable, str(PAGE), "--model", str(model), "--port", str(port)]
    with serve(command, tmp_path_factory.mktemp("webui") / "webui.log", port) as url:
        yield url


@pytest.fixture
def page(browser, webui):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.dialogs, page.errors = [], []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.goto(webui)
    page.wait_for_selector("#txt2img_prompt textarea")
    yield page
    page.close()


def generate(page, prompt: str, watch: bool = True) -> None:
    page.fill("#txt2img_prompt textarea", prompt)
    if page.is_checked("#txt2img_watch input") != watch:
        page.click("#txt2img_watch input")
    page.click("#txt2img_generate")
    page.wait_for_selector(f"{LOG} p.comments", timeout=120_000)


def test_panel_renders_the_generation_log_and_edits_the_prompt(page):
    prompt = f"a cat {ATTACK} on a sofa"
    generate(page, prompt)
    page.wait_for_selector(f"{LOG} .memguard-panel", timeout=60_000)
    assert page.locator(f"{LOG} .memguard-result").count() == 2  # batch of 2, both above the 1e-6 threshold
    comments = page.locator(f"{LOG} p.comments")
    text = comments.inner_text()
    assert "memguard-data:" not in text  # the data line became the panel ...
    assert text.count("may reproduce a training image") == 2  # ... the readable lines stay, one per line
    assert comments.locator("br").count() >= 1
    shown = page.locator(f"{LOG} .memguard-prompt").first
    assert shown.text_content() == prompt  # the attack is text: no <img>, no alert
    assert page.locator(f"{LOG} .memguard-panel img").count() == 0
    page.locator(LOG).first.screenshot(path=str(screenshot_path("panel.png")))

    word = page.locator(f"{LOG} .memguard-word", has_text="sofa").first
    word.click()
    page.locator(".memguard-menu-item", has_text="Remove").click()
    assert page.input_value("#txt2img_prompt textarea") == f"a cat {ATTACK} on a"

    generate(page, "a red circle", watch=False)  # a log without memguard's line: the old panel goes
    page.wait_for_function(f"!document.querySelector('{LOG} .memguard-panel')", timeout=30_000)
    assert "memguard" not in page.locator(LOG).first.inner_text()
    page.wait_for_timeout(500)
    assert page.dialogs == [] and page.errors == []


def comments_html(lines: list[str]) -> str:
    """The log as the host shows it: ``plaintext_to_html(processed.comments, classname="comments")``
    (``modules/ui_common.py``, mirrored in ``tests/fakehost/modules/ui_common.py``)."""
    content = "<br>\n".join(html.escape(line) for line in lines)
    return f"<p class='comments'>{content}</p>"


def test_a_panel_under_img2img_edits_the_img2img_prompt(page):
    """memguard.js renders a panel under either tab's log; its words edit the prompt box of that tab
    (``img2img_prompt`` here), not txt2img's, even when both boxes hold the same prompt."""
    from memguard.hosts.a1111 import Run, summary_lines
    from memguard.result import ImageResult

    prompt = "a cat on a sofa"
    sofa = prompt.index("sofa")
    run = Run(mode="watch", threshold=1.0)
    run.results[0] = ImageResult(
        index=0,
        seed=7,
        prompt=prompt,
        score=2.0,
        d=2.0,
        threshold=1.0,
        threshold_source="",
        flagged=True,
        sub_scores=[2.0],
        words=[{"text": "sofa", "start": sofa, "end": sofa + 4, "value": 1.0, "normalized": 1.0}],
    )
    page.fill("#txt2img_prompt textarea", prompt)
    page.locator("#tabs button", has_text="img2img").click()
    page.fill("#img2img_prompt textarea", prompt)
    log = "#html_log_img2img"
    page.evaluate(  # as gradio shows a gr.HTML's new value; the onUiUpdate observer then renders the panel
        "([log, markup]) => { const box = document.querySelector(log);"
        " (box.querySelector('.prose') || box).innerHTML = markup; }",
        [log, comments_html(summary_lines(run))],
    )
    page.wait_for_selector(f"{log} .memguard-panel", timeout=60_000)
    page.locator(f"{log} .memguard-word", has_text="sofa").first.click()
    page.locator(".memguard-menu-item", has_text="Remove").click()
    assert page.input_value("#img2img_prompt textarea") == "a cat on a"
    assert page.input_value("#txt2img_prompt textarea") == prompt
    assert page.locator(f"{log} .memguard-prompt").first.get_attribute("data-memguard-target") == "img2img_prompt"
    assert page.dialogs == [] and page.errors == []
