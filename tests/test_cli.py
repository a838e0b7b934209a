"""The command line calibrates an unseen model on first use: ``scan``, ``generate`` and ``audit-data`` judge without
a ``calibrate`` step (``--no-calibrate`` says nothing is judged), and ``calibrate`` defaults to memguard's prompts."""

from __future__ import annotations

import json
import shutil

import pytest

from memguard import cli
from memguard.calibrate import CalibrationStore
from memguard.miniature import MODEL_DIR
from memguard.pipeline import CALIBRATION_FILE, Model
from memguard.service import benign_prompts


def scan(model, prompts, store, capsys, *extra) -> tuple[list[dict], str]:
    argv = ["scan", "--model", str(model), "--prompts", str(prompts), "--store", str(store), "--steps", "5", *extra]
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    return [json.loads(line) for line in out.out.splitlines()], out.err


def test_scan_calibrates_an_unseen_model_once(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n", encoding="utf-8")
    store = tmp_path / "calibration.json"
    rows, err = scan(tiny_dir, prompts, store, capsys)
    assert "is not calibrated: calibrating it on memguard's benign prompts" in err
    entry = CalibrationStore(store).get(Model.load(tiny_dir).model_hash)
    assert entry.origin == "automatic" and entry.n_prompts == len(benign_prompts()) == 320
    assert all(r["threshold"] == pytest.approx(entry.threshold) and isinstance(r["flagged"], bool) for r in rows)
    again, err = scan(tiny_dir, prompts, store, capsys)
    assert "calibrating" not in err and "calibrated automatically at FPR 0.01" in err
    assert [r["score"] for r in again] == [r["score"] for r in rows]


def test_no_calibrate_says_nothing_is_judged(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n", encoding="utf-8")
    store = tmp_path / "calibration.json"
    (row,), err = scan(tiny_dir, prompts, store, capsys, "--no-calibrate")
    assert "not calibrated and --no-calibrate is set: nothing is judged" in err
    assert row["threshold"] is None and row["flagged"] is False and not store.exists()


def test_calibrate_defaults_to_memguards_benign_prompts(tiny_dir, tmp_path, capsys):
    store = tmp_path / "calibration.json"
    argv = ["calibrate", "--model", str(tiny_dir), "--store", str(store), "--steps", "5", "--fpr", "0.05"]
    assert cli.main(argv) == 0
    assert "from 320 benign prompts" in capsys.readouterr().out
    entry = CalibrationStore(store).get(Model.load(tiny_dir).model_hash)
    assert entry.origin == "user" and entry.prompts == "memguard benign" and entry.fpr == 0.05


@pytest.mark.slow
def test_generate_with_auto_mitigation_stops_copies_of_an_unseen_memorizing_model(tmp_path, capsys):
    """The miniature without its shipped calibration is a memorizing model memguard has never seen: ``generate
    --mitigation auto`` alone calibrates it, flags its memorized prompts and mitigates them."""
    model = tmp_path / "unseen"
    shutil.copytree(MODEL_DIR, model)
    (model / CALIBRATION_FILE).unlink()
    memorized = (MODEL_DIR / "prompts" / "memorized.txt").read_text(encoding="utf-8").splitlines()[:2]
    prompts = tmp_path / "memorized.txt"
    prompts.write_text("\n".join(memorized) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["generate", "--model", str(model), "--prompts", str(prompts), "--out", str(out), "--steps", "20"]
    assert cli.main([*argv, "--store", str(tmp_path / "calibration.json"), "--mitigation", "auto"]) == 0
    assert "calibrating it on memguard's benign prompts" in capsys.readouterr().err
    sidecars = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("*.json"))]
    assert len(sidecars) == 2 and all(s["flagged"] and s["mitigation"] for s in sidecars)
    assert all(s["mitigation"]["score_after"] < s["mitigation"]["score_before"] for s in sidecars)
