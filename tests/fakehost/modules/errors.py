"""Mirrors ``modules/errors.py`` (``report``, ``display``, ``record_exception``) of A1111 1.10.1.

The host prints the message and traceback to stderr and carries on. The double does the same and also appends a
:class:`Reported` entry to :data:`reported`, so tests can see exceptions the host would only have logged (for
example an exception raised inside an ``on_cfg_denoiser`` callback).
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass


@dataclass
class Reported:
    """One reported error: the host's message, the exception being handled (if any) and its traceback text."""

    message: str
    exception: BaseException | None
    traceback: str


reported: list[Reported] = []


def report(message: str, *, exc_info: bool = False) -> None:
    """Mirrors ``errors.report``: print ``message`` (and the current traceback when ``exc_info``) and continue."""
    exc = sys.exc_info()[1] if exc_info else None
    text = traceback.format_exc() if exc_info and exc is not None else ""
    reported.append(Reported(message, exc, text))
    print(f"*** {message}", file=sys.stderr)
    if text:
        print(text, file=sys.stderr)


def display(e: BaseException, task: str, *, full_traceback: bool = False) -> None:
    """Mirrors ``errors.display``: report an exception object with a task description."""
    reported.append(Reported(task, e, "".join(traceback.format_exception(type(e), e, e.__traceback__))))
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)


def record_exception() -> None:
    """Mirrors ``errors.record_exception``: remember the exception being handled without printing it."""
    exc = sys.exc_info()[1]
    if exc is not None:
        reported.append(Reported("recorded exception", exc, traceback.format_exc()))


def clear() -> None:
    """Test helper (not in the host): forget the reported errors."""
    reported.clear()
