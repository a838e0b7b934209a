"""Faults inside memguard never cost the user an image: out of memory in the embedding optimization, an interrupt or
skip during it, an exception inside any of memguard's per-generation entry points, and a broken calibration store,
each driven end to end through the fake A1111 host (``tests/fakehost``) with the real extension on the tiny model.

"Unmitigated" means: the images of the same job with memguard only watching (which are those of a run without
memguard, ``tests/test_determinism.py``), bit for bit.
"""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path

import generation_mix
import numpy as np
import pytest
import torch
from webui_helpers import GUARD, data, flag_one, generate, guard_index, pixels, processing, results, set_threshold

import memguard.calibrate as calibrate
from memguard import cli, flow
from memguard.calibrate import Calibration, CalibrationStore
from memguard.hosts import a1111

pytest.importorskip("gradio")

MEMGUARD = str(Path(a1111.__file__).resolve().parents[2])


def _released(p) -> None:
    """Nothing of the generation is left in memguard: no run on ``p``, no current run, no hooks on the model."""
    assert a1111.ATTR not in vars(p)
    assert "close" not in vars(p)  # the close wrapper is removed
    assert a1111.PROCESS.current() == (None, None)
    assert generation_mix.model_hooks() == 0


def _same(a, b) -> bool:
    return len(pixels(a)) == len(pixels(b)) and all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b)))


def _wrap_case(monkeypatch, wrap) -> None:
    """Wrap the ``eps_model`` memguard hands to the strategy (the UNet inside the embedding optimization loop)."""
    from memguard.hosts.a1111 import first_step

    real = first_step.Case
    monkeypatch.setattr(first_step, "Case", lambda **kw: real(**{**kw, "eps_model": wrap(kw["eps_model"])}))


