"""A1111's three CFG callbacks (``modules/script_callbacks.py``), registered once at import; each does nothing unless
a :class:`~.run.Run` is attached to the processing object, and none lets anything it raises reach the host."""

from __future__ import annotations

from typing import Any

from . import first_step
from .mitigation import apply_guidance, substitute
from .process import PROCESS, log_failure
from .run import ATTR, Run


def on_cfg_denoiser(params: Any) -> None:
    run = None
    try:
        run = getattr(getattr(params.denoiser, "p", None), ATTR, None)
        _denoiser(params, run)
    except Exception as err:  # shielded: the host's tensors are only replaced once memguard's are complete
        log_failure("on_cfg_denoiser")
        if run is not None:
            run.fail("the first step" if params.denoiser.step == 0 else "a sampling step", err)


def _denoiser(params: Any, run: Run | None) -> None:
    denoiser = params.denoiser
    PROCESS.set_current(None, None)
    if run is None:
        PROCESS.release_hooks()  # left by a generation that failed before its end
        return
    p = denoiser.p
    if getattr(p, "is_hr_pass", False) or run.mode == "report":
        return
    PROCESS.set_current(run, denoiser)
    run.sigma = params.sigma
    if denoiser.step == 0:
        run.reset_batch()
        run.guard("reading the first step", first_step.record_step0, run, p, params)
        if run.mode == "mitigate" and run.step0 is not None:
            run.guard("mitigation", first_step.mitigate, run, p, params)
    if run.mitigated_rows:
        run.guard("substituting the mitigated conditioning", substitute, run, params)


def on_cfg_denoised(params: Any) -> None:
    try:
        _denoised(params)
    except Exception as err:  # shielded
        log_failure("on_cfg_denoised")
        _fail_current("reading the model's output", err)


def _denoised(params: Any) -> None:
    run, denoiser = PROCESS.current()
    if run is None:
        return
    if run.guidance:
        run.x_out = params.x
    if denoiser.step == 0 and run.step0 is not None:
        if run.mode == "watch":
            run.guard("scoring", first_step.watch, run, denoiser.p, denoiser, params.x)
        elif run.reference is not None:
            run.guard("scoring the mitigated images", first_step.score_after, run, denoiser.p, params.x)


def on_cfg_after_cfg(params: Any) -> None:
    try:
        _after_cfg(params)
    except Exception as err:  # shielded
        log_failure("on_cfg_after_cfg")
        _fail_current("guidance schedule", err)


def _after_cfg(params: Any) -> None:
    run, denoiser = PROCESS.current()
    if run is not None and run.guidance and run.x_out is not None:
        run.guard("guidance schedule", apply_guidance, run, denoiser, params)


def _fail_current(what: str, err: BaseException) -> None:
    run = PROCESS.current()[0]
    if run is not None:
        run.fail(what, err)


def register() -> None:
    """Register the three CFG callbacks once (the host clears callbacks on every script reload)."""
    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="memguard")
    script_callbacks.on_cfg_denoised(on_cfg_denoised, name="memguard")
    script_callbacks.on_cfg_after_cfg(on_cfg_after_cfg, name="memguard")
