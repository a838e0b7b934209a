"""Thresholds at a false-positive rate, ROC figures, and the calibration store."""

from __future__ import annotations

import io
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

import memguard.calibrate as calibrate
from memguard.calibrate import (
    Calibration,
    CalibrationStore,
    CalibrationStoreError,
    roc_auc,
    roc_curve,
    threshold_at_fpr,
    tpr_at_fpr,
)

FPRS = [0.0, 0.01, 0.05, 0.1, 0.2, 0.25, 0.5, 0.9]


def _arrays():
    rng = np.random.default_rng(1234)
    for trial in range(60):
        n = int(rng.integers(1, 300))
        if trial % 3 == 0:
            yield rng.integers(0, 6, size=n).astype(float)  # many ties
        else:
            yield rng.normal(size=n) * rng.uniform(0.1, 10)


def test_threshold_at_fpr_property():
    for values in _arrays():
        n = values.size
        for fpr in FPRS:
            tau = threshold_at_fpr(values.tolist(), fpr)
            flagged = int((values > tau).sum())
            assert flagged <= fpr * n + 1e-9, (n, fpr, tau)
            # smallest such threshold: anything below flags too many
            below = np.nextafter(tau, -np.inf)
            assert (values > below).sum() > fpr * n, (n, fpr, tau)
            assert tau in values


def test_threshold_at_fpr_examples():
    scores = [float(i) for i in range(1, 101)]  # 1..100
    assert threshold_at_fpr(scores, 0.0) == 100.0
    assert threshold_at_fpr(scores, 0.01) == 99.0
    assert threshold_at_fpr(scores, 0.05) == 95.0
    assert threshold_at_fpr([1.0, 1.0, 1.0, 2.0], 0.25) == 1.0
    assert threshold_at_fpr([1.0, 1.0, 1.0, 2.0], 0.2) == 2.0


def test_threshold_at_fpr_ignores_non_finite_and_rejects_bad_input():
    assert threshold_at_fpr([1.0, float("nan"), 2.0, float("inf")], 0.0) == 2.0
    with pytest.raises(ValueError, match=r"^no finite benign scores to calibrate on$"):
        threshold_at_fpr([float("nan")], 0.01)
    with pytest.raises(ValueError, match=r"^false-positive rate must be in \[0, 1\), got 1.0$"):
        threshold_at_fpr([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match=r"^false-positive rate must be in \[0, 1\), got -0.1$"):
        threshold_at_fpr([1.0, 2.0], -0.1)


def _auc_brute(pos, neg):
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_formula_with_ties():
    rng = np.random.default_rng(7)
    for _ in range(30):
        pos = rng.integers(0, 8, size=int(rng.integers(1, 40))).astype(float).tolist()
        neg = rng.integers(0, 8, size=int(rng.integers(1, 40))).astype(float).tolist()
        assert roc_auc(pos, neg) == pytest.approx(_auc_brute(pos, neg), abs=1e-12)
        # the ROC curve's trapezoidal area is the same number
        f, t, _ = roc_curve(pos, neg)
        area = float(np.sum((f[1:] - f[:-1]) * (t[1:] + t[:-1]) / 2))
        assert area == pytest.approx(_auc_brute(pos, neg), abs=1e-12)


def test_roc_auc_edges():
    assert roc_auc([5.0, 6.0, 7.0], [1.0, 2.0, 4.9]) == 1.0
    assert roc_auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match=r"^AUC needs at least one positive and one negative score$"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match=r"^AUC needs"):
        roc_auc([1.0], [])


def test_roc_curve_shape():
    f, t, thr = roc_curve([3.0, 2.0], [1.0, 2.0])
    assert f[0] == 0.0 and t[0] == 0.0 and thr[0] == np.inf
    assert f[-1] == 1.0 and t[-1] == 1.0
    assert np.all(np.diff(f) >= 0) and np.all(np.diff(t) >= 0)