# --- a. out of memory inside the embedding optimization --------------------------------------------------------------
def test_out_of_memory_in_optimization_generates_unmitigated_warns_and_frees(webui, monkeypatch):
    job = dict(batch_size=2, seed=11)
    flagged = flag_one(webui, **job)[1]
    watched = generate(webui, **job)
    assert [r["flagged"] for r in results(watched)] == [i == flagged for i in range(2)]
    calls, made = [], []

    def out_of_memory_at_the_second_iteration(eps):
        def call(x, crossattn, *rest):
            calls.append(1)
            made.append(weakref.ref(crossattn))  # the optimized embedding's rows for this iteration
            if len(calls) == 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            out = eps(x, crossattn, *rest)
            made.append(weakref.ref(out))
            return out

        return call

    _wrap_case(monkeypatch, out_of_memory_at_the_second_iteration)
    freed = []
    monkeypatch.setattr(flow, "free_memory", lambda: freed.append(torch.is_grad_enabled()))
    p = processing(webui, GUARD, {guard_index(): "embedding"}, **job)
    out = webui.run_txt2img(p)

    assert len(calls) == 2 and freed == [False]
    assert _same(out, watched)  # the flagged image too: unmitigated
    result = results(out)[flagged]
    assert result["flagged"] and result["mitigation"] is None
    assert result["mitigation_error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert "memguard could not mitigate it (OutOfMemoryError: CUDA out of memory" in out.comments
    infotexts = out.infotexts[out.index_of_first_image :]
    assert "Memguard mitigation: failed (OutOfMemoryError)" in infotexts[flagged]
    assert "Memguard mitigation" not in infotexts[1 - flagged]
    _released(p)
    del p
    gc.collect()
    assert made and all(ref() is None for ref in made)  # the optimizer's tensors are gone


@pytest.mark.parametrize("cuda", [True, False])
def test_free_memory_empties_the_cuda_cache_only_with_cuda(monkeypatch, cuda):
    emptied = []
    monkeypatch.setattr(flow.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(flow.torch.cuda, "empty_cache", lambda: emptied.append(1))
    flow.free_memory()
    assert emptied == ([1] if cuda else [])


# --- b. interrupt or skip during the optimization -------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["interrupted", "skipped"])
def test_interrupt_or_skip_stops_the_optimization_within_one_iteration(webui, monkeypatch, flag):
    from modules import shared

    set_threshold(1e-6)  # every image flagged; the optimization would run its 10 iterations
    k, calls, unet = 3, [], {"after": 0, "job": None}

    def raise_flag_at_k(eps):
        def call(x, crossattn, *rest):
            calls.append(1)
            out = eps(x, crossattn, *rest)
            if len(calls) == k:  # the user clicks Interrupt (Skip) while the k-th iteration's UNet pass runs
                setattr(shared.state, flag, True)
                unet["job"] = shared.state.job_no
            return out

        return call

    def count(_module, _args):
        if unet["job"] is not None and shared.state.job_no == unet["job"]:
            unet["after"] += 1

    _wrap_case(monkeypatch, raise_flag_at_k)
    handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(count)
    try:
        p = processing(webui, GUARD, {guard_index(): "embedding"}, n_iter=2, steps=4)
        out = webui.run_txt2img(p)
    finally:
        handle.remove()
    first = results(out)[0]
    assert first["mitigation"]["iterations"] == k - 1  # the k-th forward was the last: no backward, no more forwards
    assert unet["after"] <= 1  # then only the host's own step-0 pass of the interrupted batch
    if flag == "interrupted":  # the host stops the job after this batch, with the image it had
        assert len(pixels(out)) == 1 and sorted(r["index"] for r in results(out)) == [0]
        assert first["note"] == "not explained: the generation was interrupted"
        assert len(calls) == k
    else:  # skip: the next batch runs, mitigated in full
        assert len(pixels(out)) == 2 and results(out)[1]["mitigation"]["iterations"] > k
    _released(p)


# --- c. an exception inside each of memguard's per-generation entry points -----------------------------------------
def _entry_points(cls_filter=None) -> list[tuple[str, object, str, object]]:
    """memguard's entry points as registered with the host: ``(label, owner, attribute, function)`` for its script
    callbacks and for the methods its Script classes override."""
    from modules import script_callbacks, scripts

    found = []
    for category, callbacks in script_callbacks.enumerate_callbacks():
        for c in callbacks:
            if getattr(c.callback, "__module__", "").startswith("memguard"):
                found.append((f"{category} {c.callback.__name__}", c, "callback", c.callback))
    for script in scripts.scripts_txt2img.scripts:
        cls = type(script)
        if not cls.__module__.startswith("memguard"):
            continue
        for name, fn in vars(cls).items():
            if callable(fn) and not name.startswith("_") and hasattr(scripts.Script, name):
                found.append((f"{cls.__name__}.{name}", cls, name, fn))
    return found


class Fault:
    """Raise ``RuntimeError`` at the first call into memguard's code made at ``depth`` below an entry point (1: the
    entry point's first call; 2: inside its own helpers, where memguard does its work), once; or only look
    (``armed=False``)."""

    def __init__(self, entry, depth: int = 2, armed: bool = True, p=None):
        self.code, self.depth, self.armed, self.p = entry.__code__, depth, armed, p
        self.fired = self.reached = False
        self.took_effect, self.run = None, None

    def trace(self, frame, event, _arg):
        if event != "call" or self.fired or self.reached or not frame.f_code.co_filename.startswith(MEMGUARD):
            return None
        depth, f = 0, frame
        while f is not None and f.f_code is not self.code:
            depth += f.f_code.co_filename.startswith(MEMGUARD)
            f = f.f_back
        if f is None or depth < self.depth:
            return None
        self.reached = True
        if not self.armed:
            return None
        run = vars(self.p).get(a1111.ATTR, self.run) if self.p is not None else None
        self.took_effect = bool(run and (run.mitigated_rows or run.guidance)) or generation_mix.model_hooks() > 0
        self.fired = True
        raise RuntimeError("injected fault")

    def wrap(self, fn):
        def call(*args, **kwargs):
            if self.p is not None:  # the run as the entry point found it (it may detach it before the fault)
                self.run = vars(self.p).get(a1111.ATTR, self.run)
            previous = sys.gettrace()
            sys.settrace(self.trace)
            try:
                return fn(*args, **kwargs)
            finally:
                sys.settrace(previous)

        return call


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("mode", ["watch", "mitigate"])
def test_an_exception_inside_any_entry_point_leaves_the_images_alone(webui, monkeypatch, mode, depth):
    from modules import shared

    job = dict(batch_size=2, seed=5)
    flagged = flag_one(webui, **job)[1]
    title, script_args = (GUARD, {guard_index(): "auto"}) if mode == "mitigate" else (None, None)
    shared.opts.memguard_watch = False
    plain = generate(webui, **job)
    shared.opts.memguard_watch = True

    def run_with(entry, fault):
        label, owner, attr, fn = entry
        with monkeypatch.context() as m:
            m.setattr(owner, attr, fault.wrap(fn))
            fault.p = processing(webui, title, script_args, **job)
            return webui.run_txt2img(fault.p)

    entries = _entry_points()
    probes = {e[0]: Fault(e[3], depth, armed=False) for e in entries}
    with monkeypatch.context() as m:
        for label, owner, attr, fn in entries:
            m.setattr(owner, attr, probes[label].wrap(fn))
        generate(webui, title, script_args, **job)
    working = [e for e in entries if probes[e[0]].reached]  # the entry points that did memguard work in this job
    expected = {f"cfg_{name} on_cfg_{name}" for name in ("denoiser", "denoised", "after_cfg")}
    expected |= {"MemguardWatch.process", "MemguardWatch.postprocess"}
    expected |= {"MemguardGuard.run"} if mode == "mitigate" else set()
    assert expected <= {e[0] for e in working}
    for entry in working:
        fault = Fault(entry[3], depth)
        out = run_with(entry, fault)
        label = entry[0]
        assert fault.fired and len(pixels(out)) == 2, label
        assert "memguard could not" in out.comments, label
        if mode == "watch" or not fault.took_effect:  # no intervention had taken effect: a run without memguard
            assert _same(out, plain), label
        else:  # the fault struck an intervention in force: the other image is still untouched
            assert np.array_equal(pixels(out)[1 - flagged], pixels(plain)[1 - flagged]), label
        _released(fault.p)


# --- d. the calibration store ----------------------------------------------------------------------------------------
@pytest.fixture
def store_path(webui):
    """The WebUI's calibration file (under the host's data directory), removed after the test."""
    path = a1111.store().path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    yield path
    if path.exists():
        path.chmod(0o644)
        path.unlink()


def _thresholds(path: Path) -> bytes:
    store = CalibrationStore(path)
    store.put("other-model", Calibration(threshold=1.5, fpr=0.01, n_prompts=10))
    return path.read_bytes()


BROKEN = {
    "corrupt": (lambda good: b"{\x00\xff not json", "unreadable"),
    "truncated": (lambda good: good[: len(good) // 2], "unreadable"),
    "a list": (lambda good: b"[1, 2, 3]", "not a memguard calibration file"),
    "wrong schema": (lambda good: b'{"format": "memguard-calibration", "models": [1]}', "not a memguard calibration"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_store_is_reported_by_the_watcher_and_the_tab_and_kept(webui, store_path, monkeypatch, kind):
    from memguard.hosts.a1111.service import A1111Service
    from memguard.ui import actions

    path = store_path
    content, says = BROKEN[kind]
    path.write_bytes(content(_thresholds(path)))
    before = path.read_bytes()
    out = generate(webui)
    assert "memguard: scores recorded but not judged: " in out.comments and says in out.comments
    assert data(out)["source"].endswith("it was left as it is")
    monkeypatch.setattr(actions, "benign_prompts", lambda: [f"a shape {i}" for i in range(4)])
    html = actions.calibrate(A1111Service, None, 0.25)
    assert "memguard-error" in html and says in html
    assert path.read_bytes() == before


def _refuse_temp(*_a, **kw):
    raise PermissionError(13, "Permission denied", kw.get("dir"))


def _disk_full(*_a, **_kw):
    raise OSError(28, "No space left on device")


WRITE_FAULTS = {
    "read-only file": (None, "is read-only"),
    "read-only directory": (("tempfile.mkstemp", _refuse_temp), "Permission denied"),
    "disk full": (("os.replace", _disk_full), "No space left on device"),
}


def _write_fault(monkeypatch, path: Path, kind: str) -> str:
    patch, says = WRITE_FAULTS[kind]
    if patch is None:
        path.chmod(0o444)  # memguard respects the permission bits, also as root
    else:
        module, name = patch[0].split(".")
        monkeypatch.setattr(getattr(calibrate, module), name, patch[1])
    return says


@pytest.mark.parametrize("kind", sorted(WRITE_FAULTS))
def test_unwritable_store_is_reported_by_the_tab_and_the_api_and_kept(webui, store_path, monkeypatch, kind):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from memguard.api import PREFIX, register_routes
    from memguard.hosts.a1111.service import A1111Service
    from memguard.ui import actions

    path = store_path
    before = _thresholds(path)
    says = _write_fault(monkeypatch, path, kind)
    monkeypatch.setattr(actions, "benign_prompts", lambda: [f"a shape {i}" for i in range(4)])
    html = actions.calibrate(A1111Service, None, 0.25)
    assert "memguard-error" in html and says in html and "left as it is" in html
    app = FastAPI()
    register_routes(app, A1111Service)
    reply = TestClient(app).post(f"{PREFIX}/calibration", json={"fpr": 0.25, "prompts": ["a cat", "a dog"]})
    assert reply.status_code == 500 and says in reply.json()["error"] and "left as it is" in reply.json()["error"]
    assert path.read_bytes() == before
    assert sorted(q.name for q in path.parent.iterdir()) == [path.name]  # no temporary file left
    assert a1111.current_threshold()[0] is None  # this checkpoint was never calibrated


@pytest.mark.parametrize("kind", ["corrupt", "read-only file", "disk full"])
def test_cli_calibrate_reports_the_store_and_keeps_it(tiny_dir, tmp_path, monkeypatch, kind):
    store = tmp_path / "calibration.json"
    before = _thresholds(store)
    if kind == "corrupt":
        store.write_bytes(before := before[:-7])
        says = "unreadable"
    else:
        says = _write_fault(monkeypatch, store, kind)
    prompts = tmp_path / "benign.txt"
    prompts.write_text("a cat\na dog\na red car\n", encoding="utf-8")
    argv = ["calibrate", "--model", str(tiny_dir), "--prompts", str(prompts), "--store", str(store), "--fpr", "0.34"]
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main([*argv, "--steps", "5", "--batch-size", "4"])
    finally:
        store.chmod(0o644)
    assert "could not store the calibration" in str(exit_.value.code) and says in str(exit_.value.code)
    assert store.read_bytes() == before


def test_calibrate_checks_the_store_before_scoring(webui, store_path, monkeypatch):
    """A long calibration is not run only to find that its result cannot be stored."""
    from memguard.hosts.a1111.service import A1111Service

    path = store_path
    path.write_text("{not json", encoding="utf-8")
    scored = []
    monkeypatch.setattr(A1111Service, "audit", lambda self, prompts, seeds: scored.append(prompts) or [])
    with pytest.raises(calibrate.CalibrationStoreError):
        A1111Service().calibrate(["a cat"], 0.1)
    assert scored == []
    assert path.read_text(encoding="utf-8") == "{not json"
