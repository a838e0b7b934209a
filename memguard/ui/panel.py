"""HTML for memguard's verdicts: the warning panel under a generation and the pieces the Memorization tab reuses.

Every string that reaches the markup goes through :func:`html.escape` (attribute values with ``quote=True``), so
nothing a prompt, a reason or a note contains can become markup. Numbers are formatted by this module. All classes
and ids carry the ``memguard-`` prefix; the colours live in the extension's ``style.css`` (light and dark themes).

A highlighted prompt is a ``span.memguard-prompt`` holding the prompt's text with each scored word wrapped in a
``span.memguard-word.memguard-heat-<0..4>`` that carries ``data-start``/``data-end`` (character offsets into the
prompt), ``data-word`` and a ``title`` with the raw significance. ``javascript/memguard.js`` offers "remove" and
"de-emphasize" on a click and edits the prompt box named by the container's ``data-memguard-target``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

from ..mitigate.base import still_above
from ..result import FLAGGED, OK, UNCALIBRATED, UNSCORED, verdict

HEAT_LEVELS = 5
ADVICE = "Edit the highlighted words, or rerun with the Memorization guard script."
ADVICE_MITIGATED = (
    "memguard steered this image away from the memorized one; to avoid it altogether, edit the highlighted words."
)
CLICK_HINT = "Click a word to remove or de-emphasize it."


def esc(value: object) -> str:
    """``html.escape`` of ``str(value)``, quotes included (safe in text and in attribute values)."""
    return html.escape(str(value), quote=True)


def finite(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a finite number (a bool is not; an int too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def fmt(value: float | None, digits: int = 4) -> str:
    """A score for people: ``digits`` significant digits, or an em dash when there is none."""
    if not finite(value):
        return "\u2014"
    return f"{value:.{digits}g}"


def heat_level(normalized: float | None) -> int:
    """Map a word's share of the prompt's strongest word (0..1) to one of :data:`HEAT_LEVELS` colour classes."""
    if not finite(normalized):
        return 0
    return min(HEAT_LEVELS - 1, int(min(max(normalized, 0.0), 1.0) * HEAT_LEVELS))


def _clean_words(prompt: str, words: Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """Words with valid, non-overlapping spans inside ``prompt``, in order (a malformed entry is dropped)."""
    spans = []
    for word in words or ():
        start, end = word.get("start"), word.get("end")
        if isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(prompt):
            spans.append(word)
    spans.sort(key=lambda w: w["start"])
    out: list[Mapping[str, Any]] = []
    for word in spans:
        if not out or word["start"] >= out[-1]["end"]:
            out.append(word)
    return out


def _word_span(prompt: str, word: Mapping[str, Any]) -> str:
    start, end = word["start"], word["end"]
    text = prompt[start:end]
    value, normalized = word.get("value"), word.get("normalized")
    title = f"significance {fmt(value)} ({fmt(normalized, 2)} of the strongest word)"
    level = heat_level(normalized)
    return (
        f'<span class="memguard-word memguard-heat-{level}" role="button" tabindex="0" '
        f'data-start="{start}" data-end="{end}" data-word="{esc(text)}" title="{esc(title)}">{esc(text)}</span>'
    )


def highlight_prompt(prompt: str, words: Sequence[Mapping[str, Any]] | None, target: str | None = None) -> str:
    """The prompt as escaped text with every scored word wrapped in a heat-coloured span.

    ``target`` names the element id of the prompt box the words edit when clicked (``None``: not editable).
    """
    prompt = str(prompt or "")
    pieces, cursor = [], 0
    for word in _clean_words(prompt, words):
        pieces.append(esc(prompt[cursor : word["start"]]))
        pieces.append(_word_span(prompt, word))
        cursor = word["end"]
    pieces.append(esc(prompt[cursor:]))
    target_attr = f' data-memguard-target="{esc(target)}"' if target else ""
    return f'<span class="memguard-prompt"{target_attr} data-prompt="{esc(prompt)}">{"".join(pieces)}</span>'


def heat_legend() -> str:
    """Swatches from the weakest to the strongest heat class."""
    swatches = "".join(f'<span class="memguard-swatch memguard-heat-{i}"></span>' for i in range(HEAT_LEVELS))
    return f'<span class="memguard-legend">weaker {swatches} stronger influence on the score</span>'


def status_of(result: Mapping[str, Any]) -> str:
    """The result's verdict (``memguard.result.VERDICTS``)."""
    return verdict(result.get("score"), result.get("threshold"), bool(result.get("flagged")))


