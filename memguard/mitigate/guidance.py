"""Inference-time mitigation by delayed or opposite guidance (Jain et al., CVPR 2025).

Classifier-free guidance applied while the trajectory is still inside a memorized image's attraction basin pulls it
onto that image. The transition out of the basin shows as the first local minimum of
``d_t = || eps(x_t, c) - eps(x_t, empty) ||_2`` along the trajectory.

* dynamic (DTP): scale ``before`` (1.0: the conditional prediction alone) until the first step ``k`` with
  ``d_{k-1} < d_{k-2}`` and ``d_k > d_{k-1}``, then the user's scale (``d`` is read from the CFG pair the sampler
  computes anyway: no extra pass);
* static (STP): scale ``before`` while the model timestep ``t > switch_t`` (Jain et al. use 500-700 of 1000), then the
  user's scale;
* opposite guidance (OG): ``before < 0``, i.e. ``eps_u - s (eps_c - eps_u)``, guiding away from the prompt first.
  With the dynamic rule memguard finds the minimum on the live trajectory rather than in a separate unguided pass
  (the released code's extra pass); ``latest`` bounds the switch to a fraction of the steps in either case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Case, Intervention, Report


@dataclass
class GuidanceSchedule:
    """Per-image guidance scale along the trajectory; ``switched_at`` is the step the user's scale took over."""

    mode: str = "dynamic"
    before: float = 1.0
    switch_t: int = 650
    latest: float = 0.6
    history: list[float] = field(default_factory=list)
    switched_at: int | None = None

    def scale(self, step: int, total: int, t: float, d_t: float, user_scale: float) -> float:
        """Guidance scale for ``step`` of ``total`` at model timestep ``t``, given this step's ``d_t``."""
        self.history.append(float(d_t))
        if self.switched_at is None:
            h = self.history
            if self.mode == "static":
                switch = t <= self.switch_t
            else:
                switch = len(h) >= 3 and h[-2] < h[-3] and h[-1] > h[-2]
            if switch or step >= self.latest * total:
                self.switched_at = step
        return user_scale if self.switched_at is not None else self.before


@dataclass
class Guidance:
    """Jain et al.'s schedules as a strategy; ``before < 0`` gives opposite guidance."""

    mode: str = "dynamic"
    before: float = 1.0
    switch_t: int = 650
    latest: float = 0.6
    name: str = "guidance"

    def __call__(self, case: Case) -> Intervention:
        if self.mode not in ("dynamic", "static"):
            raise ValueError(f"guidance mode must be 'dynamic' or 'static', not {self.mode!r}")
        schedules = [GuidanceSchedule(self.mode, self.before, self.switch_t, self.latest) for _ in case.scores]
        what = "opposite" if self.before < 0 else "delayed"
        reports = [
            Report(self.name, score_before=s, notes=[f"{what} guidance ({self.mode}, {self.before:g} before)"])
            for s in case.scores
        ]
        return Intervention(cond=case.cond, pooled=case.pooled, reports=reports, guidance=schedules)
