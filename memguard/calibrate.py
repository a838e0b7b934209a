"""Thresholds at a chosen false-positive rate, ROC figures, and the per-model calibration store.

Wen et al. 2024 report threshold-free AUC and leave the threshold to the model owner (Sec. 3.2, and their
limitations: no universal value). memguard calibrates one per checkpoint on benign prompts.

The ROC conventions follow Wen's evaluation notebook: AUC by the Mann-Whitney statistic (ties count one half), and
TPR at 1% FPR with the *strict* rule, the largest TPR among operating points whose FPR is strictly below 1%. The
"closest FPR" rule used by Ren et al. and Asthana et al. is available for comparison.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FORMAT = "memguard-calibration"
VERSION = 1


def threshold_at_fpr(benign: Sequence[float], fpr: float) -> float:
    """Smallest threshold ``tau`` such that at most ``fpr`` of the benign scores are flagged (``score > tau``)."""
    values = np.sort(np.asarray([s for s in benign if math.isfinite(s)], dtype=np.float64))
    if values.size == 0:
        raise ValueError("no finite benign scores to calibrate on")
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"false-positive rate must be in [0, 1), got {fpr}")
    allowed = math.floor(fpr * values.size + 1e-9)
    return float(values[values.size - 1 - allowed])


def roc_curve(positives: Sequence[float], negatives: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` for the rule ``score >= threshold``, from the highest threshold down."""
    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = np.array([0.0] + [(pos >= t).mean() for t in thresholds])
    fpr = np.array([0.0] + [(neg >= t).mean() for t in thresholds])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Area under the ROC curve: P(score_pos > score_neg) + P(tie) / 2."""
    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUC needs at least one positive and one negative score")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def tpr_at_fpr(positives: Sequence[float], negatives: Sequence[float], fpr: float = 0.01, strict: bool = True) -> float:
    """TPR at a false-positive rate: ``strict`` = largest TPR with FPR < ``fpr`` (Wen); else the point closest to it."""
    f, t, _ = roc_curve(positives, negatives)
    if strict:
        return float(t[f < fpr].max())
    return float(t[np.argmin(np.abs(f - fpr))])


def default_store() -> Path:
    """``$MEMGUARD_HOME/calibration.json``, else ``~/.cache/memguard/calibration.json``: the command line's store,
    and the WebUI seam's outside a WebUI."""
    home = os.environ.get("MEMGUARD_HOME") or Path.home() / ".cache" / "memguard"
    return Path(home) / "calibration.json"


class CalibrationStoreError(RuntimeError):
    """The calibration file cannot be used; it is left untouched."""


class CalibrationWriteError(CalibrationStoreError, OSError):
    """The calibration file could not be written (read-only, disk full, ...); the previous one is unchanged."""


@dataclass
class Calibration:
    """One model's threshold and how it was obtained."""

    threshold: float
    fpr: float
    n_prompts: int
    method: str = "wen"
    steps: int = 1
    sampler: str = "ddim"
    created: float = 0.0
    prompts: str = ""
    median: float | None = None
    origin: str = "user"  # "automatic" (memguard, at first use), "user" (Calibrate, the command line), "shipped"

    def describe(self) -> str:
        """Where this threshold came from, in the words the panel, the infotext's log, the audit log and the API use."""
        how = {"automatic": "automatically", "shipped": "by the model's author"}.get(self.origin, "by the user")
        return f"calibrated {how} at FPR {self.fpr:g}"

    @classmethod
    def from_scores(cls, scores: Sequence[float], fpr: float, **meta) -> Calibration:
        finite = [s for s in scores if math.isfinite(s)]
        return cls(
            threshold=threshold_at_fpr(finite, fpr),
            fpr=fpr,
            n_prompts=len(finite),
            created=time.time(),
            median=float(np.median(finite)),
            **meta,
        )


class CalibrationStore:
    """Thresholds keyed by model hash, in one JSON file written atomically.

    A file that is not valid JSON, or not a memguard calibration file, raises :class:`CalibrationStoreError` and is
    never overwritten: the user's previous thresholds are never lost to a bad write or a foreign file. A file without
    write permission is left alone even where the OS would allow replacing it (root), and a failed write (read-only
    directory, disk full) raises :class:`CalibrationWriteError` with the previous file unchanged.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def _load(self) -> dict:
        if not self.path.exists():
            return {"format": FORMAT, "version": VERSION, "models": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CalibrationStoreError(
                f"calibration file {self.path} is unreadable ({err}); it was left as it is"
            ) from err
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("models"), dict):
            raise CalibrationStoreError(f"{self.path} is not a memguard calibration file; it was left as it is")
        return data

    def models(self) -> dict[str, Calibration]:
        fields = Calibration.__dataclass_fields__
        out = {}
        for key, entry in self._load()["models"].items():
            try:
                out[key] = Calibration(**{k: v for k, v in dict(entry).items() if k in fields})
            except (TypeError, AttributeError):
                continue
        return out

    def get(self, model_hash: str) -> Calibration | None:
        return self.models().get(model_hash)

    def check_writable(self) -> dict:
        """The file's contents, or :class:`CalibrationStoreError` if :meth:`put` would refuse to replace it (call it
        before a long calibration so that its result is not lost)."""
        data = self._load()
        if self.path.exists() and not stat.S_IMODE(self.path.stat().st_mode) & 0o222:
            raise CalibrationWriteError(f"calibration file {self.path} is read-only; it was left as it is")
        return data

    def _write_error(self, err: OSError) -> CalibrationWriteError:
        return CalibrationWriteError(f"could not write the calibration file {self.path} ({err}); it was left as it is")

    def put(self, model_hash: str, calibration: Calibration) -> None:
        data = self.check_writable()
        data["models"][model_hash] = asdict(calibration)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".memguard-", suffix=".json", dir=self.path.parent)
        except OSError as err:
            raise self._write_error(err) from err
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise self._write_error(err) from err
            raise
