"""What a generation tells the user: the infotext (one table of labels, :data:`INFOTEXT`, drives writing and the
guard script's paste-back), the log lines under the images, and the payload the panel renders and the API returns."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ... import __version__
from ...result import PAYLOAD_VERSION, ImageResult
from .. import families
from .process import log_failure
from .run import Run, batch_offset


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def _score(r: ImageResult) -> str | None:
    if r.score is None:
        return None
    return f"{r.score:.4g}/{r.threshold:.4g}" if r.threshold is not None else f"{r.score:.4g}"


# where a threshold came from, as one word the infotext needs no quotes for (``Run.threshold_source`` starts with)
THRESHOLD_ORIGINS = (
    ("manual threshold (request)", "request"),
    ("manual", "manual"),
    ("calibrated automatically", "auto"),
)


def _threshold(r: ImageResult) -> str | None:
    if r.threshold is None or not r.threshold_source:
        return None
    return next((word for start, word in THRESHOLD_ORIGINS if r.threshold_source.startswith(start)), "calibrated")


def _mitigation(r: ImageResult) -> str | None:
    m = r.mitigation
    if m is None:
        return f"failed ({r.mitigation_error.split(':')[0]})" if r.mitigation_error else None
    above = " still above threshold" if r.still_above else ""
    return f"{m['strategy']} {_fmt(m['score_before'])}->{_fmt(m['score_after'])}{above}"


@dataclass(frozen=True)
class Label:
    """One infotext entry: per image (``value`` of its result), or once per generation, pasted back into the guard
    script's component ``paste`` when a user sends an image's parameters to txt2img."""

    name: str
    value: Callable[[ImageResult], str | None] | None = None
    paste: str | None = None


STRATEGY = Label("Memguard strategy", paste="strategy")  # the guard script's, once per generation
FORCE = Label("Memguard force", paste="force")
VERSION = Label("Memguard version")


def _reason(r: ImageResult) -> str | None:
    """Why an ``unscored`` image has no score, when memguard does not apply to its model or job
    (``not-applicable/flow-matching``, ``.../guidance-distilled``, ``.../img2img``: ``hosts.families``)."""
    return families.infotext_value(r.reason) if r.score is None else None


INFOTEXT = (
    Label("Memguard score", _score),
    Label("Memguard verdict", lambda r: r.verdict),
    Label("Memguard reason", _reason),
    Label("Memguard threshold", _threshold),
    Label("Memguard mitigation", _mitigation),
    STRATEGY,
    FORCE,
    VERSION,
)
PER_IMAGE = tuple(entry for entry in INFOTEXT if entry.value is not None)
INFOTEXT_KEYS = tuple(entry.name for entry in PER_IMAGE)


def infotext(run: Run) -> dict[str, Any]:
    """Per-image infotext values (the host calls them with the image's index within its batch) and the version."""

    def getter(name: str, value: Callable[[ImageResult], str | None]) -> Callable[..., str | None]:
        def get(p: Any = None, index: int = 0, **_kw: Any) -> str | None:
            try:
                result = run.results.get(batch_offset(p, 1) + index)
                return None if result is None else value(result)
            except Exception as err:  # shielded: the image keeps the rest of its infotext
                log_failure(f"writing {name} to the infotext")
                run.fail(f"writing {name} to the infotext", err)
                return None

        return get

    values = {entry.name: getter(entry.name, entry.value) for entry in PER_IMAGE if entry.value is not None}
    return {**values, VERSION.name: __version__}


def summary_lines(run: Run) -> list[str]:
    """Readable lines for the generation's log (``p.comment``), plus one data line the panel script renders."""
    lines = [f"memguard: {n}" if not n.startswith("memguard") else n for n in run.notices]
    for r in run.ordered():
        if r.score is None and not run.not_applicable:  # not applicable: the notice said why, once
            lines.append(f"memguard could not score image {r.index + 1}: {r.reason or 'unknown'}")
        elif r.flagged:
            lines.append(_flagged_line(r))
    if run.results and not run.not_applicable and all(r.threshold is None for r in run.results.values()):
        lines.append(f"memguard: scores recorded but not judged: {run.threshold_source}")
    for error in run.errors:
        lines.append(f"memguard could not score this generation: {error}")
    lines.append("memguard-data:" + json.dumps(payload(run), ensure_ascii=True, separators=(",", ":")))
    return lines


def _flagged_line(r: ImageResult) -> str:
    words = ", ".join(w["text"] for w in sorted(r.words, key=lambda w: -w["value"])[:3])
    line = (
        f"memguard: image {r.index + 1} (seed {r.seed}) may reproduce a training image: "
        f"score {r.score:.3g} > threshold {r.threshold:.3g}"
    )
    if words:
        line += f"; driven by: {words}"
    m = r.mitigation
    if m is not None and r.still_above:
        return line + (
            f"; mitigation ({m['strategy']}) did not bring it below the threshold: "
            f"{_fmt(m['score_before'])} -> {_fmt(m['score_after'])}; edit those words"
        )
    if m is not None:
        return line + f"; mitigated ({m['strategy']}): {_fmt(m['score_before'])} -> {_fmt(m['score_after'])}"
    if r.mitigation_error:
        return line + f"; memguard could not mitigate it ({r.mitigation_error}): generated unmitigated"
    return line + "; edit those words, or rerun with the Memorization guard script"


def payload(run: Run) -> dict:
    """The generation's results as data (the panel's data line; the API's ``info``): per image, in order, with its
    verdict; the faults; where the threshold came from."""
    return {
        "version": __version__,
        "payload": PAYLOAD_VERSION,
        "results": [r.to_dict() for r in run.ordered()],
        "errors": run.errors,
        "source": run.threshold_source,
        "notices": run.notices,
    }