BADGES = {
    UNSCORED: "Not scored",
    UNCALIBRATED: "Not calibrated",
    FLAGGED: "Likely memorized",
    OK: "No memorization detected",
}


def badge(status: str, mitigated: bool = False) -> str:
    """The verdict as a coloured label (a flagged image that was mitigated says so)."""
    label = BADGES[status] + (", mitigated" if mitigated and status == FLAGGED else "")
    return f'<span class="memguard-badge memguard-badge-{esc(status)}">{esc(label)}</span>'


def score_line(result: Mapping[str, Any], subject: str = "image") -> str:
    """One sentence comparing the score with the threshold (or saying why there is no comparison)."""
    status = status_of(result)
    if status == UNSCORED:
        reason = result.get("reason") or "no reason was given"
        return f'<p class="memguard-score">memguard could not score this {esc(subject)}: {esc(reason)}</p>'
    score = fmt(result.get("score"))
    if status == UNCALIBRATED:
        return (
            f'<p class="memguard-score">Score <b>{score}</b>; not calibrated: this model has no threshold yet. '
            "Calibrate it in the Memorization tab.</p>"
        )
    relation = "above" if result.get("flagged") else "at or below"
    source = result.get("threshold_source")
    return (
        f'<p class="memguard-score">Score <b>{score}</b> is {relation} the threshold '
        f"<b>{fmt(result.get('threshold'))}</b>{f' ({esc(source)})' if source else ''}.</p>"
    )


def note_line(result: Mapping[str, Any]) -> str:
    """The result's note (e.g. how the word colours were computed), or nothing."""
    note = result.get("note")
    return f'<p class="memguard-note">{esc(note)}</p>' if note else ""


def mitigation_block(mitigation: Mapping[str, Any] | None, threshold: float | None) -> str:
    """What mitigation did: strategy, score before -> after, and what it cost."""
    if not mitigation:
        return ""
    before, after = mitigation.get("score_before"), mitigation.get("score_after")
    outcome = ""
    if isinstance(after, int | float) and threshold is not None:
        outcome = " (still above the threshold)" if still_above(mitigation, threshold) else " (now below the threshold)"
    cost = mitigation.get("unet_equivalents", mitigation.get("unet_forwards"))
    parts = [
        f"<b>Mitigation</b>: {esc(mitigation.get('strategy', 'unknown'))}",
        f"score {fmt(before)} &rarr; {fmt(after)}{esc(outcome)}",
        f"cost {fmt(cost, 6)} UNet passes, {fmt(mitigation.get('seconds'), 3)} s",
    ]
    notes = [str(n) for n in mitigation.get("notes") or ()]
    note_html = "".join(f"<li>{esc(n)}</li>" for n in notes)
    notes_list = f'<ul class="memguard-notes">{note_html}</ul>' if notes else ""
    return f'<div class="memguard-mitigation">{"; ".join(parts)}.{notes_list}</div>'


def _image_title(result: Mapping[str, Any]) -> str:
    index, seed = result.get("index"), result.get("seed")
    label = f"Image {index + 1}" if isinstance(index, int) else "Image"
    return f"{label}, seed {seed}" if seed is not None else label


def render_result(result: Mapping[str, Any], target: str | None = "txt2img_prompt") -> str:
    """One image's block of the warning panel."""
    status = status_of(result)
    mitigated = bool(result.get("mitigation")) and not still_above(result.get("mitigation"), result.get("threshold"))
    body = [
        (
            f'<div class="memguard-result-head">{badge(status, mitigated)} <span class="memguard-image">'
            f"{esc(_image_title(result))}</span></div>"
        ),
        score_line(result),
    ]
    if status == FLAGGED:
        prompt = highlight_prompt(result.get("prompt", ""), result.get("words"), target)
        body.append(f'<div class="memguard-prompt-box">{prompt}</div>')
        body.append(note_line(result))
        body.append(f'<p class="memguard-advice">{esc(ADVICE_MITIGATED if mitigated else ADVICE)}</p>')
    body.append(mitigation_block(result.get("mitigation"), result.get("threshold")))
    return f'<div class="memguard-result memguard-{status}">{"".join(body)}</div>'


