"""What the Memorization tab's buttons do, without gradio: each takes plain values and returns HTML (and data).

Input problems (an empty prompt, an unreadable file, no model) come back as a :func:`memguard.ui.panel.message`
block, never as a traceback; an unexpected failure is logged with its traceback and shown in one line.
``progress(fraction, desc=...)`` is gradio's ``gr.Progress`` in the tab and a no-op in tests.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..calibrate import CalibrationStoreError
from ..result import FLAGGED, OK, UNCALIBRATED
from ..service import Service, benign_prompts
from ..tokens import well_formed
from .charts import histogram_svg
from .files import PromptFileError, read_prompt_file, upload_path, write_audit_csv
from .panel import esc, fmt, message, render_analysis

log = logging.getLogger("memguard.ui")

ServiceFactory = Callable[[], Service]
Progress = Callable[..., Any]
MAX_SEEDS = 16
AUDIT_CHUNK = 32
PROMPT_TARGET = "memguard_prompt"
TABLE_HEADERS = ["#", "prompt", "score", "flagged"]


class UserError(ValueError):
    """Something the user can fix; the message is shown as it is."""


def no_progress(*_args: Any, **_kwargs: Any) -> None:
    """The progress callback used outside gradio."""


def get_service(factory: ServiceFactory) -> Service:
    """The host's service, or a :class:`UserError` that says why there is none (no model loaded, bad model)."""
    try:
        service = factory()
    except Exception as err:  # the host's reason, whatever its type, is the useful message
        raise UserError(f"memguard has no model to work with: {err}") from err
    if service is None:
        raise UserError("memguard has no model to work with: load a checkpoint first")
    return service


def seeds_from_count(count: float | int | None) -> list[int]:
    """Seeds ``0 .. count-1`` for a seed count typed in a number box (1 to :data:`MAX_SEEDS`)."""
    if count is None or (isinstance(count, float) and not math.isfinite(count)):
        raise UserError("Enter how many seeds to score (1 to 16).")
    n = round(float(count))
    if not 1 <= n <= MAX_SEEDS:
        raise UserError(f"The number of seeds must be between 1 and {MAX_SEEDS}, not {n}.")
    return list(range(n))


def check_fpr(fpr: float | None) -> float:
    """A false-positive rate in ``[0, 1)``; a percentage typed by mistake gets a hint."""
    if fpr is None or not math.isfinite(float(fpr)):
        raise UserError("Enter a false-positive rate, e.g. 0.01 for 1%.")
    value = float(fpr)
    if not 0.0 <= value < 1.0:
        hint = f" (for {value:g}% enter {value / 100:g})" if 1.0 <= value < 100.0 else ""
        raise UserError(f"The false-positive rate must be at least 0 and below 1{hint}.")
    return value


def _guarded(run: Callable[[], Any], fallback: Callable[[str], Any]) -> Any:
    """Run an action; turn a :class:`UserError` or any failure into ``fallback(html_message)``."""
    try:
        return run()
    except (UserError, PromptFileError, CalibrationStoreError) as err:
        return fallback(message(str(err)))
    except Exception as err:  # the UI must answer with a message, not hang on a traceback
        log.exception("memguard: action failed")
        return fallback(message(f"memguard failed: {type(err).__name__}: {err}"))


# --- Analyze --------------------------------------------------------------------------------------------------------
def analyze(
    factory: ServiceFactory,
    prompt: str | None,
    seed_count: float | int | None,
    progress: Progress = no_progress,
    target: str = PROMPT_TARGET,
) -> str:
    """Score ``prompt`` on ``seed_count`` seeds and explain it: the verdict and the clickable highlighted prompt."""

    def run() -> str:
        text = prompt or ""
        if not text.strip():
            raise UserError("Enter a prompt to analyze: the prompt box is empty.")
        if not well_formed(text):
            raise UserError("The prompt holds a broken character (an unpaired surrogate): retype or remove it.")
        seeds = seeds_from_count(seed_count)
        service = get_service(factory)
        progress(0.1, desc=f"Scoring and explaining on {len(seeds)} seed(s)")
        result = service.analyze(text, seeds)
        progress(1.0, desc="Done")
        return render_analysis(result, seeds, service.model_id(), target)

    return _guarded(run, lambda html: html)


# --- Calibrate ------------------------------------------------------------------------------------------------------
def calibration_prompts(upload: object) -> tuple[list[str], int]:
    """The bundled benign prompts plus those of an uploaded file: ``(prompts, how many came from the file)``."""
    prompts = benign_prompts()
    path = upload_path(upload)
    extra = read_prompt_file(path) if path is not None else []
    return prompts + extra, len(extra)