def test_tpr_at_fpr_strict_vs_closest():
    negatives = [float(i) for i in range(100)]  # 0..99: one negative at >= 99 gives FPR exactly 1%
    positives = [99.5, 99.0, 50.0, 40.0]
    # strict: FPR < 1% requires threshold > 99 -> only 99.5 is caught
    assert tpr_at_fpr(positives, negatives, 0.01, strict=True) == 0.25
    # closest: FPR = 1% exactly at threshold 99, which also catches the positive at 99
    assert tpr_at_fpr(positives, negatives, 0.01, strict=False) == 0.5


def test_tpr_at_fpr_is_read_at_1_percent_by_default():
    negatives = [float(i) for i in range(100)]
    positives = [99.5, 50.0]
    assert tpr_at_fpr(positives, negatives) == tpr_at_fpr(positives, negatives, 0.01) == 0.5


def test_tpr_at_fpr_separable():
    assert tpr_at_fpr([10.0, 11.0], [float(i) for i in range(9)]) == 1.0


# --- store ------------------------------------------------------------------------------------------------------


def _cal():
    return Calibration.from_scores([0.1 * i for i in range(100)], 0.01, method="wen", steps=1, prompts="benign")


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_calibration_from_scores():
    cal = Calibration.from_scores([1.0, 2.0, float("nan"), 3.0, 4.0], 0.25)
    assert cal.threshold == 3.0
    assert cal.n_prompts == 4
    assert cal.median == 2.5
    assert cal.created > 0


def test_store_round_trip_and_atomic(tmp_path):
    path = tmp_path / "sub" / "calibration.json"
    store = CalibrationStore(path)
    assert store.get("abc") is None
    assert store.models() == {}
    first, second = _cal(), Calibration(threshold=2.0, fpr=0.05, n_prompts=10, sampler="euler")
    store.put("abc", first)
    store.put("def", second)
    assert _listing(path.parent) == ["calibration.json"]  # no temp file left behind
    again = CalibrationStore(path)
    assert again.get("abc") == first
    assert again.get("def") == second
    assert set(again.models()) == {"abc", "def"}
    data = json.loads(path.read_text())
    assert data["format"] == "memguard-calibration"
    # overwrite one key, keep the other
    third = Calibration(threshold=9.0, fpr=0.01, n_prompts=3)
    again.put("abc", third)
    assert CalibrationStore(path).get("abc") == third
    assert CalibrationStore(path).get("def") == second


def test_store_ignores_unknown_fields(tmp_path):
    path = tmp_path / "c.json"
    CalibrationStore(path).put("k", _cal())
    data = json.loads(path.read_text())
    data["models"]["k"]["future_field"] = 1
    path.write_text(json.dumps(data))
    assert CalibrationStore(path).get("k") == _cal_like(data["models"]["k"])


def _cal_like(entry):
    return Calibration(**{k: v for k, v in entry.items() if k != "future_field"})


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\x00\x81garbage\x00\x01",
        b"{not json",
        b'{"foo": 1}',
        b"[1, 2, 3]",
        b'{"format": "something-else", "models": {}}',
        b'{"format": "memguard-calibration", "models": []}',
    ],
)
def test_store_refuses_foreign_or_corrupt_file(tmp_path, content):
    path = tmp_path / "calibration.json"
    path.write_bytes(content)
    store = CalibrationStore(path)
    with pytest.raises(CalibrationStoreError):
        store.get("abc")
    with pytest.raises(CalibrationStoreError):
        store.put("abc", _cal())
    assert path.read_bytes() == content
    assert _listing(tmp_path) == ["calibration.json"]


def test_store_malformed_entry_is_skipped_or_reported(tmp_path):
    path = tmp_path / "calibration.json"
    good = {"threshold": 1.0, "fpr": 0.01, "n_prompts": 5}
    path.write_text(json.dumps({"format": "memguard-calibration", "version": 1, "models": {"bad": 5, "good": good}}))
    try:
        models = CalibrationStore(path).models()
    except CalibrationStoreError:
        return
    assert "good" in models and "bad" not in models


def test_store_read_only_directory(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (see the simulated variants below)")
    path = tmp_path / "calibration.json"
    CalibrationStore(path).put("abc", _cal())
    before = path.read_bytes()
    tmp_path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OSError):
            CalibrationStore(path).put("def", _cal())
    finally:
        tmp_path.chmod(stat.S_IRWXU)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["calibration.json"]


