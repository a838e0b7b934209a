"""The Memorization tab in a real browser: Debian's Chromium driven by Playwright against ``python -m memguard.ui``.

Skipped, with the reason, when Playwright or ``/usr/bin/chromium`` is missing (CI installs both; see
``browser_helpers``). The model is the bundled miniature when it exists, else the tiny random one. Writes
``out/ours/tab.png`` (``docs/tab.png`` with ``make screenshots``: ``browser_helpers.screenshot_path``).
"""

from __future__ import annotations

import pytest
from browser_helpers import RUN_TIMEOUT_MS, screenshot_path

from memguard.miniature import MODEL_DIR

pytestmark = pytest.mark.browser

ATTACK = "<img src=x onerror=alert(1)>"
FALLBACK_PROMPT = "a photo of a cat, sitting on a red sofa, oil painting"


def _memorized_prompt() -> str:
    listed = MODEL_DIR / "prompts" / "memorized.txt"
    if listed.is_file():
        lines = [line for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines:
            return lines[0]
    return FALLBACK_PROMPT


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
    page.screenshot(path=str(screenshot_path("tab.png")), full_page=True)
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
    session.upload("memguard_audit_file", prompts)
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


def _menu_count(page) -> int:
    return page.locator(".memguard-menu").count()


def test_enter_or_space_on_a_focused_word_opens_its_menu(session):
    """The words are buttons for the keyboard too (``tabindex="0"``): Enter or Space on a focused word opens its
    menu with the first item focused, Escape closes it, Enter on an item picks it."""
    page = session.page
    prompt = "a cat on a red sofa"
    session.analyze(prompt, seeds=1)
    word = page.locator("#memguard_analysis .memguard-word").last
    text = word.get_attribute("data-word")
    for key in ("Enter", "Space"):
        word.focus()
        assert _menu_count(page) == 0
        page.keyboard.press(key)
        assert _menu_count(page) == 1, key
        assert page.locator(".memguard-menu-title").text_content().startswith(f"\u201c{text}\u201d")
        assert page.evaluate("() => document.activeElement.textContent") == f"Remove \u201c{text}\u201d"
        assert session.prompt() == prompt  # opening the menu edits nothing
        page.keyboard.press("Escape")
        assert _menu_count(page) == 0
    word.focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")  # on the focused "Remove" item
    assert _menu_count(page) == 0
    assert session.prompt().count(text) == prompt.count(text) - 1
    assert session.errors == [] and session.dialogs == []


def test_a_removed_word_opens_no_menu(session):
    """A word the user removed is no longer in the prompt: neither a click nor Enter on it offers to edit it again."""
    page = session.page
    prompt = "a cat on a red sofa"
    session.analyze(prompt, seeds=1)
    word = page.locator("#memguard_analysis .memguard-word").last
    word.click()
    page.locator(".memguard-menu-item", has_text="Remove").click()
    removed = session.prompt()
    assert removed != prompt and "memguard-removed" in word.get_attribute("class")
    word.click()
    assert _menu_count(page) == 0
    word.focus()
    page.keyboard.press("Enter")
    assert _menu_count(page) == 0
    assert session.prompt() == removed
    assert session.errors == [] and session.dialogs == []
