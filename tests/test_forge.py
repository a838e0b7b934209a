"""memguard's Forge seam driven end to end through the Forge double (``tests/fakeforge``, layered over the A1111
double): real samplers, Forge's ``sampling_function`` with post-CFG functions, a UNet patcher cloned per pass,
``forge_objects`` reset every batch, sampling under ``torch.inference_mode()``."""

from __future__ import annotations

from pathlib import Path

import fakeforge
import fakehost
import numpy as np
import pytest
import torch
from webui_helpers import (
    GUARD,
    assert_embedding_recomputes_layers,
    assert_scoring_failure_contained,
    flag_one,
    generate,
    guard_index,
    pixels,
    record_first_step,
    results,
    scores,
    set_threshold,
    side,
)

from memguard.hosts import a1111

pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]
needs_text_model = pytest.mark.skipif(
    not hasattr(a1111, "text_model"),
    reason="Forge has no cond_stage_model: needs memguard.hosts.a1111.text_model() (the Forge seam's report)",
)


@pytest.fixture
def host(model_dir):
    """The Forge double with what ``scripts/memguard.py`` sets up on Forge: the Forge scripts and callback."""
    fakehost.uninstall()
    fakeforge.uninstall()
    fakeforge.install()
    from memguard.hosts import forge
    from memguard.hosts.forge.scripts import make_scripts

    h = fakeforge.boot(model_dir, script_classes=list(make_scripts()), api=True)
    forge.register()
    from modules import shared

    shared.opts.memguard_threshold = 0.0
    yield h
    fakeforge.uninstall()


def make_weights_ordinary() -> None:
    """The loaded engine's weights as ordinary tensors (a Forge whose loader did not use inference mode)."""
    from backend.diffusion_engine.sd15 import ordinary_weights
    from modules import shared

    ordinary_weights(shared.sd_model)


def assert_clean():
    """No memguard patch left on the model: the patcher is Forge's own again, no hooks on the network."""
    from modules import shared

    objects = shared.sd_model.forge_objects
    assert objects.unet is shared.sd_model.forge_objects_after_applying_lora.unet
    assert objects.unet.model_options == {"transformer_options": {}}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in objects.unet.model.modules())


def test_host_is_forge(host):
    from modules import shared

    from memguard.hosts import forge

    assert forge.is_forge() and shared.sd_model.cond_stage_model is None


def test_watch_scores_every_image_and_writes_infotext(host):
    out = generate(host, batch_size=2)
    res = results(out)
    assert [r["index"] for r in res] == [0, 1]
    assert all(r["score"] is not None and r["score"] > 0 for r in res)
    assert not any(r["extra_pass"] for r in res)  # empty negative prompt: the host's own uncond is e_empty
    assert "Memguard verdict: uncalibrated" in out.infotexts[0]
    assert_clean()


@pytest.mark.parametrize("scale", [(1, 1), (2, 1)], ids=["native", "tall"])
def test_watch_score_equals_direct_recomputation(host, scale):
    """``d`` from Forge's post-CFG predictions == || eps(x_T, c) - eps(x_T, "") || from the bare network; the judged
    score is ``d`` at the native size."""
    from modules import shared

    seen = record_first_step()
    out = generate(host, batch_size=2, steps=5, height=side() * scale[0], width=side() * scale[1])
    assert seen["x"].shape[0] == 2  # Forge hands on_cfg_denoiser one row per image
    unet = shared.sd_model.memguard_model.unet
    log_sigmas = (((1 - shared.sd_model.alphas_cumprod) / shared.sd_model.alphas_cumprod) ** 0.5).log()
    sigma = seen["sigma"]
    t = (sigma.log()[:, None] - log_sigmas[None]).abs().argmin(dim=1).float()
    x = seen["x"] / (sigma**2 + 1).sqrt()[:, None, None, None]
    cond = shared.sd_model.get_learned_conditioning(["a red circle"] * 2)
    empty = shared.sd_model.get_learned_conditioning([""] * 2)
    with torch.no_grad():
        d = (unet(x, t, encoder_hidden_states=cond).sample - unet(x, t, encoder_hidden_states=empty).sample).flatten(1)
    assert [r["d"] for r in results(out)] == pytest.approx(d.norm(dim=1).tolist(), rel=1e-4)
    assert scores(out) == pytest.approx((d.norm(dim=1) / (scale[0] * scale[1]) ** 0.5).tolist(), rel=1e-4)


