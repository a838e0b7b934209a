"""Payloads in prompts run nothing in a real browser: the Memorization tab (Analyze, the word menu, Batch audit) on
the launcher, and the warning panel under a generation as ``javascript/memguard.js`` renders it (the generation's
log line, from memguard's own ``summary_lines``, POSTed to the real ``/memguard/v1/panel`` route and inserted).

Every payload would set ``window.__pwned`` or open a dialog if it ever became markup; the tests check that neither
happened and that the payload is on the page as text.
"""

from __future__ import annotations

import json

import pytest
from browser_helpers import RUN_TIMEOUT_MS

pytestmark = pytest.mark.browser

PAYLOADS = [
    '<img src=x onerror="window.__pwned=1;alert(1)">',
    '"><script>window.__pwned=2;alert(2)</script>',
    "<svg onload=window.__pwned=3>",
    '<a href="javascript:window.__pwned=4">x</a>',
    "{{window.__pwned=5}}",
]
PROMPT = "a cat " + " ".join(PAYLOADS)
ACTIVE = "[onerror], [onload], script:not([src]):not(head script), a[href^='javascript']"


def assert_nothing_ran(session, where: str) -> None:
    page = session.page
    page.wait_for_timeout(500)  # let an injected image fail to load and fire its handler
    assert page.evaluate("() => window.__pwned") is None
    assert session.dialogs == [] and session.errors == []
    active = page.locator(f"{where} :is({ACTIVE})").evaluate_all("es => es.map(e => e.outerHTML.slice(0, 200))")
    assert active == []


def assert_menu_shows(session, word: str, title: str) -> None:
    """The word menu is open and shows ``word`` and the span's ``title`` as text (no element made of either)."""
    page = session.page
    page.wait_for_selector(".memguard-menu")
    assert page.locator(".memguard-menu-title").text_content() == f"\u201c{word}\u201d {title}"
    assert page.locator(".memguard-menu *:not(button)").count() == 1  # the title, and nothing parsed out of it
    labels = page.locator(".memguard-menu-item").all_text_contents()
    assert labels == [f"Remove \u201c{word}\u201d", f"De-emphasize as [{word}]"]
    assert_nothing_ran(session, ".memguard-menu")


def test_analyze_and_the_word_menu_show_payloads_as_text(session):
    page = session.page
    session.analyze(PROMPT, seeds=1)
    shown = page.locator("#memguard_analysis .memguard-prompt")
    assert shown.text_content() == PROMPT
    assert_nothing_ran(session, "#memguard_analysis")
    # words the tokenizer leaves with markup characters in them ("</" opens a comment if parsed as markup, which
    # would swallow the rest of the menu's title); each menu shows the word and its title as text
    for text in ("</", "><", "onerror"):
        word = page.locator(f"#memguard_analysis .memguard-word[data-word='{text}']").first
        word.click()
        assert_menu_shows(session, text, word.get_attribute("title"))
        page.mouse.click(5, 5)  # a click elsewhere closes the menu
        page.wait_for_selector(".memguard-menu", state="detached")
    word.click()
    page.wait_for_selector(".memguard-menu")
    page.locator(".memguard-menu-item", has_text="Remove").click()
    assert session.prompt() != PROMPT
    assert_nothing_ran(session, "#tab_memorization")


def test_batch_audit_shows_payloads_as_text(session, tmp_path):
    page = session.page
    prompts = tmp_path / "payloads.txt"
    prompts.write_text("\n".join(PAYLOADS) + "\n", encoding="utf-8")
    session.subtab("Batch audit")
    session.upload("memguard_audit_file", prompts)
    page.click("#memguard_audit")
    page.wait_for_selector("#memguard_audit_summary .memguard-hist", timeout=RUN_TIMEOUT_MS)
    table = page.locator("#memguard_audit_table").text_content()
    assert all(payload in table for payload in PAYLOADS)
    assert_nothing_ran(session, "#memguard_audit_table")
    assert_nothing_ran(session, "#memguard_audit_summary")


@pytest.fixture
def panel_route(session):
    """``/memguard/v1/panel`` answered by memguard's real route (the launcher serves only the tab)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from memguard.api import register_routes

    app = FastAPI()
    register_routes(app, lambda: None, "user:password")
    client = TestClient(app)

    def handle(route):
        request = route.request
        answer = client.post("/memguard/v1/panel", content=request.post_data_buffer, headers=request.headers)
        route.fulfill(status=answer.status_code, body=answer.content, content_type="application/json")

    session.page.route("**/memguard/v1/panel", handle)
    return session


def test_the_generation_panel_shows_payloads_as_text(panel_route):
    """The WebUI shows the log as escaped text in ``#html_log_txt2img``; memguard.js finds its data line there,
    hides it and inserts the panel the server rendered."""
    from memguard.hosts.a1111 import Run, summary_lines
    from memguard.result import ImageResult

    run = Run(mode="watch", threshold=1.0)
    word = PROMPT.index("a cat") + 2  # "cat", then a word that is a whole payload (the payload's words may say so)
    payload = PROMPT.index(PAYLOADS[0])
    words = [
        {"text": "cat", "start": word, "end": word + 3, "value": 0.5, "normalized": 0.5},
        {"text": PAYLOADS[0], "start": payload, "end": payload + len(PAYLOADS[0]), "value": 1.0, "normalized": 1.0},
    ]
    run.results[0] = ImageResult(
        index=0,
        seed=PAYLOADS[1],
        prompt=PROMPT,
        score=2.0,
        d=2.0,
        threshold=1.0,
        threshold_source="",
        flagged=True,
        sub_scores=[2.0],
        words=words,
    )
    log = "\n".join(summary_lines(run))
    page = panel_route.page
    page.evaluate(
        """(log) => {
            const box = document.createElement("div");
            box.id = "html_log_txt2img";
            const comments = document.createElement("div");
            comments.className = "comments";
            comments.textContent = log;
            box.appendChild(comments);
            document.body.appendChild(box);
            window.memguard.renderLogs();
        }""",
        log,
    )
    page.wait_for_selector("#html_log_txt2img .memguard-panel-host .memguard-panel", timeout=30_000)
    panel = page.locator("#html_log_txt2img .memguard-panel-host")
    assert PROMPT in panel.locator(".memguard-prompt").text_content()
    assert PAYLOADS[1] in panel.text_content()  # the seed, as text
    assert "memguard-data:" not in page.locator("#html_log_txt2img .comments").text_content()
    assert json.loads(log.splitlines()[-1][len("memguard-data:") :])["results"][0]["prompt"] == PROMPT
    assert_nothing_ran(panel_route, "#html_log_txt2img")
    # its word menu: the payload in the menu's title and buttons as text (a title written as markup would run it)
    marked = panel.locator(".memguard-word").nth(1)
    assert marked.get_attribute("data-word") == PAYLOADS[0] and marked.text_content() == PAYLOADS[0]
    marked.click()
    assert_menu_shows(panel_route, PAYLOADS[0], marked.get_attribute("title"))
