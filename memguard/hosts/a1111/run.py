"""One generation's state (:class:`Run`, on the processing object) and its lifecycle: :func:`start`,
:func:`finish` (from the scripts' ``postprocess``, or the host's ``p.close()`` when the generation failed)."""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from ...algebra import BatchLayout, eps_from_x0
from ...result import ImageResult
from ..families import Unscorable
from .host import current_threshold
from .process import PROCESS

ATTR = "_memguard_run"


@dataclass
class Step0:
    """The host's first-step CFG inputs, kept for the matching ``on_cfg_denoised``."""

    x: torch.Tensor
    sigma: torch.Tensor
    image_cond: torch.Tensor
    text_cond: Any
    text_uncond: Any
    layout: BatchLayout
    timesteps: bool
    uncond_skipped: bool
    size_factor: float = 1.0  # detect.size_factor of this latent against the model's native one
    size: tuple[int, int] | None = None  # the image size (width, height) the host conditioned on (SDXL's vector)

    def judged(self, d: float | None) -> float | None:
        """Wen's ``d`` of this step's latent in the units scores are judged in (the native size's)."""
        return None if d is None else d * self.size_factor

    def raw(self, score: float) -> float:
        """The inverse of :meth:`judged`: a score in judged units as Wen's ``d`` of this latent."""
        return score / self.size_factor

    def to_eps(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The host's model output (``x0`` for k-diffusion samplers, ``eps`` for timestep ones) as ``eps``."""
        return out if self.timesteps else eps_from_x0(x, out, sigma)


@dataclass
class Run:
    """memguard's state for one generation (one processing object); released at its end."""

    mode: str  # "watch", "mitigate", or "report" (memguard could not start: only say why)
    strategy_name: str = "auto"
    force: bool = False
    explain: bool = True
    threshold: float | None = None
    threshold_source: str = ""
    results: dict[int, ImageResult] = field(default_factory=dict)
    step0: Step0 | None = None
    original_rows: dict[int, torch.Tensor] = field(default_factory=dict)
    mitigated_rows: dict[int, torch.Tensor] = field(default_factory=dict)
    mitigated_pooled: dict[int, torch.Tensor] = field(default_factory=dict)  # SDXL: the rows' pooled text vectors
    guidance: dict[int, Any] = field(default_factory=dict)
    x_out: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    errors: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # what memguard did once, said in the panel and the log
    not_applicable: str | None = None  # why memguard does not apply to this job or model (each image's reason)
    owner: Any = None  # weak reference to the processing object the run was started on (copies share the run)

    def reset_batch(self) -> None:
        PROCESS.release_hooks()
        self.step0, self.x_out, self.reference = None, None, None
        self.original_rows, self.mitigated_rows, self.mitigated_pooled, self.guidance = {}, {}, {}, {}

    def abandon_mitigation(self) -> None:
        """Stop intervening in this batch: conditioning rows, attention hooks and guidance schedules dropped."""
        PROCESS.release_hooks()
        self.original_rows, self.mitigated_rows, self.mitigated_pooled, self.guidance = {}, {}, {}, {}

    def close(self) -> None:
        self.reset_batch()
        self.sigma = None

    def fail(self, what: str, err: BaseException) -> None:
        """Record a failure (once) and stop changing the generation: after a fault memguard only watches."""
        message = f"{what}: {type(err).__name__}: {err}"
        if message not in self.errors:
            self.errors.append(message)
        if self.mode == "mitigate":
            self.mode = "watch"
        self.abandon_mitigation()

    def not_scorable(self, found: Unscorable) -> None:
        """memguard does not apply (``hosts.families.Unscorable``): only say why, once; leave the generation alone."""
        if self.not_applicable is None:
            self.not_applicable = found.reason
            self.notices.append(found.notice)
        self.mode = "report"
        self.abandon_mitigation()

    def guard(self, what: str, fn: Any, *args: Any) -> None:
        """``fn(*args)``, a failure recorded (:meth:`fail`) instead of raised: memguard never fails the generation."""
        from .process import log_failure

        try:
            fn(*args)
        except Exception as err:
            log_failure(what)
            self.fail(what, err)

    def at_step0(self) -> Step0:
        """The batch's first step, recorded by ``on_cfg_denoiser`` (or Forge's post-CFG function) at step 0."""
        if self.step0 is None:
            raise RuntimeError("no first step was recorded for this batch")
        return self.step0

    def ordered(self) -> list[ImageResult]:
        return sorted(self.results.values(), key=lambda r: r.index)


def run_of(p: Any) -> Run | None:
    """The run attached to the processing object ``p``, if any."""
    return getattr(p, ATTR, None)


def batch_offset(p: Any, batch: int) -> int:
    """The job index of the current batch's first image."""
    return getattr(p, "iteration", 0) * getattr(p, "batch_size", batch)


def start(p: Any, mode: str, **kwargs: Any) -> Run:
    """Attach a :class:`Run` to ``p`` (the dropdown script's takes precedence over the watcher's)."""
    existing = run_of(p)
    if existing is not None:
        return existing
    run = Run(mode=mode, owner=_weak(p), **kwargs)
    run.threshold, run.threshold_source = current_threshold()
    setattr(p, ATTR, run)
    _finish_on_close(p)
    return run


def start_failed(p: Any, what: str, err: BaseException) -> Run:
    """Attach a run that only reports that memguard could not start (``what``), unless ``p`` already has one."""
    run = run_of(p)
    if run is None:
        run = Run(mode="report", owner=_weak(p))
        setattr(p, ATTR, run)
        _finish_on_close(p)
    run.fail(what, err)
    return run


def _finish_on_close(p: Any) -> None:
    """Finish also when the host closes the job (``closing(p)`` around txt2img, img2img and the API's jobs), which it
    does when the generation fails too, where no script's ``postprocess`` runs."""
    close = getattr(p, "close", None)
    if not callable(close):
        return

    def finish_and_close(*args: Any, **kwargs: Any) -> Any:
        finish(p)
        return close(*args, **kwargs)

    finish_and_close.memguard_finish = True  # type: ignore[attr-defined]
    with contextlib.suppress(AttributeError, TypeError):
        p.close = finish_and_close


def _weak(p: Any) -> Any:
    try:
        return weakref.ref(p)
    except TypeError:
        return lambda: p


def finish(p: Any) -> Run | None:
    """Detach and release the run: hooks removed, per-generation state dropped. A copy of the processing object
    (ADetailer calls every script's ``postprocess`` on ``copy(p)`` mid-generation) shares the run but does not own it:
    finishing a copy does nothing."""
    run = run_of(p)
    if run is not None and run.owner is not None and run.owner() is not p:
        return None
    current, denoiser = PROCESS.current()
    if current is not None and (current is run or getattr(denoiser, "p", None) is p):
        PROCESS.set_current(None, None)
    if run is not None:
        with contextlib.suppress(AttributeError):
            delattr(p, ATTR)
    if getattr(getattr(p, "__dict__", {}).get("close"), "memguard_finish", False):
        del p.close
    PROCESS.release_hooks()
    if run is not None:
        run.close()
    return run