def test_negative_prompt_and_skip_early_cond_use_empty_reference(host):
    from modules import shared

    base = scores(generate(host))[0]
    neg = results(generate(host, negative_prompt="blurry, dark"))[0]
    assert neg["extra_pass"] and neg["score"] == pytest.approx(base, rel=1e-4)
    shared.opts.skip_early_cond = 0.2  # scale 1 at the first step: Forge leaves its uncond out
    skipped = results(generate(host))[0]
    assert skipped["extra_pass"] and skipped["score"] == pytest.approx(base, rel=1e-4)


def test_and_prompt_scores_every_part(host):
    res = results(generate(host, prompt="a red circle AND a blue square"))[0]
    assert len(res["sub_scores"]) == 2 and res["score"] == pytest.approx(max(res["sub_scores"]))
    single = scores(generate(host, prompt="a blue square"))[0]
    assert res["sub_scores"][1] == pytest.approx(single, rel=1e-4)


@pytest.mark.parametrize("fields", [{}, {"negative_prompt": "blurry"}, {"cfg_scale": 1.0}])
def test_watching_does_not_change_images(host, fields):
    from modules import shared

    watched = generate(host, batch_size=2, sampler_name="Euler a", **fields)
    assert scores(watched)[0] is not None
    shared.opts.memguard_watch = False
    plain = generate(host, batch_size=2, sampler_name="Euler a", **fields)
    assert "memguard-data" not in plain.comments
    for a, b in zip(pixels(watched), pixels(plain)):
        assert np.array_equal(a, b)


@needs_text_model
def test_flagged_image_is_explained_on_the_typed_words(host):
    prompt = "a (red:1.2) circle AND a blue square"
    set_threshold(scores(generate(host, prompt=prompt))[0] * 0.5)
    out = generate(host, prompt=prompt)
    result = results(out)[0]
    assert result["flagged"] and result["words"]
    assert "occlusion" in result["note"]  # Forge's weights refuse a backward pass
    for w in result["words"]:
        assert prompt[w["start"] : w["end"]] == w["text"]
    assert "may reproduce a training image" in out.comments


@needs_text_model
@pytest.mark.parametrize("strategy", ["attention", "guidance", "embedding"])
def test_guard_mitigates_only_the_flagged_image(host, strategy):
    if strategy == "embedding":  # the gradient path of a Forge whose weights are ordinary tensors
        make_weights_ordinary()
    plain, flagged = flag_one(host)
    guarded = generate(host, GUARD, {guard_index(): strategy}, batch_size=4, seed=11)
    res = results(guarded)
    assert [r["flagged"] for r in res] == [i == flagged for i in range(4)]
    report = res[flagged]["mitigation"]
    assert report["strategy"] == strategy and report["score_after"] is not None
    if strategy == "embedding":
        assert report["score_after"] < report["score_before"]
    if strategy == "attention":
        assert report["score_after"] != report["score_before"]  # the first step was recomputed under the edit
    for i, (a, b) in enumerate(zip(pixels(guarded), pixels(plain))):
        assert np.array_equal(a, b) == (i != flagged)
    assert "Memguard strategy: " + strategy in guarded.infotexts[flagged]
    assert_clean()


@needs_text_model
def test_attention_edit_reaches_the_flagged_rows_only(host, monkeypatch):
    """The replace patch edits the cond row of the flagged image in every cross-attention call, nothing else."""
    from memguard.hosts import forge

    _, flagged = flag_one(host)
    calls = []
    original = forge.Pass.edited_rows

    def spy(self, extra, batch, length):
        groups = original(self, extra, batch, length)
        calls.append((list(extra["cond_or_uncond"]), sorted(r for rows in groups.values() for r in rows)))
        return groups

    monkeypatch.setattr(forge.Pass, "edited_rows", spy)
    generate(host, GUARD, {guard_index(): "attention"}, batch_size=4, seed=11)
    host_calls = [c for c in calls if len(c[0]) == 2]
    assert host_calls and all(rows == [4 * marks.index(0) + flagged] for marks, rows in host_calls)