def test_store_temp_file_refused_simulated(tmp_path, monkeypatch):
    """What a read-only directory does to ``put``, simulated so that it also runs as root."""
    path = tmp_path / "calibration.json"
    CalibrationStore(path).put("abc", _cal())
    before = path.read_bytes()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(calibrate.tempfile, "mkstemp", refuse)
    with pytest.raises(OSError):
        CalibrationStore(path).put("def", _cal())
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["calibration.json"]


def test_store_failed_replace_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "calibration.json"
    CalibrationStore(path).put("abc", _cal())
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(calibrate.os, "replace", fail)
    with pytest.raises(OSError):
        CalibrationStore(path).put("def", _cal())
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["calibration.json"]


def test_calibration_from_scores_keeps_its_rate_and_how_it_was_made():
    cal = Calibration.from_scores([1.0, 2.0, 3.0, 4.0], 0.25, method="anisotropy", steps=3, sampler="euler")
    assert (cal.fpr, cal.method, cal.steps, cal.sampler) == (0.25, "anisotropy", 3, "euler")
    cal = Calibration.from_scores([1.0, 2.0], 0.0, prompts="benign", origin="automatic")
    assert (cal.fpr, cal.prompts, cal.origin, cal.method) == (0.0, "benign", "automatic", "wen")


def test_the_default_store_is_under_memguard_home_or_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMGUARD_HOME", str(tmp_path / "home"))
    assert calibrate.default_store() == tmp_path / "home" / "calibration.json"
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("MEMGUARD_HOME", "")  # set but empty: not a folder
    assert calibrate.default_store() == tmp_path / "user" / ".cache" / "memguard" / "calibration.json"
    monkeypatch.delenv("MEMGUARD_HOME")
    assert calibrate.default_store() == tmp_path / "user" / ".cache" / "memguard" / "calibration.json"


def test_a_new_store_file_says_its_format_and_version(tmp_path):
    path = tmp_path / "calibration.json"
    CalibrationStore(path).put("abc", _cal())
    data = json.loads(path.read_text(encoding="utf-8"))
    assert (data["format"], data["version"]) == ("memguard-calibration", 1)
    assert CalibrationStore(path).check_writable() == data


def test_the_store_file_is_indented_with_sorted_keys(tmp_path):
    """Readable and stable: a person can read it, and a changed threshold is a one-line difference."""
    path = tmp_path / "calibration.json"
    CalibrationStore(path).put("b", Calibration(threshold=2.0, fpr=0.05, n_prompts=10))
    CalibrationStore(path).put("a", _cal())
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True)
    assert text.startswith('{\n  "format": "memguard-calibration",\n  "models": {\n    "a": {\n      "created": ')


def test_the_store_is_created_in_missing_folders(tmp_path):
    path = tmp_path / "a" / "b" / "calibration.json"
    CalibrationStore(path).put("abc", _cal())
    assert CalibrationStore(path).get("abc") == _cal_like_saved(path.read_bytes())


def test_the_store_is_replaced_from_a_hidden_temporary_file_beside_it(tmp_path, monkeypatch):
    """Atomic: the new contents are written to ``.memguard-*.json`` in the store's own folder (same file system),
    then renamed over the store."""
    path = tmp_path / "calibration.json"
    replaced = []
    real = os.replace

    def replace(src, dst):
        replaced.append((Path(src), Path(dst), json.loads(Path(src).read_text(encoding="utf-8"))))
        real(src, dst)

    monkeypatch.setattr(calibrate.os, "replace", replace)
    CalibrationStore(path).put("abc", _cal())
    ((src, dst, written),) = replaced
    assert dst == path and src.parent == tmp_path
    assert src.name.startswith(".memguard-") and src.name.endswith(".json")
    assert written == json.loads(path.read_text(encoding="utf-8"))
    assert _listing(tmp_path) == ["calibration.json"]


