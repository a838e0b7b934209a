"""One image's result: the verdict vocabulary, a mitigation still above the threshold, the dict every surface reads."""

from __future__ import annotations

import dataclasses

import pytest

from memguard.result import FLAGGED, OK, UNCALIBRATED, UNSCORED, VERDICTS, ImageResult, verdict


def image(**kw) -> ImageResult:
    base = dict(
        index=1,
        seed=42,
        prompt="a cat",
        score=5.0,
        d=4.0,
        threshold=3.0,
        threshold_source="calibrated by the user at FPR 0.01",
        flagged=True,
    )
    return ImageResult(**{**base, **kw})


def test_the_four_verdicts_are_distinct_lowercase_words():
    assert VERDICTS == ("flagged", "ok", "uncalibrated", "unscored")
    assert (FLAGGED, OK, UNCALIBRATED, UNSCORED) == VERDICTS


@pytest.mark.parametrize(
    ("score", "threshold", "flagged", "expected"),
    [
        (None, 3.0, False, UNSCORED),
        (None, None, True, UNSCORED),  # no score: unscored whatever the flag says
        (5.0, 3.0, True, FLAGGED),
        (5.0, None, True, FLAGGED),  # flagged by a forced judgement without a threshold
        (2.0, 3.0, False, OK),
        (0.0, 3.0, False, OK),  # a zero score is a score
        (2.0, None, False, UNCALIBRATED),
        (0.0, None, False, UNCALIBRATED),
    ],
)
def test_verdict_from_score_threshold_and_flag(score, threshold, flagged, expected):
    assert verdict(score, threshold, flagged) == expected


def test_image_result_verdict_follows_its_fields():
    assert image().verdict == FLAGGED
    assert image(score=1.0, flagged=False).verdict == OK
    assert image(score=1.0, flagged=False, threshold=None).verdict == UNCALIBRATED
    assert image(score=None, d=None, flagged=False).verdict == UNSCORED


def test_image_result_defaults_say_nothing_happened():
    result = image()
    assert result.extra_pass is False
    assert result.reason == ""
    assert result.sub_scores == [] and result.words == []
    assert result.note is None and result.mitigation is None and result.mitigation_error is None
    # each result has its own lists
    result.words.append({"text": "cat"})
    assert image().words == []


def test_still_above_reads_the_rescored_first_step_against_the_threshold():
    assert image(mitigation={"score_after": 3.5}).still_above is True
    assert image(mitigation={"score_after": 3.0}).still_above is False  # at the threshold is not flagged
    assert image(mitigation={"score_after": 2.0}).still_above is False
    assert image(mitigation=None).still_above is False
    assert image(mitigation={"score_after": None}).still_above is False
    assert image(mitigation={"score_after": 3.5}, threshold=None).still_above is False


def test_to_dict_holds_every_field_and_the_verdict():
    result = image(
        extra_pass=True,
        reason="why",
        sub_scores=[1.0, 5.0],
        words=[{"text": "cat", "start": 2, "end": 5}],
        note="a note",
        mitigation={"strategy": "attention", "score_after": 2.0},
        mitigation_error="OutOfMemoryError",
    )
    out = result.to_dict()
    fields = [f.name for f in dataclasses.fields(ImageResult)]
    assert list(out) == [*fields, "verdict"]
    assert {k: out[k] for k in fields} == {k: getattr(result, k) for k in fields}
    assert out["verdict"] == FLAGGED
    assert image(score=None, flagged=False).to_dict()["verdict"] == UNSCORED