@needs_text_model
def test_attention_edit_equals_the_a1111_hooks_on_the_bare_network(host):
    """Forge's replace patch gives the flagged image the same first-step d as memguard's A1111 implementation of Ren
    et al.'s edit (``mitigate.attention.rescaled_attention``: BOS key scaled, padding keys dropped)."""
    from modules import script_callbacks, shared

    from memguard.mitigate import AttentionEdit
    from memguard.mitigate.attention import cross_attention_modules, rescaled_attention

    set_threshold(1e-6)
    seen = {}
    script_callbacks.on_cfg_denoiser(lambda params: seen.setdefault("x", (params.x.clone(), params.sigma.clone())))
    prompt = "a red circle"
    out = generate(host, GUARD, {guard_index(): "attention"}, prompt=prompt)
    x, sigma = seen["x"]
    unet = shared.sd_model.memguard_model.unet
    log_sigmas = (((1 - shared.sd_model.alphas_cumprod) / shared.sd_model.alphas_cumprod) ** 0.5).log()
    t = (sigma.log()[:, None] - log_sigmas[None]).abs().argmin(dim=1).float()
    x = x / (sigma**2 + 1).sqrt()[:, None, None, None]
    engine = shared.sd_model.text_processing_engine
    ids = [i for chunk in engine.process_texts([prompt])[0][0] for i in chunk.tokens]
    keep = a1111.keep_positions(ids, engine.id_end)
    cond = shared.sd_model.get_learned_conditioning([prompt])
    empty = shared.sd_model.get_learned_conditioning([""])
    with torch.no_grad():
        with rescaled_attention(cross_attention_modules(unet), [0], [keep], AttentionEdit(), batch=1):
            edited = unet(x, t, encoder_hidden_states=cond).sample
        d = float((edited - unet(x, t, encoder_hidden_states=empty).sample).norm())
    assert results(out)[0]["mitigation"]["score_after"] == pytest.approx(d, rel=1e-4)


def test_forced_embedding_recomputes_the_unets_layers(host, monkeypatch):
    """Forge's ``IntegratedUNet2DConditionModel`` (``KModel.diffusion_model``): its top-level blocks hold the layers."""
    from modules import shared

    make_weights_ordinary()
    network = shared.sd_model.forge_objects.unet.model.diffusion_model
    assert_embedding_recomputes_layers(host, monkeypatch, network)


@needs_text_model
def test_embedding_falls_back_to_attention_when_forge_weights_are_inference_tensors(host):
    """Forge builds its weights inside inference mode (the double too); backward through them raises."""
    plain, flagged = flag_one(host)
    guarded = generate(host, GUARD, {guard_index(): "embedding"}, batch_size=4, seed=11)
    report = results(guarded)[flagged]["mitigation"]
    assert report["strategy"] == "attention"
    assert "embedding optimization is unavailable on Forge" in report["notes"][0]
    assert "embedding optimization is unavailable on Forge" in guarded.comments
    for i, (a, b) in enumerate(zip(pixels(guarded), pixels(plain))):
        assert np.array_equal(a, b) == (i != flagged)


@needs_text_model
@pytest.mark.parametrize("ordinary", [False, True])
def test_auto_mitigation_in_a_batch_of_two_iterations(host, ordinary):
    """Forge's inference-tensor weights: auto is attention + guidance; with ordinary weights it optimizes, and, the
    threshold being out of reach, adds the attention edit as its next step."""
    if ordinary:
        make_weights_ordinary()
    set_threshold(1e-6)
    out = generate(host, GUARD, {guard_index(): "auto"}, batch_size=2, n_iter=2)
    res = results(out)
    assert [r["index"] for r in res] == [0, 1, 2, 3]
    expected = "embedding+attention+guidance" if ordinary else "attention+guidance"
    assert all(r["mitigation"]["strategy"] == expected for r in res)
    assert_clean()


def test_hires_pass_is_not_scored_again(host):
    out = generate(host, batch_size=2, enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.5)
    assert [r["index"] for r in results(out)] == [0, 1]


