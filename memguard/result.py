"""One image's result in a WebUI generation and the one verdict vocabulary every surface shows.

The infotext, the log lines, the audit log, the panel, the page's script and the API all read an
:class:`ImageResult` (or its :meth:`ImageResult.to_dict`, in the panel payload of :data:`PAYLOAD_VERSION`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .mitigate.base import still_above

FLAGGED, OK, UNCALIBRATED, UNSCORED = "flagged", "ok", "uncalibrated", "unscored"
VERDICTS = (FLAGGED, OK, UNCALIBRATED, UNSCORED)
PAYLOAD_VERSION = 2  # the panel payload's layout (``hosts.a1111.report.payload``); 2: ``verdict`` per result


def verdict(score: float | None, threshold: float | None, flagged: bool) -> str:
    """``flagged`` (score above the threshold), ``ok``, ``uncalibrated`` (scored, no threshold to judge by) or
    ``unscored`` (memguard could not score the image)."""
    if score is None:
        return UNSCORED
    if flagged:
        return FLAGGED
    return UNCALIBRATED if threshold is None else OK


@dataclass
class ImageResult:
    """Image ``index`` of a generation: its first-step score (in native-size units) and Wen's plain ``d``, the
    threshold and where it came from, the verdict, the words driving a flagged score, and what mitigation did."""

    index: int
    seed: int | None
    prompt: str
    score: float | None
    d: float | None
    threshold: float | None
    threshold_source: str
    flagged: bool
    extra_pass: bool = False
    reason: str = ""
    sub_scores: list[float] = field(default_factory=list)
    words: list[dict] = field(default_factory=list)
    note: str | None = None
    mitigation: dict[str, Any] | None = None  # ``Report.to_dict()``, scores in native-size units
    mitigation_error: str | None = None  # why a mitigation was abandoned (the image was generated unmitigated)

    @property
    def verdict(self) -> str:
        return verdict(self.score, self.threshold, self.flagged)

    @property
    def still_above(self) -> bool:
        """Mitigated, re-scored, and still above the threshold."""
        return still_above(self.mitigation, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}
