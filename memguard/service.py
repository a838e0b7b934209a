"""What the UI tab and the HTTP API ask of a loaded model, independent of the host that loaded it.

:class:`PipelineService` serves a diffusers-format model directory (the command line's pipeline; the miniature in
the demo launcher and the browser test). The WebUI glue provides the same interface over the checkpoint the WebUI
has loaded (``memguard.hosts``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .calibrate import Calibration, CalibrationStore

if TYPE_CHECKING:
    from .pipeline import Model

BENIGN_PROMPTS = Path(__file__).parent / "data" / "benign_prompts.txt"


def benign_prompts() -> list[str]:
    """memguard's own benign calibration prompts (written for the project)."""
    return [line for line in BENIGN_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


class Service(Protocol):
    """Scores, explanations and calibration for the model a host has loaded."""

    def model_id(self) -> str: ...

    def threshold(self) -> float | None: ...

    def threshold_source(self) -> str:
        """Where :meth:`threshold` comes from (calibrated, shipped, manual), or why there is none."""
        ...

    def analyze(self, prompt: str, seeds: Sequence[int]) -> dict:
        """``{"prompt", "scores": [per seed], "score", "threshold", "flagged", "words": [...], "tokens": [...]}``"""
        ...

    def audit(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[dict]:
        """One ``{"prompt", "score", "scores", "flagged", "threshold"}`` per prompt (no explanation: fast)."""
        ...

    def calibrate(self, prompts: Sequence[str], fpr: float) -> dict:
        """Score ``prompts`` as benign, store the threshold at ``fpr``; ``{"threshold", "fpr", "n", "scores"}``."""
        ...


def verdict(scores: Sequence[float | None], threshold: float | None) -> tuple[float | None, bool]:
    """Mean of the finite per-seed scores and whether it exceeds the threshold."""
    finite = [s for s in scores if s is not None and math.isfinite(s)]
    mean = statistics.fmean(finite) if finite else None
    return mean, bool(mean is not None and threshold is not None and mean > threshold)


def result(prompt: str, scores: Sequence[float | None], threshold: float | None, **extra) -> dict:
    """The dict every service returns for one prompt: per-seed scores, their mean and the verdict."""
    mean, flagged = verdict(scores, threshold)
    return {
        "prompt": prompt,
        "scores": list(scores),
        "score": mean,
        "threshold": threshold,
        "flagged": flagged,
        **extra,
    }


def calibrate_into(
    model_id: str, store: CalibrationStore, benign_scores: Callable[[], list[float] | None], fpr: float, **meta
) -> dict | None:
    """Score benign prompts (``benign_scores``: one first-step score each, or None when interrupted), derive the
    threshold at ``fpr`` and store it under ``model_id``; the store is checked first, so that a long run's result is
    never lost to a file it cannot write. ``{"threshold", "fpr", "n", "scores"}``, or None when interrupted."""
    store.check_writable()
    scores = benign_scores()
    if scores is None:
        return None
    scores = [s for s in scores if s is not None and math.isfinite(s)]
    calibration = Calibration.from_scores(scores, fpr, **meta)
    store.put(model_id, calibration)
    return {"threshold": calibration.threshold, "fpr": fpr, "n": len(scores), "scores": scores}


@dataclass
class PipelineService:
    """:class:`Service` over a :class:`memguard.model.Model` and a calibration store."""

    model: Model
    store: CalibrationStore
    steps: int = 50
    guidance: float = 7.5

    def model_id(self) -> str:
        return self.model.model_hash

    def threshold(self) -> float | None:
        stored = self.store.get(self.model.model_hash)
        return stored.threshold if stored is not None else self.model.shipped_threshold()

    def threshold_source(self) -> str:
        stored = self.store.get(self.model.model_hash)
        if stored is not None:
            return stored.describe()
        if self.model.shipped_threshold() is not None:
            return "shipped with the model"
        return "this model is not calibrated yet"

    def analyze(self, prompt: str, seeds: Sequence[int]) -> dict:
        from .pipeline import explain_prompt, score

        scores = [d.score for d in score(self.model, prompt, list(seeds), steps=self.steps, guidance=self.guidance)]
        expl = explain_prompt(self.model, prompt, list(seeds), steps=self.steps, guidance=self.guidance)
        return result(prompt, scores, self.threshold(), **expl.to_dict())

    def audit(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[dict]:
        from .pipeline import score_prompts

        tau = self.threshold()
        per_prompt = score_prompts(self.model, list(prompts), list(seeds), steps=self.steps, guidance=self.guidance)
        return [result(prompt, [d.score for d in dets], tau) for prompt, dets in zip(prompts, per_prompt)]

    def calibrate(self, prompts: Sequence[str], fpr: float) -> dict:
        def benign_scores() -> list[float]:
            return [r["score"] for r in self.audit(prompts, [0])]

        calibrated = calibrate_into(self.model_id(), self.store, benign_scores, fpr)
        assert calibrated is not None  # None only when benign_scores is interrupted, which this one never is
        return calibrated