def test_two_chunk_prompt_and_batches(host):
    long = ", ".join(f"word{i}" for i in range(60))
    out = generate(host, prompt=long, n_iter=2, batch_size=2)
    assert [r["index"] for r in results(out)] == [0, 1, 2, 3]
    assert all(r["prompt"] == long and r["score"] for r in results(out))


def test_failure_inside_memguard_leaves_generation_alone(host, monkeypatch):
    assert_scoring_failure_contained(host, monkeypatch)
    assert_clean()


@needs_text_model
def test_failing_attention_edit_is_dropped_and_sampling_goes_on(host, monkeypatch):
    from memguard.hosts import forge

    set_threshold(1e-6)

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(forge.Pass, "edited_rows", boom)
    out = generate(host, GUARD, {guard_index(): "attention"}, batch_size=2)
    assert "attention edit: RuntimeError: injected" in out.comments
    assert len(pixels(out)) == 2


def test_failed_mitigation_keeps_the_verdict_and_says_so(host, monkeypatch):
    """As on A1111: a strategy that fails (out of memory, say) is dropped before it takes effect; the image keeps its
    score and verdict, is generated unmitigated, and says why; the next batch tries again."""
    from memguard.hosts import forge

    plain, flagged = flag_one(host, n_iter=2, batch_size=2)

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("injected")

    monkeypatch.setattr(forge.Pass, "apply", boom)
    out = generate(host, GUARD, {guard_index(): "attention"}, batch_size=2, n_iter=2, seed=11)
    res = results(out)
    assert [r["index"] for r in res] == [0, 1, 2, 3] and all(r["mitigation"] is None for r in res)
    failed = [r["index"] for r in res if r.get("mitigation_error") == "OutOfMemoryError: injected"]
    assert failed == [r["index"] for r in res if r["flagged"]] and flagged in failed
    assert "Memguard mitigation: failed (OutOfMemoryError)" in out.infotexts[out.index_of_first_image + flagged]
    for a, b in zip(pixels(out), pixels(plain)):
        assert np.array_equal(a, b)
    assert_clean()


def test_without_memguard_nothing_is_patched(host):
    from modules import shared

    shared.opts.memguard_watch = False
    generate(host)
    assert shared.sd_model.forge_objects.unet.model_options == {"transformer_options": {}}


@pytest.mark.skipif(
    "forge" not in (ROOT / "scripts" / "memguard.py").read_text(), reason="scripts/memguard.py not Forge-aware yet"
)
def test_the_extension_entry_loads_the_forge_scripts(model_dir):
    fakehost.uninstall()
    fakeforge.uninstall()
    try:
        fakeforge.boot(model_dir, extension_dirs=[str(ROOT)])
        from modules import scripts

        watch = next(s for s in scripts.scripts_txt2img.alwayson_scripts if s.title() == "memguard")
        assert "forge" in type(watch).process_before_every_sampling.__module__
    finally:
        fakeforge.uninstall()


def test_tab_and_api_service_reads_forge_unet(host):
    """The Memorization tab and the API on Forge: scores from ``forge_objects.unet`` (KModel x0 -> eps) equal the
    network's own first-step eps difference; the UNet is loaded through Forge's memory manager first; the word
    colours come from occlusion (inference-tensor weights), with a note, and from gradients with ordinary weights."""
    from backend import memory_management
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from modules import shared

    from memguard.api import PREFIX, register_routes
    from memguard.hosts import service_class
    from memguard.hosts.forge.service import ForgeService

    assert service_class() is ForgeService
    service, prompt = ForgeService(), "a (red:1.1) circle"
    analyzed = service.analyze(prompt, [0, 1])
    assert memory_management.current_loaded_models[0] is shared.sd_model.forge_objects.unet

    unet = shared.sd_model.memguard_model.unet
    cond, empty = (shared.sd_model.get_learned_conditioning([t]) for t in (prompt, ""))
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    for seed, score in zip([0, 1], analyzed["scores"]):
        x = torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(seed))
        with torch.no_grad():
            d = unet(x, 999, encoder_hidden_states=cond).sample - unet(x, 999, encoder_hidden_states=empty).sample
        assert score == pytest.approx(float(d.norm()), rel=1e-4)
    assert analyzed["words"] and all(prompt[w["start"] : w["end"]] == w["text"] for w in analyzed["words"])
    assert "occlusion" in analyzed["note"] and "inference tensors" in analyzed["note"]
    assert max(w["value"] for w in analyzed["words"]) > 0

    make_weights_ordinary()
    assert service.analyze(prompt, [0])["note"] is None  # Wen's gradient

    calibrated = service.calibrate([f"a shape {i}" for i in range(10)], 0.1)
    assert service.threshold() == pytest.approx(calibrated["threshold"])
    app = FastAPI()
    register_routes(app, service_class())
    r = TestClient(app).post(f"{PREFIX}/score", json={"prompts": [prompt], "seeds": 2})
    assert r.status_code == 200
    assert r.json()["results"][0]["scores"] == pytest.approx(analyzed["scores"], rel=1e-5)