def test_the_store_reads_utf8_whatever_the_locale(tmp_path, monkeypatch):
    """A file with UTF-8 text in it (another tool wrote it unescaped) reads the same where the locale's encoding is
    not UTF-8 (a Windows code page, say): simulated by making ASCII the encoding that text files open with when none
    is given."""
    path = tmp_path / "calibration.json"
    entry = {"threshold": 1.5, "fpr": 0.01, "n_prompts": 5, "prompts": "caf\u00e9 \u2615"}
    data = {"format": "memguard-calibration", "version": 1, "models": {"abc": entry}}
    path.write_bytes(json.dumps(data, ensure_ascii=False).encode("utf-8"))
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "ascii")
    assert CalibrationStore(path).get("abc").prompts == "caf\u00e9 \u2615"
    with pytest.raises(UnicodeDecodeError):
        path.read_text()  # what the locale's encoding would make of it


def test_store_errors_name_the_file_and_the_cause(tmp_path, monkeypatch):
    path = tmp_path / "calibration.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(CalibrationStoreError, match=rf"^calibration file {re.escape(str(path))} is unreadable \(.+"):
        CalibrationStore(path).get("abc")
    with pytest.raises(CalibrationStoreError, match=r"\(Expecting property name .*\); it was left as it is$"):
        CalibrationStore(path).get("abc")
    path.write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(CalibrationStoreError) as raised:
        CalibrationStore(path).get("abc")
    assert str(raised.value) == f"{path} is not a memguard calibration file; it was left as it is"

    path.unlink()
    CalibrationStore(path).put("abc", _cal())

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(calibrate.tempfile, "mkstemp", refuse)
    with pytest.raises(calibrate.CalibrationWriteError) as raised:
        CalibrationStore(path).put("def", _cal())
    assert str(raised.value) == (
        f"could not write the calibration file {path} ([Errno 13] Permission denied); it was left as it is"
    )
    monkeypatch.undo()

    def fail(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(calibrate.os, "replace", fail)
    with pytest.raises(calibrate.CalibrationWriteError, match=r"\(\[Errno 30\] Read-only file system\); it was left"):
        CalibrationStore(path).put("def", _cal())


def test_a_read_only_file_is_refused_whatever_its_execute_bits(tmp_path):
    path = tmp_path / "calibration.json"
    CalibrationStore(path).put("abc", _cal())
    path.chmod(0o555)
    try:
        with pytest.raises(calibrate.CalibrationWriteError, match="read-only"):
            CalibrationStore(path).check_writable()
    finally:
        path.chmod(0o644)


def test_calibration_median_is_the_median_of_the_finite_scores():
    cal = Calibration.from_scores([1.0, 2.0, 30.0, float("nan")], 0.0)
    assert cal.median == 2.0 and cal.n_prompts == 3 and cal.threshold == 30.0


@pytest.mark.parametrize(
    ("origin", "said"),
    [
        ("automatic", "calibrated automatically at FPR 0.01"),
        ("shipped", "calibrated by the model's author at FPR 0.01"),
        ("user", "calibrated by the user at FPR 0.01"),
    ],
)
def test_calibration_says_where_it_came_from(origin, said):
    assert Calibration(threshold=1.0, fpr=0.01, n_prompts=5, origin=origin).describe() == said


def test_store_leaves_a_read_only_file_alone(tmp_path):
    """A calibration file without write permission is never replaced, also where the OS would allow it (root)."""
    path = tmp_path / "calibration.json"
    CalibrationStore(path).put("abc", _cal())
    before = path.read_bytes()
    path.chmod(stat.S_IRUSR | stat.S_IRGRP)
    try:
        with pytest.raises(calibrate.CalibrationWriteError, match="read-only"):
            CalibrationStore(path).put("def", _cal())
        with pytest.raises(calibrate.CalibrationWriteError):
            CalibrationStore(path).check_writable()
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["calibration.json"]
    assert CalibrationStore(path).get("def") is None and CalibrationStore(path).get("abc") == _cal_like_saved(before)


def _cal_like_saved(raw: bytes) -> Calibration:
    return Calibration(**json.loads(raw)["models"]["abc"])