def render_panel(results: list[dict], target: str | None = "txt2img_prompt", notices: Sequence[str] = ()) -> str:
    """The warning panel shown under a generation: what memguard did once (``notices``, e.g. an automatic
    calibration), then one block per image (empty string for no results).

    ``target`` is the id of the prompt box that clicking a highlighted word edits (``txt2img_prompt`` or
    ``img2img_prompt``; ``None`` makes the words inert).
    """
    if not results:
        return ""
    said = "".join(message(str(n), "info") for n in notices)
    blocks = "".join(render_result(r, target) for r in results)
    return f'<div class="memguard-panel" role="status"><div class="memguard-title">memguard</div>{said}{blocks}</div>'


def message(text: str, kind: str = "error") -> str:
    """A one-line error, warning or note (``kind`` in error/warning/info)."""
    kind = kind if kind in ("error", "warning", "info") else "info"
    return f'<div class="memguard-message memguard-{kind}" role="alert">{esc(text)}</div>'


def seed_rows(seeds: Sequence[int], scores: Sequence[float | None], threshold: float | None) -> str:
    """Per-seed scores against the threshold, with a small meter (the threshold is the mark at 60%)."""
    shown = [s for s in scores if finite(s)]
    marked = threshold is not None and threshold > 0
    top = threshold / 0.6 if threshold is not None and marked else (max(shown, default=0.0) * 1.1 or 1.0)
    rows = []
    for seed, score in zip(seeds, scores):
        ok = finite(score)
        value = score if finite(score) else 0.0
        over = ok and threshold is not None and value > threshold
        width = min(100.0, max(0.0, 100.0 * value / top)) if ok and top > 0 else 0.0
        state = "over" if over else ("none" if not ok or threshold is None else "under")
        meter = (
            f'<span class="memguard-meter"><span class="memguard-meter-fill memguard-meter-{state}" '
            f'style="width:{width:.1f}%"></span>'
            + ('<span class="memguard-meter-mark"></span>' if marked else "")
            + "</span>"
        )
        verdict = {"over": "above", "under": "below", "none": "\u2014"}[state]
        rows.append(f"<tr><td>{esc(seed)}</td><td>{fmt(score)}</td><td>{meter}</td><td>{verdict}</td></tr>")
    head = "<tr><th>seed</th><th>score</th><th>vs threshold</th><th></th></tr>"
    return f'<table class="memguard-seeds"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def render_analysis(result: Mapping[str, Any], seeds: Sequence[int], model_id: str, target: str) -> str:
    """The Analyze result: verdict, mean score vs threshold, per-seed scores and the clickable highlighted prompt."""
    status = status_of(result)
    head = f'<div class="memguard-result-head">{badge(status)} <span class="memguard-image">model {esc(model_id)}'
    head += f", {len(seeds)} seed{'s' if len(seeds) != 1 else ''}</span></div>"
    reason = result.get("reason") or "every seed gave a non-finite score"
    summary = score_line({**result, "reason": reason}, subject="prompt")
    prompt = highlight_prompt(result.get("prompt", ""), result.get("words"), target)
    advice = ADVICE if status == FLAGGED else "The colours show which words the score depends on most."
    parts = [
        head,
        summary,
        seed_rows(seeds, result.get("scores") or [], result.get("threshold")),
        f'<div class="memguard-prompt-box">{prompt}</div>',
        note_line(result),
        f'<p class="memguard-advice">{esc(advice)} {esc(CLICK_HINT)} {heat_legend()}</p>',
    ]
    return f'<div class="memguard-panel memguard-analysis"><div class="memguard-result memguard-{status}">' + (
        "".join(parts) + "</div></div>"
    )
