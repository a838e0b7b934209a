"""The warning panel, the analysis HTML, the SVG histogram and the prompt files: escaping, states, heat classes."""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hostile_prompts import Markup

from memguard.result import FLAGGED, OK, UNSCORED
from memguard.ui import actions
from memguard.ui.charts import bin_scores, histogram_svg
from memguard.ui.files import PromptFileError, parse_prompts, read_prompt_file, upload_path, write_audit_csv
from memguard.ui.panel import (
    badge,
    esc,
    finite,
    fmt,
    heat_level,
    highlight_prompt,
    message,
    mitigation_block,
    render_analysis,
    render_panel,
    render_result,
    seed_rows,
)

ATTACKS = ["<img src=x onerror=alert(1)>", '"><script>alert(1)</script>']
ALLOWED_TAGS = {"div", "span", "p", "b", "ul", "li", "table", "thead", "tbody", "tr", "th", "td"}


def words_for(prompt: str) -> list[dict]:
    """Every maximal run of non-space characters, as explain's words would come, with rising significance."""
    out, start = [], None
    for i, ch in enumerate(prompt + " "):
        if ch.isspace() and start is not None:
            out.append({"text": prompt[start:i], "start": start, "end": i})
            start = None
        elif not ch.isspace() and start is None:
            start = i
    for k, word in enumerate(out):
        word["value"] = 0.01 * (k + 1)
        word["normalized"] = (k + 1) / len(out)
    return out


def result(prompt: str = "a cat on a sofa", **kw) -> dict:
    base = {
        "index": 0,
        "seed": 1234,
        "prompt": prompt,
        "score": 3.5,
        "threshold": 2.0,
        "flagged": True,
        "reason": "",
        "words": words_for(prompt),
        "mitigation": None,
    }
    return {**base, **kw}


@pytest.mark.parametrize("attack", ATTACKS)
def test_prompt_is_only_ever_text(attack):
    prompt = f"a cat {attack} on a sofa"
    html = render_panel([result(prompt)])
    parsed = Markup(html)
    assert set(parsed.tags) <= ALLOWED_TAGS
    assert "<script" not in html and "<img" not in html
    assert all("onerror" not in (name or "") for name, _ in parsed.attrs)
    assert attack in "".join(parsed.text)  # the user sees exactly what they typed
    assert ("data-prompt", prompt) in parsed.attrs  # attribute values round-trip unchanged


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_field_is_escaped(attack):
    mitigation = {"strategy": attack, "score_before": 3.0, "score_after": 1.0, "notes": [attack], "seconds": 0.5}
    html = render_panel(
        [
            result(attack, seed=attack, mitigation=mitigation, note=attack),
            result(attack, score=None, flagged=False, reason=attack),
        ],
        target=attack,
    )
    parsed = Markup(html)
    assert set(parsed.tags) <= ALLOWED_TAGS
    assert "".join(parsed.text).count(attack) >= 5  # prompt, seed, strategy, mitigation note, note, reason
    analysis = Markup(render_analysis(result(attack, note=attack), [0, 1], attack, attack))
    assert set(analysis.tags) <= ALLOWED_TAGS
    assert "".join(analysis.text).count(attack) >= 2  # prompt and note


def test_words_with_markup_inside_are_wrapped_and_escaped():
    prompt = "<b>bold</b> & co"
    html = highlight_prompt(prompt, [{"start": 0, "end": 11, "value": 1.0, "normalized": 1.0}], "memguard_prompt")
    parsed = Markup(html)
    assert parsed.tags == ["span", "span"]
    assert "".join(parsed.text) == prompt
    assert ("data-word", "<b>bold</b>") in parsed.attrs
    assert ("data-memguard-target", "memguard_prompt") in parsed.attrs


@pytest.mark.parametrize("attack", ATTACKS)
def test_flagged_prompt_without_words_is_escaped_text(attack):
    """A flagged image whose explanation found no words (explain off, interrupted, failed): its whole prompt is
    the text after the last word, and it is still only text."""
    prompt = f"a cat {attack} on a sofa"
    for html in (render_panel([result(prompt, words=[])]), render_analysis(result(prompt, words=[]), [0], "m", "t")):
        parsed = Markup(html)
        assert set(parsed.tags) <= ALLOWED_TAGS and "<img" not in html and "<script" not in html
        assert "memguard-word" not in html
        assert prompt in "".join(parsed.text)
        assert esc_text(prompt) in html