def _calibration_summary(result: dict, model_id: str, extra: int) -> str:
    n, fpr, tau = result.get("n", 0), result.get("fpr", 0.0), result.get("threshold")
    flagged = sum(1 for s in result.get("scores") or [] if tau is not None and s > tau)
    source = "memguard's benign prompts" + (f" and {extra} from your file" if extra else "")
    resolution = f"with {n} prompts the false-positive rate moves in steps of {fmt(1 / n, 3)}" if n else ""
    return (
        '<div class="memguard-panel memguard-calibration"><div class="memguard-result memguard-ok">'
        f'<div class="memguard-result-head"><span class="memguard-badge memguard-badge-clear">Calibrated</span> '
        f'<span class="memguard-image">model {esc(model_id)}</span></div>'
        f'<p class="memguard-score">Threshold <b>{fmt(tau)}</b> at false-positive rate {fmt(fpr, 3)} '
        f"({flagged} of {n} benign prompts above it), stored for this model.</p>"
        f'<p class="memguard-advice">Scored {n} prompts: {esc(source)}; {esc(resolution)}.</p>'
        f"{histogram_svg(result.get('scores') or [], tau, title='Benign scores and the new threshold')}"
        "</div></div>"
    )


def calibrate(factory: ServiceFactory, upload: object, fpr: float | None, progress: Progress = no_progress) -> str:
    """Score the benign prompts, store the threshold at ``fpr`` and show it with the score histogram."""

    def run() -> str:
        rate = check_fpr(fpr)
        prompts, extra = calibration_prompts(upload)
        service = get_service(factory)
        progress(0.05, desc=f"Scoring {len(prompts)} benign prompts")
        result = service.calibrate(prompts, rate)
        progress(1.0, desc="Done")
        return _calibration_summary(result, service.model_id(), extra)

    return _guarded(run, lambda html: html)


# --- Batch audit ----------------------------------------------------------------------------------------------------
@dataclass
class Audit:
    """The Batch audit's outputs: summary HTML (with histogram), table rows and the CSV file."""

    html: str
    rows: list[list[Any]] = field(default_factory=list)
    csv: Path | None = None


def audit_rows(
    service: Service, prompts: Sequence[str], seeds: Sequence[int], progress: Progress = no_progress
) -> list[dict]:
    """``service.audit`` over the prompts, :data:`AUDIT_CHUNK` at a time so progress can be shown."""
    rows: list[dict] = []
    for start in range(0, len(prompts), AUDIT_CHUNK):
        progress(start / len(prompts), desc=f"Scored {start} of {len(prompts)} prompts")
        rows.extend(service.audit(prompts[start : start + AUDIT_CHUNK], seeds))
    progress(1.0, desc=f"Scored {len(prompts)} prompts")
    return rows


def _flag_cell(row: dict) -> str:
    if row.get("score") is None:
        return "not scored"
    if row.get("threshold") is None:
        return "not calibrated"
    return "yes" if row.get("flagged") else "no"


def table_rows(rows: Sequence[dict]) -> list[list[Any]]:
    """Rows for the ``gr.Dataframe``: index, prompt, score (4 significant digits), flagged."""
    out = []
    for i, row in enumerate(rows):
        score = row.get("score")
        shown = float(fmt(score)) if score is not None and math.isfinite(score) else None
        out.append([i, row.get("prompt", ""), shown, _flag_cell(row)])
    return out


def _audit_summary(rows: Sequence[dict], model_id: str, n_seeds: int) -> str:
    tau = rows[0].get("threshold") if rows else None
    scores = [r["score"] for r in rows if r.get("score") is not None]
    flagged = sum(1 for r in rows if r.get("flagged"))
    unscored = len(rows) - len(scores)
    if tau is None:
        verdict = "This model is not calibrated: calibrate it to flag prompts."
    else:
        verdict = f"{flagged} of {len(rows)} prompts are above the threshold {fmt(tau)}."
    extra = f" {unscored} could not be scored." if unscored else ""
    status = FLAGGED if flagged else (UNCALIBRATED if tau is None else OK)
    return (
        f'<div class="memguard-panel memguard-audit"><div class="memguard-result memguard-{status}">'
        f'<p class="memguard-score">Audited {len(rows)} prompts on {n_seeds} seed(s) with model {esc(model_id)}. '
        f"{esc(verdict)}{esc(extra)}</p>"
        f"{histogram_svg(scores, tau, title='Audit scores and the threshold')}</div></div>"
    )


def audit(
    factory: ServiceFactory,
    upload: object,
    seed_count: float | int | None,
    progress: Progress = no_progress,
    out_dir: Path | str | None = None,
) -> Audit:
    """Score every prompt of an uploaded file: summary with histogram, table rows, and a CSV report."""

    def run() -> Audit:
        path = upload_path(upload)
        if path is None:
            raise UserError("Upload a prompt file first: one prompt per line, or JSON lines with 'prompt'.")
        prompts = read_prompt_file(path)
        seeds = seeds_from_count(seed_count)
        service = get_service(factory)
        rows = audit_rows(service, prompts, seeds, progress)
        csv_path = write_audit_csv(rows, out_dir)
        return Audit(_audit_summary(rows, service.model_id(), len(seeds)), table_rows(rows), csv_path)

    return _guarded(run, lambda html: Audit(html))
