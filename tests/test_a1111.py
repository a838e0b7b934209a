"""memguard's A1111 glue driven end to end through the faithful fake host (``tests/fakehost``): the real
``scripts/memguard.py`` loaded as an extension, real samplers, real CFG batches."""

from __future__ import annotations

import json
from pathlib import Path

import fakehost
import numpy as np
import pytest
import torch
from webui_helpers import (
    GUARD,
    assert_embedding_recomputes_layers,
    assert_scoring_failure_contained,
    data,
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

pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def host(model_dir, tmp_path):
    fakehost.uninstall()
    h = fakehost.boot(model_dir, extension_dirs=[str(ROOT)], api=True)
    from modules import shared

    shared.opts.memguard_threshold = 0.0
    yield h
    fakehost.uninstall()


def test_watch_scores_every_image_and_writes_infotext(host):
    out = generate(host, batch_size=2)
    results = data(out)["results"]
    assert [r["index"] for r in results] == [0, 1]
    assert all(r["score"] is not None and r["score"] > 0 for r in results)
    assert not any(r["extra_pass"] for r in results)  # empty negative prompt: the host's own uncond is e_empty
    assert "Memguard verdict: uncalibrated" in out.infotexts[0]


@pytest.mark.parametrize("scale", [(1, 1), (2, 2), (1, 2), (2, 1)], ids=["native", "2x", "tall", "wide"])
def test_watch_score_equals_direct_recomputation(host, scale):
    """``d`` from the host's CFG batch == || eps(x_T, c) - eps(x_T, "") || on the bare network; the judged score is
    ``d`` at the model's native size (``d * sqrt(h0 w0 / (h w))``), at every size and aspect ratio."""
    from modules import shared

    seen = record_first_step()
    height, width = side() * scale[0], side() * scale[1]
    out = generate(host, sampler_name="DDIM", steps=5, height=height, width=width)
    unet, t = shared.sd_model.model.diffusion_model, int(seen["sigma"][0])
    cond = shared.sd_model.get_learned_conditioning(["a red circle"])
    empty = shared.sd_model.get_learned_conditioning([""])
    with torch.no_grad():
        x = seen["x"][:1]
        assert x.shape[-2:] == (height, width)
        d = (unet(x, t, encoder_hidden_states=cond).sample - unet(x, t, encoder_hidden_states=empty).sample).norm()
    (result,) = data(out)["results"]
    assert result["d"] == pytest.approx(float(d), rel=1e-5)
    assert result["score"] == pytest.approx(float(d) / (scale[0] * scale[1]) ** 0.5, rel=1e-5)


def test_mitigation_off_the_native_size_works_in_raw_d(host, monkeypatch):
    """At twice the native size the strategy gets the threshold as Wen's ``d`` of that latent (its target, like its
    scores, is raw ``d``) and its report comes back in judged units."""
    from memguard import strategies

    cases = []
    build = strategies.build
    monkeypatch.setattr(strategies, "build", lambda *a, **k: lambda case: cases.append(case) or build(*a, **k)(case))
    set_threshold(1e-3)
    out = generate(host, GUARD, {guard_index(): "attention"}, height=2 * side(), width=2 * side())
    (result,) = data(out)["results"]
    assert result["score"] == pytest.approx(result["d"] / 2, rel=1e-6)
    (case,) = cases
    assert case.target == pytest.approx(2e-3) and case.scores == pytest.approx([result["d"]], rel=1e-5)
    mitigation = result["mitigation"]
    assert mitigation["score_before"] == pytest.approx(result["score"], rel=1e-5)
    assert 0 < mitigation["score_after"] != mitigation["score_before"]


def test_negative_prompt_and_skip_early_cond_use_empty_reference(host):
    from modules import shared

    base = scores(generate(host))[0]
    neg = data(generate(host, negative_prompt="blurry, dark"))["results"][0]
    assert neg["extra_pass"] and neg["score"] == pytest.approx(base, rel=1e-5)
    shared.opts.skip_early_cond = 0.2
    skipped = data(generate(host))["results"][0]
    assert skipped["extra_pass"] and skipped["score"] == pytest.approx(base, rel=1e-5)


def test_watching_does_not_change_images(host):
    from modules import shared

    watched = generate(host, batch_size=2, sampler_name="Euler a")
    shared.opts.memguard_watch = False
    plain = generate(host, batch_size=2, sampler_name="Euler a")
    assert "memguard-data" not in plain.comments
    for a, b in zip(pixels(watched), pixels(plain)):
        assert np.array_equal(a, b)


def first_steps() -> list[dict]:
    """Every first step's CFG inputs of the generations that follow (one per batch), as the host passed them."""
    from modules import script_callbacks

    seen: list[dict] = []

    def grab(params):
        if params.denoiser.step == 0:
            seen.append({"x": params.x.clone(), "t": int(params.sigma[0]), "cond": params.text_cond.clone()})

    script_callbacks.on_cfg_denoiser(grab)
    return seen


def by_hand(x: torch.Tensor, t: int, cond: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Wen's ``d`` and the per-position norm of its gradient w.r.t. ``cond`` (one image, one conditioning row),
    computed on the bare network with autograd: ``|| d/d e_i || eps(x, e) - eps(x, "") || ||`` per position ``i``.
    For the timestep samplers (DDIM) the host's ``x`` and ``t`` are the network's own inputs."""
    from modules import shared

    unet = shared.sd_model.model.diffusion_model
    with torch.no_grad():
        empty = unet(x, t, encoder_hidden_states=shared.sd_model.get_learned_conditioning([""])).sample
    e = cond.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        d = (unet(x, t, encoder_hidden_states=e).sample - empty).flatten().norm()
        (grad,) = torch.autograd.grad(d, e)
    return float(d), grad[0].norm(dim=-1)


def assert_top_word(words: list[dict], expected: dict[str, float]) -> None:
    """The word carrying the most significance is the one with the largest expected value (any word within 0.1%
    of that largest value counts as a tie)."""
    top = max(words, key=lambda w: w["value"])
    peak = max(expected.values())
    assert expected[top["text"]] >= peak * (1 - 1e-3), (top, expected)


def test_flagged_image_is_explained_on_the_typed_words(host):
    """The flagged image's words are those of its strongest ``AND`` sub-prompt at their places in the typed prompt,
    each with Wen's significance of its token (the gradient norm recomputed here on the bare network), so the
    top word is the one that really carries the score. Both orders of the two sub-prompts: the strongest one is
    the second in one of them."""
    halves = ["a (red:1.2) circle", "a blue square"]
    strongest_of = []
    for prompt in (" AND ".join(halves), " AND ".join(halves[::-1])):
        set_threshold(0)
        first = scores(generate(host, prompt=prompt, sampler_name="DDIM"))[0]
        set_threshold(first * 0.5)
        steps = first_steps()
        out = generate(host, prompt=prompt, sampler_name="DDIM")
        result = data(out)["results"][0]
        assert result["flagged"] and result["words"]
        (step,) = steps
        assert step["cond"].shape[0] == 2  # one conditioning row per sub-prompt
        recomputed = [by_hand(step["x"][:1], step["t"], step["cond"][[k]]) for k in range(2)]
        assert result["sub_scores"] == pytest.approx([d for d, _ in recomputed], rel=1e-5)
        strongest = max(range(2), key=lambda k: recomputed[k][0])
        strongest_of.append(strongest)
        sub = prompt.split(" AND ")[strongest]
        at = prompt.index(sub)
        typed = [(text, at + sub.index(text)) for text in sub.replace("(", "").replace(":1.2)", "").split()]
        assert [(w["text"], w["start"], w["end"]) for w in result["words"]] == [(t, i, i + len(t)) for t, i in typed]
        grads = recomputed[strongest][1]
        expected = {text: float(grads[1 + k]) for k, (text, _) in enumerate(typed)}  # BOS at 0, then the 3 tokens
        assert {w["text"]: w["value"] for w in result["words"]} == pytest.approx(expected, rel=1e-3)
        assert_top_word(result["words"], expected)
        assert "may reproduce a training image" in out.comments
        assert "Memguard verdict: flagged" in out.infotexts[0]
    assert sorted(strongest_of) == [0, 1]  # the same sub-prompt won in both orders: once first, once second


def test_guard_mitigates_only_the_flagged_image(host):
    plain, flagged = flag_one(host)  # exactly one image above the threshold
    guarded = generate(host, GUARD, {guard_index(): "embedding"}, batch_size=4, seed=11)
    results = sorted(data(guarded)["results"], key=lambda r: r["index"])
    assert [r["flagged"] for r in results] == [i == flagged for i in range(4)]
    report = results[flagged]["mitigation"]
    assert report["strategy"] == "embedding" and report["score_after"] < report["score_before"]
    for i, (a, b) in enumerate(zip(pixels(guarded), pixels(plain))):
        assert np.array_equal(a, b) == (i != flagged)
    assert "Memguard strategy: embedding" in guarded.infotexts[flagged]


def test_forced_embedding_recomputes_the_unets_layers(host, monkeypatch):
    """ldm's ``UNetModel`` (the double's ``modules.sd_models.UNetModel``): its top-level blocks hold the layers."""
    from modules import shared

    assert_embedding_recomputes_layers(host, monkeypatch, shared.sd_model.model.diffusion_model)


def test_attention_edit_applies_to_the_flagged_images_conditional_row_only(host):
    """Ren et al.'s edit as the guard installs it in the host's CFG batch: in every UNet call of sampling, the
    unconditional rows and the other images' rows are those of the unedited network, and the flagged image's
    conditional row is the edit computed here with its kept keys written out (BOS, the 3 prompt tokens, the first
    EOS: positions 0-4 of "a red circle")."""
    from modules import shared

    from memguard.mitigate.attention import cross_attention_modules, rescaled_attention
    from memguard.mitigate.base import AttentionEdit

    _, flagged = flag_one(host)
    unet = shared.sd_model.model.diffusion_model
    calls = []

    def record(_module, args, kwargs, out):
        calls.append((args[0].clone(), args[1], kwargs["encoder_hidden_states"].clone(), out.sample.clone()))

    hook = unet.register_forward_hook(record, with_kwargs=True)
    try:
        guarded = generate(host, GUARD, {guard_index(): "attention"}, batch_size=4, seed=11, steps=3)
    finally:
        hook.remove()
    assert [r["flagged"] for r in results(guarded)] == [i == flagged for i in range(4)]
    batches = [call for call in calls if call[0].shape[0] == 8]  # the host's CFG batches: 4 cond, then 4 uncond
    assert len(batches) == 3
    others = [r for r in range(8) if r != flagged]
    for x, t, context, out in batches:
        with torch.no_grad():
            plain = unet(x, t, encoder_hidden_states=context).sample
            edit = AttentionEdit(c_bos=1.25, mask_padding=True)
            with rescaled_attention(cross_attention_modules(unet), [flagged], [[0, 1, 2, 3, 4]], edit, batch=8):
                edited = unet(x, t, encoder_hidden_states=context).sample
        assert torch.allclose(out[others], plain[others], rtol=0, atol=1e-6)
        assert torch.allclose(out[flagged], edited[flagged], rtol=0, atol=1e-5)
        assert not torch.allclose(out[flagged], plain[flagged], rtol=0, atol=1e-4)


@pytest.mark.parametrize("strategy", ["attention", "guidance", "auto"])
def test_guard_strategies_run_and_clean_up(host, strategy):
    from modules import shared

    set_threshold(1e-6)
    out = generate(host, GUARD, {guard_index(): strategy}, batch_size=2)
    assert all(r["mitigation"] for r in data(out)["results"])
    unet = shared.sd_model.model.diffusion_model
    assert all(not m._forward_hooks for m in unet.modules())


def test_hires_pass_is_not_scored_again(host):
    """With hires fix, the reported scores are the first pass's: those of the same generation without hires fix
    (same seeds, same first pass), not the hires pass's (whose first step is scored too if memguard reads it)."""
    plain = results(generate(host, batch_size=2))
    steps = first_steps()
    hires = generate(host, batch_size=2, enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.5)
    assert [step["x"].shape[-1] for step in steps] == [side(), 2 * side()]  # two passes, each with a first step
    got = results(hires)
    assert [r["index"] for r in got] == [0, 1]
    for a, b in zip(got, plain):
        assert a["d"] == pytest.approx(b["d"], rel=1e-5) and a["score"] == pytest.approx(b["score"], rel=1e-5)


def test_two_chunk_prompt_and_batches(host):
    """A prompt of two 75-token chunks (154 conditioning rows), two batches of two: every image is scored on its own
    ``x_T`` (its ``d`` recomputed here on the bare network), and its words come from both chunks, each at its span in
    the prompt with the significance of its own tokens (a word that only the second chunk holds included)."""
    from modules import shared

    from memguard.tokens import load_tokenizer

    long = ", ".join(f"word{i}" for i in range(30))  # 109 tokens
    chunks = shared.sd_model.cond_stage_model.process_texts([long])[0][0]
    assert len(chunks) == 2 and all(len(c.tokens) == 77 for c in chunks)
    # where each word's pieces sit in the 154 positions (BOS at 0 and 77, EOS and padding after each chunk's text)
    names = load_tokenizer().convert_ids_to_tokens([t for c in chunks for t in c.tokens])
    positions: dict[str, list[int]] = {}
    current, at = "", []
    for k, name in enumerate(names):
        if k % 77 == 0 or name in ("<|endoftext|>", ",</w>"):  # BOS, EOS and padding, commas: between words
            if current:
                positions[current], current, at = at, "", []
            continue
        current, at = current + name.replace("</w>", ""), [*at, k]  # "word29": "word</w>", "2</w>", "9</w>"
    assert {f"word{i}" for i in range(30)} <= set(positions)
    second = {w for w, at in positions.items() if w.startswith("word") and min(at) >= 77}
    assert "word29" in second and "word0" not in second  # the second chunk holds the last words only

    steps = first_steps()
    set_threshold(1e-6)
    out = generate(host, prompt=long, n_iter=2, batch_size=2, sampler_name="DDIM")
    assert [step["cond"].shape[1] for step in steps] == [154, 154]  # one first step per batch, two chunks each
    results_ = sorted(data(out)["results"], key=lambda r: r["index"])
    assert [r["index"] for r in results_] == [0, 1, 2, 3] and all(r["prompt"] == long for r in results_)
    ds = []
    for r in results_:
        step = steps[r["index"] // 2]
        row = r["index"] % 2
        d, grads = by_hand(step["x"][[row]], step["t"], step["cond"][[row]])
        ds.append(d)
        assert r["d"] == pytest.approx(d, rel=1e-5)
        words = {w["text"]: w for w in r["words"] if w["text"].startswith("word")}
        assert set(words) == {f"word{i}" for i in range(30)}
        for text, w in words.items():
            assert long[w["start"] : w["end"]] == text
            assert w["value"] == pytest.approx(max(float(grads[k]) for k in positions[text]), rel=1e-3)
        assert all(words[w]["value"] > 0 for w in second)
    assert len(set(ds)) == 4  # four images, four noises: not one image scored four times


def test_failure_inside_memguard_leaves_generation_alone(host, monkeypatch):
    assert_scoring_failure_contained(host, monkeypatch)


def test_api_dict_args_and_infotext_roundtrip(host):
    from modules import infotext_utils

    set_threshold(1e-6)
    resp = host.api.text2imgapi(
        {
            "prompt": "a red circle",
            "steps": 3,
            "width": side(),
            "height": side(),
            "script_name": GUARD.lower(),
            "script_args": ["guidance", True, False],
        }
    )
    info = json.loads(resp.info)
    assert info["extra_generation_params"]["Memguard strategy"] == "guidance"
    params = infotext_utils.parse_generation_parameters(info["infotexts"][0])
    assert params["Memguard strategy"] == "guidance" and params["Memguard verdict"] == "flagged"


def test_no_state_or_callbacks_accumulate(host):
    """After each generation the processing object holds no run and the host's callbacks are those at boot."""
    from modules import script_callbacks
    from webui_helpers import processing

    from memguard.hosts import a1111

    before = script_callbacks.count_callbacks()
    for _ in range(5):
        p = processing(host)
        host.run_txt2img(p)
        assert not hasattr(p, a1111.ATTR) and "close" not in vars(p)
    assert script_callbacks.count_callbacks() == before


def test_tab_service_scores_explains_and_calibrates_the_loaded_checkpoint(host):
    from memguard.hosts import a1111
    from memguard.hosts.a1111.service import A1111Service

    service = A1111Service()
    prompt = "a (red:1.1) circle AND a blue square"
    analyzed = service.analyze(prompt, [0, 1])
    assert len(analyzed["scores"]) == 2 and analyzed["threshold"] is None
    assert analyzed["note"] is None  # A1111's weights take gradients: Wen's token significance
    assert analyzed["words"] and all(prompt[w["start"] : w["end"]] == w["text"] for w in analyzed["words"])
    rows = service.audit(["a red circle", "a blue square"], [0])
    assert [r["prompt"] for r in rows] == ["a red circle", "a blue square"]
    calibrated = service.calibrate([f"a shape {i}" for i in range(10)], 0.1)
    assert a1111.current_threshold()[0] == pytest.approx(calibrated["threshold"])
    assert service.threshold() == pytest.approx(calibrated["threshold"])


def test_tab_service_uses_the_model_only_under_the_hosts_queue_lock(host):
    """The tab and the API never run the UNet beside a generation: every forward happens while memguard holds
    ``call_queue.queue_lock`` (the lock the host's generate button and API hold), and waits for it while it is held."""
    import threading

    from modules import call_queue, shared

    from memguard.hosts.a1111.service import A1111Service

    held = []
    hook = shared.sd_model.model.diffusion_model.register_forward_pre_hook(
        lambda *_: held.append(call_queue.queue_lock.locked())
    )
    try:
        service = A1111Service()
        service.analyze("a (red:1.2) circle AND a square", [0, 1])
        service.audit(["a red circle", "a blue square"], [0])
        service.calibrate(["a shape", "a form", "a thing"], 0.1)
        assert held and all(held)
        assert not call_queue.queue_lock.locked()  # released after each call
        generate(host)  # the generation itself holds the lock too (the host's wrap_gradio_gpu_call)
        assert all(held)

        held.clear()
        done = threading.Event()
        with call_queue.queue_lock:  # a generation is running
            worker = threading.Thread(target=lambda: (service.audit(["a red circle"], [0]), done.set()))
            worker.start()
            assert not done.wait(0.5) and held == []  # still waiting: no UNet call beside the generation
        worker.join(60)
        assert done.is_set() and held and all(held)
    finally:
        hook.remove()


def api_txt2img(host, **fields) -> dict:
    """``POST /sdapi/v1/txt2img`` through the host's own API object; the response's ``info`` parsed."""
    body = {"prompt": "a red circle", "steps": 3, "width": side(), "height": side(), **fields}
    return json.loads(host.api.text2imgapi(body).info)


def test_api_response_carries_the_per_image_results(host):
    """API callers get every image's score, threshold, verdict, words and mitigation in ``info`` (the host's JSON
    turns callables into nulls and drops ``comments``), with per-request options given as a dict."""
    options = {"action": "mitigate", "strategy": "attention", "threshold": 1e-6, "explain": True}
    info = api_txt2img(host, batch_size=2, alwayson_scripts={"memguard": {"args": [options]}})
    params = info["extra_generation_params"]
    assert not any(key.startswith("Memguard") and value is None for key, value in params.items())  # no nulls
    memguard = params["memguard"]
    assert memguard["source"] == "manual threshold (request)" and memguard["errors"] == []
    results = memguard["results"]
    assert [r["index"] for r in results] == [0, 1] and all(r["score"] > 0 for r in results)
    assert all(r["threshold"] == 1e-6 and r["verdict"] == "flagged" for r in results)
    assert all(r["mitigation"]["strategy"] == "attention" and r["mitigation"]["score_after"] for r in results)
    assert all({w["text"] for w in r["words"]} == {"a", "red", "circle"} for r in results)
    assert "Memguard verdict: flagged" in info["infotexts"][0]


def test_api_options_are_validated_and_the_settings_fill_the_rest(host):
    from modules import shared

    shared.opts.memguard_watch = False
    assert "memguard" not in api_txt2img(host)["extra_generation_params"]  # the setting: not watched
    watched = api_txt2img(host, alwayson_scripts={"memguard": {"args": [{"watch": True}]}})
    assert watched["extra_generation_params"]["memguard"]["results"][0]["verdict"] == "uncalibrated"
    for bad, message in [
        ({"strategyy": "auto"}, "unknown memguard option 'strategyy'"),
        ({"action": "delete"}, "memguard option 'action' must be one of warn, mitigate"),
        ({"threshold": -1}, "memguard option 'threshold' must be a number above 0"),
        ("not json", "memguard's argument is not JSON"),
    ]:
        info = api_txt2img(host, alwayson_scripts={"memguard": {"args": [bad]}})
        (error,) = info["extra_generation_params"]["memguard"]["errors"]
        assert error.startswith("reading the request's options: OptionsError: " + message), error
        assert len(info["infotexts"]) == 1  # the image is made all the same


def test_audit_log_and_infotext_share_one_verdict(host, tmp_path):
    from modules import shared

    log = tmp_path / "audit.jsonl"
    shared.opts.memguard_audit_log = str(log)
    out = generate(host)
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert row["verdict"] == "uncalibrated" and "Memguard verdict: uncalibrated" in out.infotexts[0]
    assert row["threshold_source"] == "this checkpoint is not calibrated yet (Memorization tab, Calibrate)"


def test_mitigation_that_stays_above_the_threshold_says_so(host):
    """A mitigation whose re-scored first step is still above the threshold is not reported as mitigated."""
    from memguard.ui.panel import render_result

    set_threshold(1e-6)
    out = generate(host, GUARD, {guard_index(): "attention"})
    (result,) = data(out)["results"]
    after = result["mitigation"]["score_after"]
    assert after > 1e-6
    expected = f"Memguard mitigation: attention {result['score']:.4g}->{after:.4g} still above threshold"
    assert expected in out.infotexts[0]
    assert "mitigation (attention) did not bring it below the threshold" in out.comments
    html = render_result(result)
    assert "still above the threshold" in html and ", mitigated" not in html


def test_guard_script_with_override_settings_uses_the_overridden_threshold(host):
    """``override_settings`` take effect inside ``process_images``, after the dropdown script started its run: the
    batch is judged with the threshold in force then (seen in the real WebUIs, ``tests/realhost``)."""
    info = api_txt2img(
        host,
        script_name=GUARD.lower(),
        script_args=["attention", False, True],
        override_settings={"memguard_threshold": 1e-6},
    )
    (result,) = info["extra_generation_params"]["memguard"]["results"]
    assert result["verdict"] == "flagged" and result["mitigation"]["strategy"] == "attention"
    assert info["extra_generation_params"]["memguard"]["source"] == "manual threshold (settings)"
