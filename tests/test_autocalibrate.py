"""Calibration on first use in the WebUI (A1111 and Forge doubles): the first watched generation on an uncalibrated
checkpoint calibrates it and is judged; later ones reuse it; Interrupt and a broken store leave it unjudged."""

from __future__ import annotations

from pathlib import Path

import fakeforge
import fakehost
import numpy as np
import pytest
from webui_helpers import data, generate, pixels

from memguard.hosts import a1111
from memguard.hosts.a1111 import host as a1111_host
from memguard.hosts.a1111 import service as a1111_service
from memguard.ui.panel import render_result

pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["a1111", "forge"])
def host(request, model_dir):
    """A1111 or Forge double, memguard loaded as an extension, automatic calibration on (the users' default)."""
    fakehost.uninstall()
    fakeforge.uninstall()
    boot = fakeforge.boot if request.param == "forge" else fakehost.boot
    h = boot(model_dir, extension_dirs=[str(ROOT)], api=True)
    from modules import shared

    shared.opts.memguard_auto_calibrate = True
    yield h
    fakeforge.uninstall()


def test_first_generation_calibrates_and_is_judged_later_ones_reuse_it(host, monkeypatch):
    calls = []
    benign = a1111_service.A1111Service.benign_scores
    monkeypatch.setattr(
        a1111_service.A1111Service, "benign_scores", lambda self, *a, **k: calls.append(k) or benign(self, *a, **k)
    )
    first = generate(host, batch_size=2)
    payload = data(first)
    assert payload["source"] == "calibrated automatically at FPR 0.01"
    assert all(r["verdict"] in ("ok", "flagged") and r["threshold"] for r in payload["results"])
    (notice,) = payload["notices"]
    assert notice.startswith("memguard calibrated this checkpoint automatically: threshold")
    assert "from 320 benign prompts" in notice and notice in first.comments
    stored = a1111.store().get(a1111.model_key())
    assert stored.origin == "automatic" and stored.n_prompts == 320
    assert calls == [{"locked": False, "interrupted": a1111_host.interrupted, "progress": calls[0]["progress"]}]
    second = generate(host, batch_size=2)
    assert data(second)["notices"] == [] and len(calls) == 1
    assert "Memguard threshold: auto" in second.infotexts[0]  # where the threshold came from, in the infotext
    assert "(calibrated automatically at FPR 0.01)" in render_result(data(second)["results"][0])  # and the panel
    assert data(second)["results"][0]["threshold"] == pytest.approx(stored.threshold)
    for a, b in zip(pixels(first), pixels(second)):  # calibrating changed nothing in the images
        assert np.array_equal(a, b)


def test_calibration_scores_are_the_tabs_first_step_scores(host):
    """The batched calibration scores each prompt as the tab scores it (seed 0, the native size, t = 999)."""
    from memguard.hosts import service_class

    service = service_class()()
    prompts = ["a red circle", "a blue square AND a green disc", "a photo, " * 40]
    batched = service.benign_scores(prompts)
    one_by_one = [r["score"] for r in service.audit(prompts, [0])]
    assert batched == pytest.approx(one_by_one, rel=1e-4)


def test_interrupt_stores_nothing_and_leaves_the_generation_unjudged(host, monkeypatch):
    from modules import shared

    monkeypatch.setattr(a1111_host, "interrupted", lambda: True)
    out = generate(host)
    payload = data(out)
    assert payload["results"][0]["verdict"] == "uncalibrated"
    interrupted = "automatic calibration was interrupted: nothing stored; this generation is not judged"
    assert payload["notices"] == [interrupted]
    assert a1111.store().get(a1111.model_key()) is None
    assert shared.state.textinfo is None  # the status text put back


def test_setting_off_or_a_manual_threshold_means_no_calibration(host):
    from modules import shared

    shared.opts.memguard_auto_calibrate = False
    assert data(generate(host))["results"][0]["verdict"] == "uncalibrated"
    shared.opts.memguard_auto_calibrate, shared.opts.memguard_threshold = True, 1e6
    assert data(generate(host))["results"][0]["verdict"] == "ok"
    assert a1111.store().get(a1111.model_key()) is None


def test_unwritable_store_is_reported_kept_and_the_image_generated(host):
    path = a1111.store().path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not json", encoding="utf-8")
    out = generate(host)
    payload = data(out)
    assert payload["results"][0]["verdict"] == "uncalibrated" and len(pixels(out)) == 1
    (error,) = payload["errors"]
    assert error.startswith("calibrating automatically: CalibrationStoreError")
    assert path.read_text(encoding="utf-8") == "not json"


def test_each_checkpoint_and_adapter_set_gets_its_own_calibration(host):
    """A LoRA moves the benign scores (``bench/adapter_shift.py``): a batch with extra networks is judged by the
    calibration of the checkpoint with those networks at those weights, made the first time the set is seen."""
    base = data(generate(host))
    with_lora = data(generate(host, prompt="a red circle <lora:style:0.8>"))
    again = data(generate(host, prompt="a red circle <lora:style:0.8>"))
    other = data(generate(host, prompt="a red circle <lora:style:0.5>"))
    checkpoint = a1111.model_key()
    stored = a1111.store().models()
    assert set(stored) == {checkpoint, f"{checkpoint}+lora:style:0.8", f"{checkpoint}+lora:style:0.5"}
    assert base["notices"] and with_lora["notices"] and not again["notices"] and other["notices"]
    assert "this checkpoint with lora:style:0.8 automatically" in with_lora["notices"][0]
    threshold = stored[f"{checkpoint}+lora:style:0.8"].threshold
    assert with_lora["results"][0]["threshold"] == again["results"][0]["threshold"] == pytest.approx(threshold)
