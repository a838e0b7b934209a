"""What a WebUI generation tells the user (``memguard.hosts.a1111.report``): the infotext values per image, the log
lines under the images and the data line the panel renders, worked on hand-made results."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from memguard import __version__
from memguard.hosts import families
from memguard.hosts.a1111.report import INFOTEXT, INFOTEXT_KEYS, PER_IMAGE, infotext, payload, summary_lines
from memguard.hosts.a1111.run import Run
from memguard.result import PAYLOAD_VERSION, ImageResult


def image(index: int = 0, **kw) -> ImageResult:
    base = dict(
        index=index,
        seed=100 + index,
        prompt="a cat",
        score=5.123456,
        d=5.0,
        threshold=3.0,
        threshold_source="calibrated by the user at FPR 0.01",
        flagged=True,
    )
    return ImageResult(**{**base, **kw})


def run_with(*results: ImageResult, **kw) -> Run:
    run = Run(mode="watch", **kw)
    run.results = {r.index: r for r in results}
    return run


def values(result: ImageResult, **kw) -> dict:
    """The per-image infotext of ``result``, read as the host reads it (image 0 of the first batch)."""
    run = run_with(result, **kw)
    written = infotext(run)
    out = {name: get(SimpleNamespace(), 0) for name, get in written.items() if name != "Memguard version"}
    assert run.errors == []  # every value was written, none failed
    return out


# --- infotext -------------------------------------------------------------------------------------------------------
def test_the_infotext_labels():
    assert [label.name for label in INFOTEXT] == [
        "Memguard score",
        "Memguard verdict",
        "Memguard reason",
        "Memguard threshold",
        "Memguard mitigation",
        "Memguard strategy",
        "Memguard force",
        "Memguard version",
    ]
    assert INFOTEXT_KEYS == (
        "Memguard score",
        "Memguard verdict",
        "Memguard reason",
        "Memguard threshold",
        "Memguard mitigation",
    )
    assert [label.name for label in PER_IMAGE] == list(INFOTEXT_KEYS)
    assert [(label.name, label.paste) for label in INFOTEXT if label.paste] == [
        ("Memguard strategy", "strategy"),
        ("Memguard force", "force"),
    ]


def test_infotext_of_a_flagged_image():
    assert values(image()) == {
        "Memguard score": "5.123/3",
        "Memguard verdict": "flagged",
        "Memguard reason": None,
        "Memguard threshold": "calibrated",
        "Memguard mitigation": None,
    }


def test_infotext_of_unscored_and_uncalibrated_images():
    unscored = values(image(score=None, flagged=False))
    assert unscored["Memguard score"] is None and unscored["Memguard verdict"] == "unscored"
    uncalibrated = values(image(score=2.0, threshold=None, threshold_source="", flagged=False))
    assert uncalibrated["Memguard score"] == "2" and uncalibrated["Memguard verdict"] == "uncalibrated"
    assert uncalibrated["Memguard threshold"] is None


@pytest.mark.parametrize(
    ("source", "word"),
    [
        ("manual threshold (request)", "request"),
        ("manual threshold 2.5", "manual"),
        ("calibrated automatically at FPR 0.01", "auto"),
        ("calibrated by the user at FPR 0.01", "calibrated"),
        ("calibrated by the model's author at FPR 0.01", "calibrated"),
    ],
)
def test_infotext_threshold_is_one_word_for_where_it_came_from(source, word):
    assert values(image(threshold_source=source))["Memguard threshold"] == word


def test_infotext_reason_says_why_an_unscored_image_is_not_applicable():
    not_applicable = image(score=None, d=None, threshold=None, flagged=False, reason=families.FLOW.reason)
    assert values(not_applicable)["Memguard reason"] == "not-applicable/flow-matching"
    assert values(image(score=None, flagged=False, reason="no CFG pair"))["Memguard reason"] is None  # other reasons
    assert values(image(reason=families.FLOW.reason))["Memguard reason"] is None  # only an image without a score


def test_infotext_threshold_needs_a_threshold_and_its_source():
    assert values(image(threshold_source=""))["Memguard threshold"] is None
    assert values(image(threshold=None, flagged=False))["Memguard threshold"] is None


def test_infotext_mitigation_before_and_after():
    mitigation = {"strategy": "attention", "score_before": 5.123456, "score_after": 2.5}
    assert values(image(mitigation=mitigation))["Memguard mitigation"] == "attention 5.123->2.5"
    above = {**mitigation, "score_after": 3.25}
    assert values(image(mitigation=above))["Memguard mitigation"] == "attention 5.123->3.25 still above threshold"
    unscored = {**mitigation, "score_after": None}
    assert values(image(mitigation=unscored))["Memguard mitigation"] == "attention 5.123->?"


def test_infotext_mitigation_that_failed_names_the_error_type():
    failed = image(mitigation_error="OutOfMemoryError: CUDA out of memory: tried 2 GiB")
    assert values(failed)["Memguard mitigation"] == "failed (OutOfMemoryError)"


def test_infotext_reads_the_image_of_its_batch_and_the_version():
    run = run_with(image(0), image(3, score=1.0, flagged=False))
    written = infotext(run)
    assert written["Memguard version"] == __version__
    score = written["Memguard score"]
    assert score(SimpleNamespace(iteration=1, batch_size=2), 1) == "1/3"  # job image 3: batch 1, index 1
    assert score(SimpleNamespace(), 0) == "5.123/3"
    assert score(SimpleNamespace(), index=0) == "5.123/3"
    assert score() == "5.123/3"
    assert score(SimpleNamespace(iteration=3), 0) == "1/3"  # a batch size of 1 unless the job says otherwise
    assert score(SimpleNamespace(iteration=2, batch_size=2), 0) is None  # no result for that image
    assert run.errors == []


def test_an_infotext_value_that_fails_is_left_out_and_recorded(caplog):
    broken = image(mitigation={"strategy": "attention"})  # no scores: the value cannot be written
    run = run_with(broken)
    written = infotext(run)
    with caplog.at_level(logging.ERROR, logger="memguard"):
        assert written["Memguard mitigation"](SimpleNamespace(), 0) is None
    assert written["Memguard verdict"](SimpleNamespace(), 0) == "flagged"  # the rest is still written
    assert run.errors == ["writing Memguard mitigation to the infotext: KeyError: 'score_before'"]
    assert "memguard: writing Memguard mitigation to the infotext failed" in caplog.text


# --- the log lines and the data line --------------------------------------------------------------------------------
def data_line(lines: list[str]) -> dict:
    assert lines[-1].startswith("memguard-data:{")
    return json.loads(lines[-1].removeprefix("memguard-data:"))


def test_a_flagged_image_says_its_score_threshold_and_the_words_driving_it():
    words = [{"text": t, "value": v} for t, v in [("cat", 0.1), ("mona", 0.9), ("lisa", 0.5), ("oil", 0.3)]]
    lines = summary_lines(run_with(image(2, words=words)))
    assert lines[:-1] == [
        (
            "memguard: image 3 (seed 102) may reproduce a training image: score 5.12 > threshold 3; "
            "driven by: mona, lisa, oil; edit those words, or rerun with the Memorization guard script"
        )
    ]


def test_a_flagged_image_without_words():
    (line,) = summary_lines(run_with(image()))[:-1]
    assert line.endswith("score 5.12 > threshold 3; edit those words, or rerun with the Memorization guard script")


def test_a_mitigated_image_says_what_mitigation_did():
    mitigated = image(mitigation={"strategy": "auto", "score_before": 5.123456, "score_after": 1.5})
    (line,) = summary_lines(run_with(mitigated))[:-1]
    assert line.endswith("score 5.12 > threshold 3; mitigated (auto): 5.123 -> 1.5")
    above = image(mitigation={"strategy": "attention", "score_before": 5.0, "score_after": 4.0})
    (line,) = summary_lines(run_with(above))[:-1]
    assert line.endswith("; mitigation (attention) did not bring it below the threshold: 5 -> 4; edit those words")
    failed = image(mitigation_error="OutOfMemoryError: out of memory")
    (line,) = summary_lines(run_with(failed))[:-1]
    assert line.endswith("; memguard could not mitigate it (OutOfMemoryError: out of memory): generated unmitigated")


def test_images_memguard_could_not_score_are_said_with_the_reason():
    lines = summary_lines(run_with(image(0, score=None, flagged=False, reason="no CFG pair"), image(1, score=None)))
    assert lines[:-1] == [
        "memguard could not score image 1: no CFG pair",
        "memguard could not score image 2: unknown",
    ]


def test_images_below_the_threshold_say_nothing():
    assert summary_lines(run_with(image(score=1.0, flagged=False)))[:-1] == []


def test_scores_without_a_threshold_are_said_once():
    run = run_with(image(0, threshold=None, flagged=False), image(1, threshold=None, flagged=False))
    run.threshold_source = "not calibrated"
    assert summary_lines(run)[:-1] == ["memguard: scores recorded but not judged: not calibrated"]
    one_judged = run_with(image(0, threshold=None, flagged=False), image(1, score=1.0, flagged=False))
    assert summary_lines(one_judged)[:-1] == []
    assert summary_lines(run_with())[:-1] == []  # no results, nothing to say


def test_notices_and_errors_come_first_and_last():
    run = run_with(image(score=1.0, flagged=False))
    run.notices = ["calibrated this model automatically", "memguard is watching"]
    run.errors = ["scoring: RuntimeError: boom"]
    assert summary_lines(run)[:-1] == [
        "memguard: calibrated this model automatically",
        "memguard is watching",
        "memguard could not score this generation: scoring: RuntimeError: boom",
    ]


def test_the_data_line_is_the_payload_in_ascii():
    run = run_with(image(1, prompt="un café"), image(0, score=1.0, flagged=False), threshold_source="manual")
    run.errors, run.notices = ["e"], ["n"]
    line = summary_lines(run)[-1]
    assert line.isascii() and '"prompt":"un caf\\u00e9"' in line  # escaped, and compact: no ", " nor ": "
    assert ", " not in line and ": " not in line
    assert data_line(summary_lines(run)) == payload(run)


def test_the_payload_holds_every_result_in_order_with_its_verdict():
    run = run_with(image(1), image(0, score=1.0, flagged=False), threshold_source="manual threshold 3")
    run.errors, run.notices = ["an error"], ["a notice"]
    assert payload(run) == {
        "version": __version__,
        "payload": PAYLOAD_VERSION,
        "results": [image(0, score=1.0, flagged=False).to_dict(), image(1).to_dict()],
        "errors": ["an error"],
        "source": "manual threshold 3",
        "notices": ["a notice"],
    }
    assert [r["verdict"] for r in payload(run)["results"]] == ["ok", "flagged"]
