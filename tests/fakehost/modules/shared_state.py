"""Mirrors ``modules/shared_state.py`` (``State``) of A1111 1.10.1.

Fields and the ``begin``/``end``/``interrupt``/``skip``/``stop_generating``/``nextjob``/``dict`` methods behave as
in the host. Live previews are not rendered (``set_current_image`` does nothing); ``current_latent`` is still
stored by the sampler.
"""

from __future__ import annotations

import datetime
import time
from typing import Any


class State:
    """Global generation state ``shared.state``."""

    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    processing_has_refined_job_count = False
    job_timestamp = "0"
    sampling_step = 0
    sampling_steps = 0
    current_latent: Any = None
    current_image: Any = None
    current_image_sampling_step = 0
    id_live_preview = 0
    textinfo: Any = None
    time_start: float | None = None
    server_start: float | None = None

    def __init__(self) -> None:
        self.server_start = time.time()

    def skip(self) -> None:
        self.skipped = True

    def interrupt(self) -> None:
        self.interrupted = True

    def stop_generating(self) -> None:
        self.stopping_generation = True

    def nextjob(self) -> None:
        """Mirrors ``State.nextjob``: next job number, sampling step back to 0."""
        self.job_no += 1
        self.sampling_step = 0
        self.current_image_sampling_step = 0

    def dict(self) -> dict:
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "stopping_generation": self.stopping_generation,
            "job": self.job,
            "job_count": self.job_count,
            "job_timestamp": self.job_timestamp,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }

    def begin(self, job: str = "(unknown)") -> None:
        """Mirrors ``State.begin`` (called by the UI/API wrappers around a generation, not by process_images)."""
        self.sampling_step = 0
        self.time_start = time.time()
        self.job_count = -1
        self.processing_has_refined_job_count = False
        self.job_no = 0
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.current_latent = None
        self.current_image = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

    def set_current_image(self) -> None:
        """Live previews are not rendered by the double."""

    def do_set_current_image(self) -> None:
        """Live previews are not rendered by the double."""

    def assign_current_image(self, image: Any) -> None:
        self.current_image = image
        self.id_live_preview += 1