@pytest.mark.parametrize("attack", ATTACKS)
def test_text_between_and_after_words_is_escaped(attack):
    """Words that cover only part of the prompt: the markup before, between and after them stays text."""
    prompt = f"{attack} cat {attack} sofa {attack}"
    cat, sofa = prompt.index(" cat ") + 1, prompt.index(" sofa ") + 1
    words = [
        {"text": "cat", "start": cat, "end": cat + 3, "value": 0.5, "normalized": 0.5},
        {"text": "sofa", "start": sofa, "end": sofa + 4, "value": 1.0, "normalized": 1.0},
    ]
    html = highlight_prompt(prompt, words, "txt2img_prompt")
    parsed = Markup(html)
    assert parsed.tags == ["span", "span", "span"]  # the prompt and its two words, nothing else
    assert "<img" not in html and "<script" not in html
    assert "".join(parsed.text) == prompt
    shown = html[html.index(">") + 1 :]  # the prompt's text, after the container's attributes (data-prompt)
    assert shown.count(esc_text(attack)) == 3
    assert [v for k, v in parsed.attrs if k == "data-word"] == ["cat", "sofa"]
    panel = render_panel([result(prompt, words=words)])
    assert set(Markup(panel).tags) <= ALLOWED_TAGS and panel.count(esc_text(attack)) >= 3