def boot_with_freeu(model_dir: Path, order: str):
    """The Forge double with a FreeU-like built-in (clones the UNet patcher) loaded before or after memguard; the
    host gets ``freeu_arg``, the index of FreeU's "Enabled" input."""
    fakehost.uninstall()
    fakeforge.uninstall()
    fakeforge.install()
    from forge_freeu import make_freeu

    from memguard.hosts import forge
    from memguard.hosts.forge.scripts import make_scripts

    memguard_scripts, freeu = list(make_scripts()), [make_freeu()]
    classes = freeu + memguard_scripts if order == "freeu first" else memguard_scripts + freeu
    h = fakeforge.boot(model_dir, script_classes=classes, api=True)
    forge.register()
    from modules import scripts, shared

    shared.opts.memguard_threshold = 0.0
    h.freeu_arg = next(s for s in scripts.scripts_txt2img.alwayson_scripts if s.title() == "FreeU Integrated").args_from
    return h


@pytest.fixture(params=["freeu first", "freeu last"])
def freeu_host(request, model_dir):
    yield boot_with_freeu(model_dir, request.param)
    fakeforge.uninstall()


HIRES = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.5)


@pytest.mark.parametrize("hires", [False, True], ids=["plain", "hires"])
def test_extensions_that_clone_the_patcher_work_beside_memguard(freeu_host, hires):
    """Forge's built-ins clone the patcher memguard's clone has become (deep copy of its model options; twice for a
    hires pass, around a reset): they must not fail, their patch must act, memguard must score with it in force and
    leave the images as they are without memguard."""
    from modules import shared

    on = {freeu_host.freeu_arg: True}
    fields = dict(batch_size=2, negative_prompt="blurry", **(HIRES if hires else {}))
    out = generate(freeu_host, script_args=on, **fields)
    assert "Traceback" not in (out.comments or "") and "could not" not in (out.comments or "")
    assert [r["index"] for r in results(out)] == [0, 1] and all(r["score"] > 0 for r in results(out))
    shared.opts.memguard_watch = False
    unwatched = generate(freeu_host, script_args=on, **fields)
    without_freeu = generate(freeu_host, **fields)
    for a, b, c in zip(pixels(out), pixels(unwatched), pixels(without_freeu)):
        assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_forced_embedding_recomputes_the_layers_with_another_extensions_patch_inside(model_dir, monkeypatch):
    """The FreeU-like patch runs inside the spatial transformers, which the backward pass recomputes: it runs again
    there, and the mitigation is the one that stores every activation."""
    host = boot_with_freeu(model_dir, "freeu first")
    try:
        from modules import shared

        make_weights_ordinary()
        network = shared.sd_model.forge_objects.unet.model.diffusion_model
        assert_embedding_recomputes_layers(host, monkeypatch, network, {host.freeu_arg: True})
    finally:
        fakeforge.uninstall()


