"""Mirrors ``modules/shared_total_tqdm.py`` (``TotalTQDM``) as a silent counter."""

from __future__ import annotations


class TotalTQDM:
    """Counts the updates the host would show in its console progress bar."""

    def __init__(self) -> None:
        self.total = 0
        self.count = 0

    def reset(self) -> None:
        self.count = 0

    def update(self) -> None:
        self.count += 1

    def updateTotal(self, new_total: int) -> None:  # the host's name
        self.total = new_total

    def clear(self) -> None:
        self.count = 0
