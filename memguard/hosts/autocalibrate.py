"""Calibration on first use: a watched or guarded generation that meets a checkpoint with no threshold calibrates it
before its first step, so that it is judged, and every later one too (setting ``memguard_auto_calibrate``).

It runs inside the generation (the watch script's ``process_batch``, after the host loaded the model and activated
the batch's extra networks), which holds the WebUI's queue lock already, so memguard's calls take no lock of their
own (``A1111Service.calibrate(locked=False)``). The cost is one UNet call per
:data:`~memguard.hosts.a1111.service.CALIBRATION_BATCH` benign prompts at the model's
native size, plus one empty-prompt pass (``bench/calibration_cost.py``). The WebUI's progress bar shows it, and
Interrupt stops it (nothing is stored; the generation is then not judged). The first generation waits for it: a
verdict on the image the user is looking at is the point of watching.
"""

from __future__ import annotations

import time
from typing import Any

from ..service import benign_prompts
from . import service_class, settings
from .a1111 import host
from .a1111.run import Run


def judge_batch(run: Run, p: Any) -> None:
    """``process_batch`` body (the batch's extra networks are active by then, on A1111 and Forge): the threshold of
    the checkpoint with this batch's networks (unless a manual one was given), calibrated first if there is none."""
    if run.mode == "report" or run.threshold_source.startswith("manual"):
        return
    run.threshold, run.threshold_source = host.current_threshold(p)
    if run.threshold is None and settings.get("memguard_auto_calibrate"):
        calibrate(run, p)


def calibrate(run: Run, p: Any) -> None:
    """Calibrate the loaded checkpoint on memguard's benign prompts, store it, and judge ``run`` by it; say so once
    (the run's notices: the panel, the log). A store that cannot be written is reported, never overwritten."""
    fpr = float(settings.get("memguard_fpr") or 0.01)
    prompts = benign_prompts()
    started = time.perf_counter()
    key = host.model_key(p)
    with _progress() as progress:
        result = service_class()().calibrate(
            prompts, fpr, origin="automatic", locked=False, interrupted=host.interrupted, progress=progress, key=key
        )
    if result is None:
        run.notices.append("automatic calibration was interrupted: nothing stored; this generation is not judged")
        return
    run.threshold, run.threshold_source = host.current_threshold(p)
    what = "this checkpoint" if key == host.model_key() else f"this checkpoint with {key.split('+', 1)[1]}"
    run.notices.append(
        f"memguard calibrated {what} automatically: threshold {result['threshold']:.4g} at FPR {fpr:g} "
        f"from {result['n']} benign prompts in {time.perf_counter() - started:.1f} s (stored; once per combination)"
    )


class _progress:
    """The WebUI's progress bar and status text while calibrating (``shared.state``), restored afterwards."""

    def __enter__(self):
        from modules import shared

        state = shared.state
        self.saved = (state.textinfo, state.sampling_step, state.sampling_steps)
        state.textinfo = "memguard: calibrating this checkpoint (once)"
        return self

    def __call__(self, done: int, total: int) -> None:
        from modules import shared

        shared.state.sampling_step, shared.state.sampling_steps = done, total

    def __exit__(self, *exc: object) -> None:
        from modules import shared

        shared.state.textinfo, shared.state.sampling_step, shared.state.sampling_steps = self.saved