def test_score_and_mitigation_see_the_other_extensions_patch(model_dir):
    """memguard's own passes (the empty-prompt reference with a negative prompt; the attention edit at later steps)
    go through the patcher Forge samples with, whichever order the scripts run in: same scores, same mitigated
    images with FreeU loaded before or after memguard."""
    outcomes = []
    for order in ("freeu first", "freeu last"):
        h = boot_with_freeu(model_dir, order)
        set_threshold(1e-6)
        on = {guard_index(): "attention", h.freeu_arg: True}
        out = generate(h, GUARD, on, batch_size=2, negative_prompt="blurry")
        outcomes.append((scores(out), [r["mitigation"]["score_after"] for r in results(out)], pixels(out)))
        fakeforge.uninstall()
    (s1, a1, p1), (s2, a2, p2) = outcomes
    assert s1 == pytest.approx(s2, rel=1e-5) and a1 == pytest.approx(a2, rel=1e-5)
    for a, b in zip(p1, p2):
        assert np.array_equal(a, b)


def test_model_options_hold_nothing_unsafe_to_deep_copy(host):
    """What memguard leaves in the patcher's model options survives ``copy.deepcopy`` and ``pickle`` and reaches
    neither the processing object nor memguard's run (locks, models)."""
    import copy
    import pickle

    from modules import scripts, shared

    from memguard.hosts import forge

    set_threshold(1e-6)
    seen = {}
    original = scripts.ScriptRunner.process_before_every_sampling

    def spy(self, p, **kwargs):
        original(self, p, **kwargs)
        options = shared.sd_model.forge_objects.unet.model_options
        memo: dict = {}
        seen["copy"] = copy.deepcopy(options, memo)
        seen["pickled"] = pickle.dumps(options)
        seen["reached"] = {type(o).__name__ for o in (p, getattr(p, a1111.ATTR, None)) if id(o) in memo}
        seen["hooks"] = options.get("sampler_post_cfg_function", [])

    scripts.ScriptRunner.process_before_every_sampling = spy
    try:
        generate(host, GUARD, {guard_index(): "attention"})
    finally:
        scripts.ScriptRunner.process_before_every_sampling = original
    assert seen["reached"] == set() and seen["pickled"]
    assert [type(h) for h in seen["hooks"]] == [forge.Hook]


def test_tab_and_api_load_the_checkpoint_when_they_come_before_any_generation(host, monkeypatch):
    """Forge loads the selected checkpoint at the first generation (``sd_models.forge_model_reload``); until then
    ``shared.sd_model`` has no ``forge_objects``. The service loads it the same way, and keys by its real hash."""
    from modules import sd_models, shared

    from memguard.hosts.forge.service import ForgeService

    loaded, reloads = shared.sd_model, []

    def forge_model_reload():
        reloads.append(1)
        shared.sd_model = loaded

    monkeypatch.setattr(shared, "sd_model", type("FakeInitialModel", (), {"sd_model_hash": None})())
    monkeypatch.setattr(sd_models, "forge_model_reload", forge_model_reload, raising=False)
    service = ForgeService()
    assert service.model_id() == a1111.model_key() != "unknown" and reloads == [1]
    assert service.audit(["a red circle"], [0])[0]["score"] > 0 and reloads == [1]


def test_reforge_attention_comes_from_ldm_patched(monkeypatch):
    """reForge (``Panchovix/stable-diffusion-webui-reForge``) has ``modules_forge`` but ComfyUI's ``ldm_patched``
    backend instead of Forge's ``backend``: memguard's attention patch calls ``optimized_attention`` there."""
    import sys
    import types

    from memguard.hosts import forge

    def optimized_attention(q, k, v, heads):
        return q

    module = types.ModuleType("ldm_patched.ldm.modules.attention")
    module.optimized_attention = optimized_attention
    monkeypatch.setitem(sys.modules, "backend.attention", None)  # import fails, as on reForge
    for name in ("ldm_patched", "ldm_patched.ldm", "ldm_patched.ldm.modules"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "ldm_patched.ldm.modules.attention", module)
    assert forge.attention_function() is optimized_attention


def test_the_noise_schedule_is_forges_predictor_or_reforges_model_sampling():
    """reForge's model is ComfyUI's ``BaseModel`` with ``model_sampling`` where Forge's ``KModel`` has ``predictor``
    (seen in the real reForge: every mitigation failed with ``'BaseModel' object has no attribute 'predictor'``)."""
    from memguard.hosts import forge

    class KModel:
        predictor = "forge"

    class BaseModel:
        model_sampling = "reforge"

    assert forge.schedule(KModel()) == "forge" and forge.schedule(BaseModel()) == "reforge"
