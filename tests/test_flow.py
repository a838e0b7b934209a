"""The first-step flow every host runs: judge, pick the targets, build the case, run the strategy, apply it, book the
cost; a failing strategy is abandoned when the host asks for that."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch

from memguard import flow
from memguard.flow import FirstStep, bos_positions, first_step, target_score
from memguard.mitigate.base import Intervention, Report


class Recorder:
    """A host and a strategy that record how the flow calls them."""

    def __init__(self, reports: int = 1, forwards: int = 3, fail: Exception | None = None):
        self.calls: list[tuple] = []
        self.reports = [Report("fake") for _ in range(reports)]
        self.forwards = forwards
        self.fail = fail
        self.built = object()

    def case(self, targets, target):
        self.calls.append(("case", list(targets), target))
        return self.built

    def strategy(self, built):
        self.calls.append(("strategy", built))
        if self.fail is not None:
            raise self.fail
        return Intervention(cond=torch.zeros(1), reports=self.reports)

    def apply(self, targets, built, intervention):
        self.calls.append(("apply", list(targets), built, intervention))
        return self.forwards

    def abandon(self):
        self.calls.append(("abandon",))

    def hooks(self) -> dict:
        return {"strategy": self.strategy, "case": self.case, "apply": self.apply}


@pytest.fixture
def clock(monkeypatch):
    """``time.perf_counter`` in the flow reads 10 s, then 16 s."""
    ticks = iter([10.0, 16.0])
    monkeypatch.setattr(flow, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))


def test_bos_positions_are_the_start_of_every_77_token_chunk():
    assert bos_positions(77) == [0]
    assert bos_positions(154) == [0, 77]
    assert bos_positions(231) == [0, 77, 154]
    assert bos_positions(1) == [0]
    assert bos_positions(0) == []


def test_target_score_is_the_threshold_or_half_the_lowest_score():
    assert target_score(3.0, [5.0, 4.0]) == 3.0
    assert target_score(0.0, [5.0]) == 0.0  # a zero threshold is a threshold
    assert target_score(None, [5.0, 4.0, 6.0]) == 2.0


def test_judges_with_the_threshold_and_passes_the_judge_options():
    step = first_step([5.0, 1.0, math.nan], 3.0, step=2, steps=4, extra_pass=True, method="anisotropy")
    assert isinstance(step, FirstStep)
    assert [d.flagged for d in step.detections] == [True, False, False]
    assert [d.scorable for d in step.detections] == [True, True, False]
    assert {(d.step, d.steps, d.extra_pass, d.method) for d in step.detections} == {(2, 4, True, "anisotropy")}
    assert all(d.threshold == 3.0 for d in step.detections)


def test_targets_are_the_flagged_images_or_every_scorable_one_when_forced():
    scores = [5.0, 1.0, math.nan, 4.0]
    assert first_step(scores, 3.0).targets == [0, 3]
    assert first_step(scores, 3.0, force=True).targets == [0, 1, 3]
    assert first_step(scores, None).targets == []  # nothing is flagged without a threshold
    assert first_step(scores, None, force=True).targets == [0, 1, 3]


def test_without_a_strategy_or_host_hooks_nothing_is_mitigated():
    host = Recorder()
    hooks = host.hooks()
    for missing in ("strategy", "case", "apply"):
        step = first_step([5.0], 3.0, **{**hooks, missing: None})
        assert step.intervention is None and step.failed == "" and step.targets == [0]
    step = first_step([1.0], 3.0, **hooks)  # nothing flagged: nothing to do
    assert step.targets == [] and step.intervention is None
    assert host.calls == []


def test_mitigates_the_targets_through_the_host(clock):
    host = Recorder(reports=2, forwards=3)
    step = first_step([5.0, 1.0, 4.0], 3.0, **host.hooks())
    assert step.targets == [0, 2]
    assert step.failed == ""
    intervention = step.intervention
    assert intervention is not None and intervention.reports == host.reports
    assert host.calls == [
        ("case", [0, 2], 3.0),
        ("strategy", host.built),
        ("apply", [0, 2], host.built, intervention),
    ]


def test_forced_mitigation_aims_at_half_the_lowest_finite_score(clock):
    host = Recorder()
    first_step([6.0, math.nan, 5.0], None, force=True, **host.hooks())
    assert host.calls[0] == ("case", [0, 2], 2.5)


def test_the_cost_is_booked_in_every_report(clock):
    host = Recorder(reports=2, forwards=3)
    host.reports[0].unet_forwards = 10
    host.reports[1].seconds = 100.0  # a strategy's own, longer timing is kept
    first_step([5.0, 4.0], 3.0, **host.hooks())
    assert [r.unet_forwards for r in host.reports] == [13, 3]
    # 6 s of wall time shared by the two images
    assert [r.seconds for r in host.reports] == [3.0, 100.0]


def test_one_image_is_booked_the_whole_wall_time(clock):
    host = Recorder(reports=1)
    first_step([5.0], 3.0, **host.hooks())
    assert host.reports[0].seconds == 6.0


def test_the_cost_of_an_intervention_without_reports_is_not_divided_by_zero(clock):
    host = Recorder(reports=0)
    step = first_step([5.0], 3.0, **host.hooks())
    assert step.intervention is not None and step.intervention.reports == []


def test_a_failing_strategy_raises_without_abandon():
    host = Recorder(fail=MemoryError("out of memory"))
    with pytest.raises(MemoryError, match="out of memory"):
        first_step([5.0], 3.0, **host.hooks())


def test_a_failing_strategy_is_abandoned_logged_and_memory_freed(monkeypatch, caplog):
    host = Recorder(fail=RuntimeError("CUDA out of memory"))
    freed = []
    monkeypatch.setattr(flow, "free_memory", lambda: freed.append(host.calls[-1]))
    with caplog.at_level(logging.ERROR, logger="memguard"):
        step = first_step([5.0, 4.0], 3.0, abandon=host.abandon, **host.hooks())
    assert step.failed == "RuntimeError: CUDA out of memory"
    assert step.intervention is None
    assert step.targets == [0, 1] and [d.flagged for d in step.detections] == [True, True]
    assert host.calls[-1] == ("abandon",)
    assert freed == [("abandon",)]  # memory is freed once, after the host abandoned the strategy
    (record,) = caplog.records
    assert record.getMessage().startswith("memguard: mitigation failed\nTraceback")
    assert "RuntimeError: CUDA out of memory" in record.getMessage()


def test_a_strategy_that_succeeds_frees_no_memory(monkeypatch, clock):
    freed = []
    monkeypatch.setattr(flow, "free_memory", lambda: freed.append(1))
    first_step([5.0], 3.0, abandon=lambda: None, **Recorder().hooks())
    assert freed == []