def esc_text(text: str) -> str:
    """How text must appear in the markup: ``&``, ``<``, ``>`` and quotes as entities (``html.escape``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def test_flagged_block_shows_highlighted_prompt_advice_and_threshold():
    html = render_panel([result()])
    assert "memguard-flagged" in html and "Likely memorized" in html
    assert "above the threshold" in html and "<b>3.5</b>" in html and "<b>2</b>" in html
    assert html.count('class="memguard-word') == 5
    assert "Edit the highlighted words, or rerun with the Memorization guard script." in html
    assert 'data-memguard-target="txt2img_prompt"' in html
    assert "Image 1, seed 1234" in html


def test_note_on_how_words_were_coloured_is_shown():
    note = "word colours from occlusion (gradients are unavailable here: weights are inference tensors)"
    assert f'<p class="memguard-note">{note}</p>' in render_panel([result(note=note)])
    assert f'<p class="memguard-note">{note}</p>' in render_analysis(result(note=note), [0], "m", "t")
    assert "memguard-note" not in render_panel([result()])


def test_unflagged_block_has_no_prompt():
    html = render_panel([result(score=1.0, flagged=False)])
    assert "memguard-ok" in html and "No memorization detected" in html
    assert "at or below the threshold" in html
    assert "memguard-word" not in html and "Memorization guard script" not in html


def test_unscorable_block_says_why():
    html = render_panel([result(score=None, flagged=False, reason="the prediction was not finite (NaN or inf)")])
    assert "memguard-unscored" in html
    assert "memguard could not score this image: the prediction was not finite (NaN or inf)" in html


def test_uncalibrated_block_says_so():
    html = render_panel([result(threshold=None, flagged=False)])
    assert "memguard-uncalibrated" in html and "not calibrated" in html


def test_mitigation_before_after_and_cost():
    mitigation = {
        "strategy": "embedding",
        "score_before": 3.5,
        "score_after": 1.25,
        "unet_equivalents": 14,
        "seconds": 0.75,
        "notes": ["converged"],
    }
    html = render_panel([result(mitigation=mitigation)])
    text = "".join(Markup(html).text)
    expected = "Mitigation: embedding; score 3.5 \u2192 1.25 (now below the threshold); cost 14 UNet passes, 0.75 s."
    assert expected in text
    assert "converged" in text
    assert "Likely memorized, mitigated" in text and "steered this image away" in text
    still = render_panel([result(mitigation={**mitigation, "score_after": 2.5})])
    assert "still above the threshold" in still


def test_one_block_per_image_and_nothing_for_no_results():
    assert render_panel([]) == ""
    html = render_panel([result(index=i, seed=i) for i in range(3)])
    assert html.count('class="memguard-result ') == 3
    assert "Image 3, seed 2" in html


@pytest.mark.parametrize(("normalized", "level"), [(0.0, 0), (0.19, 0), (0.2, 1), (0.5, 2), (0.79, 3), (1.0, 4)])
def test_heat_levels(normalized, level):
    assert heat_level(normalized) == level


@pytest.mark.parametrize("odd", [None, float("nan"), float("inf"), -3.0, 7.0, 1e308, -1e308])
def test_heat_level_of_odd_values_is_in_range(odd):
    assert 0 <= heat_level(odd) <= 4


def test_heat_classes_and_raw_value_titles():
    prompt = "low mid high"
    words = [
        {"start": 0, "end": 3, "value": 0.001, "normalized": 0.05},
        {"start": 4, "end": 7, "value": 0.01, "normalized": 0.5},
        {"start": 8, "end": 12, "value": 0.0123456, "normalized": 1.0},
    ]
    parsed = Markup(highlight_prompt(prompt, words))
    classes = [v for k, v in parsed.attrs if k == "class" and "memguard-word" in v]
    assert classes == [f"memguard-word memguard-heat-{level}" for level in (0, 2, 4)]
    titles = [v for k, v in parsed.attrs if k == "title"]
    assert titles[2] == "significance 0.01235 (1 of the strongest word)"
    assert ("data-start", "8") in parsed.attrs and ("data-end", "12") in parsed.attrs


def test_malformed_spans_are_dropped_and_text_kept():
    prompt = "one two three"
    words = [
        {"start": 0, "end": 3, "normalized": 1.0},
        {"start": 2, "end": 6, "normalized": 1.0},  # overlaps the first
        {"start": 8, "end": 99, "normalized": 1.0},  # past the end
        {"start": "x", "end": 3},  # not offsets
    ]
    parsed = Markup(highlight_prompt(prompt, words))
    assert "".join(parsed.text) == prompt
    assert parsed.tags.count("span") == 2


def test_meter_without_a_positive_threshold():
    html = render_analysis(
        {"prompt": "a", "scores": [1.0], "score": 1.0, "threshold": 0.0, "flagged": True}, [0], "m", "t"
    )
    assert "memguard-meter-mark" not in html and "width:90.9%" in html


def test_analysis_shows_per_seed_scores_against_threshold():
    res = {
        "prompt": "a cat",
        "scores": [1.0, 3.0, float("nan")],
        "score": 2.0,
        "threshold": 1.5,
        "flagged": True,
        "words": words_for("a cat"),
    }
    html = render_analysis(res, [0, 1, 2], "abc123", "memguard_prompt")
    text = " ".join(Markup(html).text)
    assert "Likely memorized" in text and "model abc123, 3 seeds" in text
    assert html.count("memguard-meter-under") == 1 and html.count("memguard-meter-over") == 1
    assert "Click a word to remove or de-emphasize it." in text


def test_histogram_is_svg_with_threshold_line_and_escaped_title():
    svg = histogram_svg([0.1, 0.2, 0.2, 0.9, float("nan")], threshold=0.5, bins=10, title="<b>x</b>")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    bars = root.findall(f"{ns}rect")
    assert len(bars) == 10
    assert sum(int(b.find(f"{ns}title").text.split(": ")[1].split()[0]) for b in bars) == 4
    assert any("memguard-hist-over" in b.get("class") for b in bars)
    assert root.find(f"{ns}line[@class='memguard-hist-threshold']") is not None
    assert root.find(f"{ns}title").text == "<b>x</b>"


def test_histogram_handles_no_and_equal_scores():
    ET.fromstring(histogram_svg([], None))
    low, high, counts = bin_scores([2.0, 2.0], 4)
    assert low < 2.0 < high and sum(counts) == 2


def test_parse_text_jsonl_and_json_array():
    text = 'plain prompt\n\n{"prompt": "from prompt"}\n{"caption": "from caption"}\n   \n'
    assert parse_prompts(text) == ["plain prompt", "from prompt", "from caption"]
    assert parse_prompts(json.dumps(["a", {"prompt": "b"}, {"caption": "c"}, " "])) == ["a", "b", "c"]


def test_prompts_in_the_webuis_brackets_are_not_taken_for_json():
    text = "[cat:dog:0.5] in a garden\n{red|blue} cat\n{{7*7}}\n[1girl, solo]\n{prompt}, masterpiece\n"
    assert parse_prompts(text) == text.splitlines()
    assert parse_prompts("[1, 2]") == ["[1, 2]"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"prompt": 3}\n', "has no 'prompt' or 'caption' string"),
        (b'{"prompt": "a",\n', "line 1, is not valid JSON"),
        (b'["a", 2', "not valid JSON"),
        (b"\xff\xfe\x00a", "not a text file"),
        (b"caf\xe9\n", "is not UTF-8 text"),
        (b"\n  \n", "holds no prompt"),
    ],
)
def test_unusable_prompt_files_say_why(tmp_path, content, fragment):
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    with pytest.raises(PromptFileError, match=fragment):
        read_prompt_file(path)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(PromptFileError, match=r"cannot read missing\.txt"):
        read_prompt_file(tmp_path / "missing.txt")


def test_upload_values_of_both_gradio_versions(tmp_path):
    class Wrapper:
        name = str(tmp_path / "a.txt")

    assert upload_path(None) is None and upload_path("") is None
    assert upload_path(str(tmp_path / "a.txt")) == tmp_path / "a.txt"
    assert upload_path(Wrapper()) == tmp_path / "a.txt"
    assert upload_path({"path": str(tmp_path / "a.txt")}) == tmp_path / "a.txt"


def test_csv_neutralizes_formulas_and_keeps_one_row_per_prompt(tmp_path):
    rows = [
        {"prompt": "=HYPERLINK(1)", "score": 1.5, "scores": [1.0, 2.0], "flagged": True, "threshold": 1.0},
        {"prompt": 'say "hi", ok', "score": None, "scores": [float("nan")], "flagged": False, "threshold": None},
    ]
    path = write_audit_csv(rows, tmp_path)
    with Path(path).open(encoding="utf-8", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["index", "prompt", "score", "threshold", "flagged", "seed_scores"]
    assert table[1] == ["0", "'=HYPERLINK(1)", "1.5", "1.0", "yes", "1.0;2.0"]
    assert table[2] == ["1", 'say "hi", ok', "", "", "no", ""]


@pytest.mark.parametrize(("count", "fragment"), [(None, "how many seeds"), (0, "between 1 and 16"), (17, "not 17")])
def test_seed_count_is_checked(count, fragment):
    with pytest.raises(actions.UserError, match=fragment):
        actions.seeds_from_count(count)


def test_seed_count_rounds_the_number_box():
    assert actions.seeds_from_count(3.0) == [0, 1, 2]


@pytest.mark.parametrize(
    ("fpr", "fragment"), [(None, "Enter a false-positive rate"), (1.0, "for 1% enter 0.01"), (-1, "at least 0")]
)
def test_fpr_is_checked(fpr, fragment):
    with pytest.raises(actions.UserError, match=fragment):
        actions.check_fpr(fpr)


def _no_model():
    raise FileNotFoundError("no checkpoint is loaded")


def test_actions_answer_with_messages_not_tracebacks(tmp_path):
    empty = actions.analyze(_no_model, "   ", 4)
    assert "memguard-error" in empty and "the prompt box is empty" in empty
    assert "memguard has no model to work with: no checkpoint is loaded" in actions.analyze(_no_model, "a cat", 4)
    assert "no model to work with" in actions.calibrate(_no_model, None, 0.01)
    missing = actions.audit(_no_model, None, 1)
    assert "Upload a prompt file first" in missing.html and missing.csv is None and missing.rows == []
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\x00\x01")
    assert "bad.txt is not a text file" in actions.audit(_no_model, str(bad), 1).html


def test_unexpected_failures_are_one_line_messages():
    class Broken:
        def model_id(self):
            return "m"

        def analyze(self, prompt, seeds):
            raise RuntimeError("CUDA out of memory <b>")

    html = actions.analyze(lambda: Broken(), "a cat", 1)
    assert "memguard failed: RuntimeError: CUDA out of memory &lt;b&gt;" in html


def test_touching_words_are_each_highlighted():
    """Words that touch (``red`` and ``,`` in ``red,``: explain's words for a comma) each keep their span."""
    prompt = "red, cat"
    words = [
        {"text": "red", "start": 0, "end": 3, "value": 1.0, "normalized": 1.0},
        {"text": ",", "start": 3, "end": 4, "value": 0.2, "normalized": 0.2},
        {"text": "cat", "start": 5, "end": 8, "value": 0.5, "normalized": 0.5},
    ]
    parsed = Markup(highlight_prompt(prompt, words))
    assert [v for k, v in parsed.attrs if k == "data-word"] == ["red", ",", "cat"]
    assert "".join(parsed.text) == prompt


def _meter(html: str) -> list[tuple[str, str, str]]:
    """``(state, width, verdict)`` of every seed row of :func:`seed_rows`."""
    import re

    rows = re.findall(r'memguard-meter-(over|under|none)" style="width:([0-9.]+)%".*?<td>([^<]*)</td></tr>', html)
    return [(state, width, verdict) for state, width, verdict in rows]


def test_seed_rows_judge_like_the_verdict_and_mark_the_threshold_at_60_percent():
    """A seed scoring exactly the threshold is not above it (flagged means ``score > threshold``); the meter puts
    the threshold at 60% of its width and stops at 100%."""
    html = seed_rows([0, 1, 2, 3], [2.0, 1.0, 4.0, float("nan")], 2.0)
    assert _meter(html) == [
        ("under", "60.0", "below"),
        ("under", "30.0", "below"),
        ("over", "100.0", "above"),
        ("none", "0.0", "\u2014"),
    ]
    assert html.count("memguard-meter-mark") == 4
    unjudged = seed_rows([0, 1], [1.0, 2.0], None)
    assert _meter(unjudged) == [("none", "45.5", "\u2014"), ("none", "90.9", "\u2014")]  # against 1.1 x the highest
    assert "memguard-meter-mark" not in unjudged


def test_notices_come_first_as_escaped_info_messages():
    notice = "calibrated this checkpoint automatically <b>at FPR 0.01</b>"
    html = render_panel([result()], notices=[notice])
    parsed = Markup(html)
    assert set(parsed.tags) <= ALLOWED_TAGS and "<b>at" not in html
    said = '<div class="memguard-message memguard-info" role="alert">'
    assert html.index(said) < html.index('class="memguard-result ')
    assert said + "calibrated this checkpoint automatically &lt;b&gt;at FPR 0.01&lt;/b&gt;</div>" in html
    assert "memguard-message" not in render_panel([result()])


@pytest.mark.parametrize(
    ("kind", "shown"), [("error", "error"), ("warning", "warning"), ("info", "info"), ("bogus", "info")]
)
def test_message_kinds(kind, shown):
    assert message("m", kind).startswith(f'<div class="memguard-message memguard-{shown}" role="alert">')


def test_analysis_of_one_seed_and_of_a_prompt_that_is_not_flagged():
    clear = {"prompt": "a cat", "scores": [1.0], "score": 1.0, "threshold": 1.5, "flagged": False}
    text = " ".join(Markup(render_analysis(clear, [7], "abc", "memguard_prompt")).text)
    assert "model abc, 1 seed" in text and "1 seeds" not in text
    assert "No memorization detected" in text
    assert "The colours show which words the score depends on most." in text
    assert "Edit the highlighted words" not in text


# --- the markup in full: javascript/memguard.js and style.css read these classes and attributes ----------------------
CAT = {"text": "cat", "start": 2, "end": 5, "value": 0.5, "normalized": 0.4567}
CAT_SPAN = (
    '<span class="memguard-word memguard-heat-2" role="button" tabindex="0" data-start="2" data-end="5" '
    'data-word="cat" title="significance 0.5 (0.46 of the strongest word)">cat</span>'
)


def test_a_flagged_and_mitigated_image_in_full():
    mitigation = {
        "strategy": "attention",
        "score_before": 3.5,
        "score_after": 1.25,
        "unet_equivalents": 12,
        "seconds": 0.51234,
        "notes": ["first note", "second"],
    }
    flagged = result("a cat", index=1, seed=7, words=[CAT], note="a note", mitigation=mitigation)
    flagged["threshold_source"] = "manual threshold 2"
    assert render_result(flagged, "img2img_prompt") == (
        '<div class="memguard-result memguard-flagged"><div class="memguard-result-head">'
        '<span class="memguard-badge memguard-badge-flagged">Likely memorized, mitigated</span> '
        '<span class="memguard-image">Image 2, seed 7</span></div>'
        '<p class="memguard-score">Score <b>3.5</b> is above the threshold <b>2</b> (manual threshold 2).</p>'
        '<div class="memguard-prompt-box"><span class="memguard-prompt" data-memguard-target="img2img_prompt" '
        f'data-prompt="a cat">a {CAT_SPAN}</span></div>'
        '<p class="memguard-note">a note</p>'
        '<p class="memguard-advice">memguard steered this image away from the memorized one; to avoid it '
        "altogether, edit the highlighted words.</p>"
        '<div class="memguard-mitigation"><b>Mitigation</b>: attention; score 3.5 &rarr; 1.25 (now below the '
        'threshold); cost 12 UNet passes, 0.512 s.<ul class="memguard-notes"><li>first note</li><li>second</li>'
        "</ul></div></div>"
    )


def test_a_flagged_image_in_full_with_the_default_target():
    flagged = result("a cat", words=[CAT])
    assert render_result(flagged) == (
        '<div class="memguard-result memguard-flagged"><div class="memguard-result-head">'
        '<span class="memguard-badge memguard-badge-flagged">Likely memorized</span> '
        '<span class="memguard-image">Image 1, seed 1234</span></div>'
        '<p class="memguard-score">Score <b>3.5</b> is above the threshold <b>2</b>.</p>'
        '<div class="memguard-prompt-box"><span class="memguard-prompt" data-memguard-target="txt2img_prompt" '
        f'data-prompt="a cat">a {CAT_SPAN}</span></div>'
        '<p class="memguard-advice">Edit the highlighted words, or rerun with the Memorization guard script.</p>'
        "</div>"
    )


def test_images_without_a_prompt_box_in_full():
    assert render_result(result(score=1.0, flagged=False, seed=None, index=None)) == (
        '<div class="memguard-result memguard-ok"><div class="memguard-result-head">'
        '<span class="memguard-badge memguard-badge-ok">No memorization detected</span> '
        '<span class="memguard-image">Image</span></div>'
        '<p class="memguard-score">Score <b>1</b> is at or below the threshold <b>2</b>.</p></div>'
    )
    assert render_result(result(score=None, flagged=False, reason="")) == (
        '<div class="memguard-result memguard-unscored"><div class="memguard-result-head">'
        '<span class="memguard-badge memguard-badge-unscored">Not scored</span> '
        '<span class="memguard-image">Image 1, seed 1234</span></div>'
        '<p class="memguard-score">memguard could not score this image: no reason was given</p></div>'
    )
    assert render_result(result(threshold=None, flagged=False)) == (
        '<div class="memguard-result memguard-uncalibrated"><div class="memguard-result-head">'
        '<span class="memguard-badge memguard-badge-uncalibrated">Not calibrated</span> '
        '<span class="memguard-image">Image 1, seed 1234</span></div>'
        '<p class="memguard-score">Score <b>3.5</b>; not calibrated: this model has no threshold yet. '
        "Calibrate it in the Memorization tab.</p></div>"
    )


def test_a_flagged_image_without_a_prompt_or_a_target():
    html = render_result({"score": 3.0, "threshold": 2.0, "flagged": True}, None)
    assert '<div class="memguard-prompt-box"><span class="memguard-prompt" data-prompt=""></span></div>' in html


def test_a_mitigation_still_above_the_threshold_is_not_called_mitigated():
    still = result(mitigation={"strategy": "auto", "score_before": 3.5, "score_after": 2.5})
    html = render_result(still)
    assert '<span class="memguard-badge memguard-badge-flagged">Likely memorized</span>' in html
    assert "Edit the highlighted words" in html
    assert "score 3.5 &rarr; 2.5 (still above the threshold); cost \u2014 UNet passes, \u2014 s.</div>" in html
    below = result(mitigation={"strategy": "auto", "score_before": 3.5, "score_after": 1.5})
    assert "Likely memorized, mitigated" in render_result(below)
    # judged against the image's own threshold: 1.5 is above a threshold of 1
    assert "Likely memorized</span>" in render_result({**below, "threshold": 1.0})


def test_the_mitigation_block_with_missing_or_odd_fields():
    assert mitigation_block(None, 2.0) == "" and mitigation_block({}, 2.0) == ""
    assert mitigation_block({"score_after": 1.0}, None) == (
        '<div class="memguard-mitigation"><b>Mitigation</b>: unknown; score \u2014 &rarr; 1; cost \u2014 UNet '
        "passes, \u2014 s.</div>"
    )
    # without a re-score nothing is said about the threshold; the cost falls back to the forward passes
    block = mitigation_block({"strategy": "guidance", "score_after": None, "unet_forwards": 3, "notes": []}, 2.0)
    assert block == (
        '<div class="memguard-mitigation"><b>Mitigation</b>: guidance; score \u2014 &rarr; \u2014; cost 3 UNet '
        "passes, \u2014 s.</div>"
    )
    costly = mitigation_block({"strategy": "embedding", "unet_equivalents": 1234567, "seconds": 12.3456}, 2.0)
    assert "cost 1.23457e+06 UNet passes, 12.3 s." in costly  # 6 and 3 significant digits


def test_badges_say_mitigated_only_for_a_flagged_image():
    assert badge(FLAGGED) == '<span class="memguard-badge memguard-badge-flagged">Likely memorized</span>'
    assert badge(FLAGGED, True) == (
        '<span class="memguard-badge memguard-badge-flagged">Likely memorized, mitigated</span>'
    )
    assert badge(OK, True) == '<span class="memguard-badge memguard-badge-ok">No memorization detected</span>'
    assert badge(UNSCORED) == '<span class="memguard-badge memguard-badge-unscored">Not scored</span>'


def test_the_panel_in_full():
    ok = result(score=1.0, flagged=False)
    unscored = result(index=1, seed=5, score=None, flagged=False, reason="no CFG pair")
    assert render_panel([ok, unscored], None, ["calibrated"]) == (
        '<div class="memguard-panel" role="status"><div class="memguard-title">memguard</div>'
        '<div class="memguard-message memguard-info" role="alert">calibrated</div>'
        + render_result(ok, None)
        + render_result(unscored, None)
        + "</div>"
    )
    flagged = result("a cat", words=[CAT])
    assert 'data-memguard-target="img2img_prompt"' in render_panel([flagged], "img2img_prompt")
    assert "data-memguard-target" not in render_panel([flagged], None)
    assert render_panel([flagged], None, ["a", 2]) == (
        '<div class="memguard-panel" role="status"><div class="memguard-title">memguard</div>'
        '<div class="memguard-message memguard-info" role="alert">a</div>'
        '<div class="memguard-message memguard-info" role="alert">2</div>' + render_result(flagged, None) + "</div>"
    )


def test_the_analysis_in_full():
    res = {"prompt": "a cat", "scores": [3.0], "score": 3.0, "threshold": 0.3, "flagged": True, "words": [CAT]}
    assert render_analysis(res, [7], "abc", "memguard_prompt") == (
        '<div class="memguard-panel memguard-analysis"><div class="memguard-result memguard-flagged">'
        '<div class="memguard-result-head"><span class="memguard-badge memguard-badge-flagged">Likely memorized'
        '</span> <span class="memguard-image">model abc, 1 seed</span></div>'
        '<p class="memguard-score">Score <b>3</b> is above the threshold <b>0.3</b>.</p>'
        '<table class="memguard-seeds"><thead><tr><th>seed</th><th>score</th><th>vs threshold</th><th></th></tr>'
        '</thead><tbody><tr><td>7</td><td>3</td><td><span class="memguard-meter"><span class="memguard-meter-fill '
        'memguard-meter-over" style="width:100.0%"></span><span class="memguard-meter-mark"></span></span></td>'
        "<td>above</td></tr></tbody></table>"
        '<div class="memguard-prompt-box"><span class="memguard-prompt" data-memguard-target="memguard_prompt" '
        f'data-prompt="a cat">a {CAT_SPAN}</span></div>'
        '<p class="memguard-advice">Edit the highlighted words, or rerun with the Memorization guard script. '
        'Click a word to remove or de-emphasize it. <span class="memguard-legend">weaker '
        '<span class="memguard-swatch memguard-heat-0"></span><span class="memguard-swatch memguard-heat-1"></span>'
        '<span class="memguard-swatch memguard-heat-2"></span><span class="memguard-swatch memguard-heat-3"></span>'
        '<span class="memguard-swatch memguard-heat-4"></span> stronger influence on the score</span></p>'
        "</div></div>"
    )


def test_seed_rows_in_full():
    assert seed_rows([3, 4], [1.0, 2.0], None) == (
        '<table class="memguard-seeds"><thead><tr><th>seed</th><th>score</th><th>vs threshold</th><th></th></tr>'
        '</thead><tbody><tr><td>3</td><td>1</td><td><span class="memguard-meter"><span class="memguard-meter-fill '
        'memguard-meter-none" style="width:45.5%"></span></span></td><td>\u2014</td></tr>'
        '<tr><td>4</td><td>2</td><td><span class="memguard-meter"><span class="memguard-meter-fill '
        'memguard-meter-none" style="width:90.9%"></span></span></td><td>\u2014</td></tr></tbody></table>'
    )


def test_an_analysis_without_a_prompt_shows_an_empty_one():
    res = {"scores": [1.0], "score": 1.0, "threshold": 2.0, "flagged": False}
    assert '<span class="memguard-prompt" data-memguard-target="t" data-prompt=""></span>' in render_analysis(
        res, [0], "abc", "t"
    )


def test_an_analysis_that_could_not_score_says_why():
    res = {"prompt": "a cat", "scores": [None, None], "score": None, "threshold": 2.0, "flagged": False}
    html = render_analysis(res, [0, 1], "abc", "t")
    assert '<span class="memguard-image">model abc, 2 seeds</span>' in html
    assert "memguard could not score this prompt: every seed gave a non-finite score</p>" in html
    told = render_analysis({**res, "reason": "too long"}, [0, 1], "abc", "t")
    assert "memguard could not score this prompt: too long</p>" in told
    assert "The colours show which words the score depends on most. Click a word" in html
    assert "<td>\u2014</td><td><span" in html  # no score shown


def test_seed_rows_of_non_finite_zero_and_negative_scores():
    # nothing scored, no threshold: empty meters, no division by zero
    assert _meter(seed_rows([0, 1], [math.nan, None], None)) == [("none", "0.0", "\u2014"), ("none", "0.0", "\u2014")]
    assert _meter(seed_rows([0], [0.0], None)) == [("none", "0.0", "\u2014")]
    # negative scores (an anisotropy score can be) against no threshold: empty meters
    assert _meter(seed_rows([0, 1], [-1.0, -2.0], None)) == [("none", "0.0", "\u2014"), ("none", "0.0", "\u2014")]
    # a threshold below 1 still marks the meter at 60%
    small = seed_rows([0, 1], [0.15, 0.0], 0.3)
    assert _meter(small) == [("under", "30.0", "below"), ("under", "0.0", "below")]
    assert small.count('<span class="memguard-meter-mark"></span></span>') == 2
    # the seed and its score, in that order
    assert "<tr><td>9</td><td>0.15</td><td>" in seed_rows([9], [0.15], 0.3)


def test_a_word_needs_at_least_one_character():
    html = highlight_prompt("a cat", [{"start": 2, "end": 2, "normalized": 1.0}, {"start": 2, "end": 5}])
    assert html.count('class="memguard-word') == 1 and 'data-start="2" data-end="5"' in html
    assert highlight_prompt("", None) == '<span class="memguard-prompt" data-prompt=""></span>'
    assert highlight_prompt(None, None) == '<span class="memguard-prompt" data-prompt=""></span>'


def test_scores_are_numbers_only_when_finite():
    assert finite(1) and finite(1.5) and not finite(True) and not finite("1")
    assert not finite(math.inf) and not finite(math.nan)
    assert not finite(10**400)  # too large for a float
    assert fmt(10**400) == "\u2014" and fmt(None) == "\u2014" and fmt(math.nan) == "\u2014"
    assert fmt(1234.5678) == "1235" and fmt(1234.5678, 6) == "1234.57"
    assert heat_level(None) == 0 and heat_level(math.nan) == 0


def test_escaping_covers_quotes():
    assert esc("a \"b\" & 'c' <d>") == "a &quot;b&quot; &amp; &#x27;c&#x27; &lt;d&gt;"
