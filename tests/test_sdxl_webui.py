"""memguard on SDXL in both WebUI doubles (A1111 1.10: sgm's ``DiffusionEngine`` with its ``GeneralConditioner``,
``tests/fakehost/modules/sd_models_xl.py``; Forge: ``StableDiffusionXL`` with ``text_processing_engine_l``/``_g``,
``tests/fakeforge/backend/diffusion_engine/sdxl.py``), booted once per module and host with the tiny SDXL model
(``tests/sdxl_model.py``).

The reference decision under test: on SDXL an empty negative prompt is conditioned on *zero* text embeddings
(crossattn and pooled; A1111 ``sd_models_xl.get_learned_conditioning``'s ``force_zero_embeddings``, Forge likewise),
which is what the host's own uncond rows hold; memguard's empty reference (``host.empty_cond``: the tab, the API,
calibration, and generations with a negative prompt) is that same conditioning at the generation's size, so a score
is the same whichever path computed it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import fakeforge
import fakehost
import numpy as np
import pytest
import torch
from sdxl_model import POOLED, TIME_EMBED, build_tiny_sdxl
from webui_helpers import (
    GUARD,
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
VECTOR = POOLED + 6 * TIME_EMBED


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl"))


def boot(kind: str, model_dir: Path):
    """The A1111 double with memguard as an extension, or the Forge double with memguard's Forge scripts."""
    fakehost.uninstall()
    fakeforge.uninstall()
    if kind == "a1111":
        return fakehost.boot(model_dir, extension_dirs=[str(ROOT)], api=True)
    fakeforge.install()
    from memguard.hosts import forge
    from memguard.hosts.forge.scripts import make_scripts

    h = fakeforge.boot(model_dir, script_classes=list(make_scripts()), api=True)
    forge.register()
    return h


@pytest.fixture(scope="module", params=["a1111", "forge"])
def _sdxl_boot(request, sdxl_dir):
    h = boot(request.param, sdxl_dir)
    h.kind = request.param
    yield h
    fakeforge.uninstall()


@pytest.fixture
def host(_sdxl_boot):
    """The booted SDXL host; memguard's settings at their defaults, no threshold, no calibration stored."""
    from modules import errors, shared

    from memguard.hosts.a1111 import store
    from memguard.hosts.settings import OPTIONS

    for key, option in OPTIONS.items():
        setattr(shared.opts, key, option.default)
    shared.opts.memguard_threshold = 0.0
    errors.clear()
    yield _sdxl_boot
    store().path.unlink(missing_ok=True)
    errors.clear()


def conditioning(texts, width, height, negative=False):
    from modules import prompt_parser, shared

    batch = prompt_parser.SdConditioning(texts, width=width, height=height, is_negative_prompt=negative)
    with torch.no_grad():
        return shared.sd_model.get_learned_conditioning(batch)


def encoders():
    """CLIP-L and CLIP-G as loaded (the text encoders under both hosts' wrappers)."""
    from modules import shared

    return shared.sd_model.memguard_model.text_encoder, shared.sd_model.text_encoder_2


def direct_encoding(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text conditioning of a short prompt computed straight from the encoders: ``[BOS] ids [EOS]`` padded to 77
    (CLIP-L with EOS, CLIP-G with 0), each encoder's penultimate hidden state (concatenated on channels), and CLIP-G's
    projected pooled output."""
    from memguard.tokens import load_tokenizer

    ids = load_tokenizer()(prompt, add_special_tokens=False)["input_ids"]
    row = [49406, *ids, 49407]
    text_l, text_g = encoders()
    with torch.no_grad():
        out_l = text_l(input_ids=torch.tensor([row + [49407] * (77 - len(row))]), output_hidden_states=True)
        out_g = text_g(input_ids=torch.tensor([row + [0] * (77 - len(row))]), output_hidden_states=True)
    return torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=2), out_g.text_embeds


def size_ids(width: int, height: int) -> torch.Tensor:
    """The raw size numbers diffusers' SDXL UNet takes: original size, crop (0, 0), target size (height first)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)


def test_the_doubles_condition_sdxl_as_the_hosts(host):
    """``{"crossattn": (N, 77, C_l + C_g), "vector": (N, pooled + 6 * 256)}``; an empty negative prompt is zeros in
    both text parts (not the encoding of ""), with the same size ids as the prompt's; crossattn and pooled are the
    encoders' penultimate states and CLIP-G's projection; the size ids are diffusers' sinusoids of the raw sizes."""
    from diffusers.models.embeddings import Timesteps

    width, height = 16, 24
    cond = conditioning(["a red circle"], width, height)
    uncond = conditioning([""], width, height, negative=True)
    empty_prompt = conditioning([""], width, height)
    assert cond["crossattn"].shape == (1, 77, 64) and cond["vector"].shape == (1, VECTOR)
    assert not uncond["crossattn"].any() and not uncond["vector"][:, :POOLED].any()
    assert torch.equal(uncond["vector"][:, POOLED:], cond["vector"][:, POOLED:])
    assert empty_prompt["crossattn"].abs().sum() > 0  # "" as a prompt is encoded; only the negative is zeroed
    crossattn, pooled = direct_encoding("a red circle")
    assert torch.allclose(cond["crossattn"], crossattn, atol=1e-5)
    assert torch.allclose(cond["vector"][:, :POOLED], pooled, atol=1e-5)
    sizes = Timesteps(TIME_EMBED, flip_sin_to_cos=True, downscale_freq_shift=0)(size_ids(width, height).flatten())
    assert torch.allclose(cond["vector"][0, POOLED:], sizes.flatten(), atol=1e-5)


def test_the_host_chunker_is_clip_l_and_both_embedders_chunk_alike(host):
    """memguard replays the host's chunking (``hosts.a1111.text_model``): A1111's conditioner gives its first text
    embedder's (CLIP-L), Forge has ``text_processing_engine_l``; CLIP-G chunks the same prompt identically (BREAK and
    a long prompt included) and only pads differently (0 after the first EOS)."""
    from modules import shared

    from memguard.hosts.a1111 import text_model

    model = shared.sd_model
    l_engine, g_engine = (
        model.conditioner.embedders[:2]
        if host.kind == "a1111"
        else (model.text_processing_engine_l, model.text_processing_engine_g)
    )
    assert host.kind == "forge" or text_model() is model.cond_stage_model
    for prompt in ("a red circle BREAK a blue square", ", ".join(f"word{i}" for i in range(30))):
        chunks = text_model().process_texts([prompt])[0][0]
        assert [c.tokens for c in chunks] == [c.tokens for c in g_engine.process_texts([prompt])[0][0]]
        assert [c.tokens for c in chunks] == [c.tokens for c in l_engine.process_texts([prompt])[0][0]]
        assert len(chunks) == 2
    assert (l_engine.id_pad, g_engine.id_pad) == (49407, 0)


def test_watch_score_equals_diffusers_own_sdxl_computation(host):
    """Wen's d read from the host's batch == || eps(x_T, c) - eps(x_T, zeros) || from a freshly loaded diffusers SDXL
    UNet fed the raw size ids and the encoders' own outputs (another way to the same number), per image."""
    from diffusers import UNet2DConditionModel

    seen = record_first_step()
    out = generate(host, batch_size=2, steps=4)
    x, sigma = seen["x"][:2], seen["sigma"][:2]
    unet = UNet2DConditionModel.from_pretrained(host.sd_model.memguard_model.path / "unet").eval()
    crossattn, pooled = direct_encoding("a red circle")
    n = x.shape[0]
    ids = size_ids(side(), side()).repeat(n, 1)
    with torch.no_grad():
        xin = x / (sigma**2 + 1).sqrt()[:, None, None, None]
        t = torch.full((n,), 999.0)
        c = unet(
            xin, t, crossattn.repeat(n, 1, 1), added_cond_kwargs={"text_embeds": pooled.repeat(n, 1), "time_ids": ids}
        )
        zeros = {"text_embeds": torch.zeros(n, POOLED), "time_ids": ids}
        u = unet(xin, t, torch.zeros_like(crossattn).repeat(n, 1, 1), added_cond_kwargs=zeros)
    d = (c.sample - u.sample).flatten(1).norm(dim=1)
    assert [r["d"] for r in results(out)] == pytest.approx(d.tolist(), rel=1e-4)
    assert not any(r["extra_pass"] for r in results(out))  # the host's uncond was the zero reference itself


@pytest.mark.parametrize("scale", [1, 2], ids=["native", "2x"])
def test_an_empty_negative_prompt_and_memguards_reference_pass_give_one_score(host, monkeypatch, scale):
    """The score of an image with an empty negative prompt (read from the host's zero uncond) equals its score with a
    negative prompt, a blank one (" " is encoded, not zeroed, on SDXL) or skip-early CFG (memguard's own reference
    pass at the generation's size), on the same seeds, at the native size and twice it."""
    from modules import shared

    size = {"width": side() * scale, "height": side() * scale}
    base = results(generate(host, batch_size=2, **size))
    assert not any(r["extra_pass"] for r in base)
    for fields in ({"negative_prompt": "blurry, dark"}, {"negative_prompt": " "}):
        other = results(generate(host, batch_size=2, **size, **fields))
        assert all(r["extra_pass"] for r in other), fields
        assert [r["d"] for r in other] == pytest.approx([r["d"] for r in base], rel=1e-4), fields
    monkeypatch.setattr(shared.opts, "skip_early_cond", 0.2)
    skipped = results(generate(host, batch_size=2, **size))
    assert all(r["extra_pass"] for r in skipped)
    assert [r["d"] for r in skipped] == pytest.approx([r["d"] for r in base], rel=1e-4)


def test_the_tab_reference_is_the_generations(host):
    """The tab/API/calibration reference is the zero conditioning at the native size, so the service's first-step
    score of a prompt matches a generation's (same seeds; Wen's protocol at t=999 on unit noise, the generation's
    input scaled by ``1/sqrt(sigma_max^2 + 1)``: well within 1 %)."""
    from memguard.hosts import service_class
    from memguard.hosts.a1111 import host as mg_host

    empty = mg_host.empty_cond(1, (side(), side()))
    assert not empty["crossattn"].any() and not empty["vector"][:, :POOLED].any()
    assert torch.equal(empty["vector"], conditioning([""], side(), side(), negative=True)["vector"])
    analyzed = service_class()().analyze("a red circle", [7, 8])
    generated = [r["score"] for r in results(generate(host, batch_size=2, seed=7))]
    assert analyzed["scores"] == pytest.approx(generated, rel=1e-2)


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_watching_does_not_change_images(host, negative):
    from modules import shared

    watched = generate(host, batch_size=2, sampler_name="Euler a", negative_prompt=negative)
    assert all(r["score"] is not None for r in results(watched))
    shared.opts.memguard_watch = False
    plain = generate(host, batch_size=2, sampler_name="Euler a", negative_prompt=negative)
    assert "memguard-data" not in plain.comments
    assert all(np.array_equal(a, b) for a, b in zip(pixels(watched), pixels(plain)))


PROMPTS = {
    "break": "a (red:1.2) circle BREAK a blue square",
    "and": "a red circle AND a blue (square:1.1)",
    "long": ", ".join(f"word{i}" for i in range(30)),  # 109 tokens: two chunks, 154 crossattn rows
}


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_flagged_images_are_explained_on_the_typed_words(host, kind):
    """Both tokenizers aligned: the words come from the host's own chunks (BREAK, AND parts, a second chunk) and sit
    at their spans in the typed prompt."""
    from modules import script_callbacks

    prompt = PROMPTS[kind]
    rows = []
    script_callbacks.on_cfg_denoiser(lambda params: rows.append(params.text_cond["crossattn"].shape[1]))
    set_threshold(1e-6)
    out = generate(host, prompt=prompt, batch_size=2)
    for result in results(out):
        assert result["flagged"] and result["words"], result
        assert all(prompt[w["start"] : w["end"]] == w["text"] for w in result["words"])
        words = {w["text"] for w in result["words"]}
        if kind == "break":
            assert {"circle", "square"} <= words  # both chunks explained
        elif kind == "and":
            assert words in ({"a", "red", "circle"}, {"a", "blue", "square"})  # the strongest part's words
            assert len(result["sub_scores"]) == 2
        else:
            assert {"word0", "word29"} <= words and set(rows) == {154}
    assert "may reproduce a training image" in out.comments


@contextlib.contextmanager
def gradients_allowed(kind: str):
    """On Forge: the engine's UNet weights as ordinary tensors for the block (the gradient path of a Forge whose
    loader did not use inference mode), inference tensors again after it."""
    if kind != "forge":
        yield
        return
    from backend.diffusion_engine.sd15 import ordinary_weights
    from modules import shared

    ordinary_weights(shared.sd_model)
    try:
        yield
    finally:
        with torch.inference_mode():
            for param in shared.sd_model.forge_objects.unet.model.parameters():
                param.data = param.data.clone()


def assert_nothing_left() -> None:
    from modules import shared

    objects = getattr(shared.sd_model, "forge_objects", None)
    unet = shared.sd_model.memguard_model.unet
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())
    if objects is not None:
        assert objects.unet is shared.sd_model.forge_objects_after_applying_lora.unet


@pytest.mark.parametrize("strategy", ["embedding", "attention", "guidance", "auto"])
def test_every_strategy_mitigates_the_flagged_image_only(host, strategy):
    """The flagged image of a batch of 4 is mitigated (its first-step score below the original, except the guidance
    schedule, which acts from the second step) and changes; the others are bit-identical to the unguarded batch."""
    plain, flagged = flag_one(host)
    with gradients_allowed(host.kind if strategy == "embedding" else ""):
        guarded = generate(host, GUARD, {guard_index(): strategy}, batch_size=4, seed=11)
    res = results(guarded)
    assert data(guarded)["errors"] == []
    assert [r["flagged"] for r in res] == [i == flagged for i in range(4)]
    report = res[flagged]["mitigation"]
    assert report["strategy"].startswith(strategy if strategy != "auto" else ""), report
    if strategy != "guidance":
        assert report["score_after"] < report["score_before"]
    for i, (a, b) in enumerate(zip(pixels(guarded), pixels(plain))):
        assert np.array_equal(a, b) == (i != flagged), i
    assert_nothing_left()


def test_a_batch_of_prompts_is_optimized_with_each_images_own_pooled_vector(host, monkeypatch):
    """Two different prompts in one batch, both mitigated (forced); the threshold lies between their scores, so the
    first image stops at once and the optimization (steps small enough to last all its iterations) goes on with the
    second alone, evaluated with its own pooled vector (not the first row's): the ``d`` it reaches is what its prompt
    gives alone."""
    from memguard import strategies
    from memguard.mitigate import Embedding

    reached = []

    def strategy(case):
        out = Embedding(lr=1e-5, max_iters=4)(case)
        reached.append([r.score_after for r in out.reports])
        return out

    monkeypatch.setattr(strategies, "build", lambda name, gradients=True: strategy)
    prompts, seed = ["a red circle", "a blue square on a green field"], 11
    s = scores(generate(host, prompt=prompts, batch_size=2, seed=seed))
    if s[0] > s[1]:
        prompts, s = prompts[::-1], s[::-1]
    set_threshold((s[0] + s[1]) / 2)
    args = {guard_index(): "embedding", guard_index() + 1: True}
    with gradients_allowed(host.kind):
        both = results(generate(host, GUARD, args, prompt=prompts, batch_size=2, seed=seed))
        (alone,) = results(generate(host, GUARD, args, prompt=prompts[1], batch_size=1, seed=seed + 1))
    assert [r["mitigation"]["iterations"] for r in (*both, alone)] == [0, 4, 4]
    assert reached[0][1] == pytest.approx(reached[1][0], rel=1e-5)
    assert both[1]["mitigation"]["score_after"] == pytest.approx(alone["mitigation"]["score_after"], rel=1e-5)


def test_the_flagged_image_is_sampled_with_its_optimized_pooled_vector(host, monkeypatch):
    """The embedding optimization changes the pooled text part of the flagged image's ``vector``; the first step the
    host evaluates again with the new conditioning in force (``score_after``) gives the optimization's own ``d``."""
    from memguard import strategies
    from memguard.mitigate import Embedding

    reached = []

    def strategy(case):
        out = Embedding(max_iters=3)(case)
        reached.append((float((out.pooled - case.pooled).abs().max()), out.reports[0].score_after))
        return out

    monkeypatch.setattr(strategies, "build", lambda name, gradients=True: strategy)
    _, flagged = flag_one(host)
    with gradients_allowed(host.kind):
        guarded = generate(host, GUARD, {guard_index(): "embedding"}, batch_size=4, seed=11)
    ((moved, d),) = reached
    assert moved > 1e-3
    assert results(guarded)[flagged]["mitigation"]["score_after"] == pytest.approx(d, rel=1e-4)


def test_embedding_on_forges_inference_weights_falls_back_to_attention(host):
    if host.kind != "forge":
        pytest.skip("A1111's weights take gradients")
    _, flagged = flag_one(host)
    guarded = generate(host, GUARD, {guard_index(): "embedding"}, batch_size=4, seed=11)
    report = results(guarded)[flagged]["mitigation"]
    assert report["strategy"] == "attention" and report["score_after"] < report["score_before"]
    assert "embedding optimization is unavailable on Forge" in guarded.comments


def test_hires_and_batches_are_scored_once_per_image(host):
    """Two batches of two with the latent hires fix: every image scored at its first pass only (the hires pass, with
    its own size in the vector, is left alone), also while a mitigation is in force."""
    hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.5)
    out = generate(host, batch_size=2, n_iter=2, **hires)
    assert [r["index"] for r in results(out)] == [0, 1, 2, 3]
    assert all(r["score"] is not None for r in results(out)) and data(out)["errors"] == []
    set_threshold(1e-6)
    guarded = generate(host, GUARD, {guard_index(): "attention"}, batch_size=2, n_iter=2, **hires)
    res = results(guarded)
    assert len(res) == 4 and all(r["mitigation"] for r in res) and data(guarded)["errors"] == []
    assert pixels(guarded)[0].shape[:2] == (2 * side(), 2 * side())
    assert_nothing_left()


def test_the_api_mitigates_per_request(host):
    """``/sdapi/v1/txt2img`` with memguard's per-request options: every image scored, flagged, explained, mitigated."""
    import json

    options = {"action": "mitigate", "strategy": "attention", "threshold": 1e-6, "explain": True}
    body = {"prompt": "a red circle", "steps": 3, "width": side(), "height": side(), "batch_size": 2}
    body["alwayson_scripts"] = {"memguard": {"args": [options]}}
    info = json.loads(host.api.text2imgapi(body).info)
    memguard = info["extra_generation_params"]["memguard"]
    assert memguard["errors"] == [] and len(memguard["results"]) == 2
    for r in memguard["results"]:
        assert r["verdict"] == "flagged" and r["mitigation"]["strategy"] == "attention"
        assert {w["text"] for w in r["words"]} == {"a", "red", "circle"}
    assert "Memguard verdict: flagged" in info["infotexts"][0]


def test_the_tab_service_analyzes_audits_and_calibrates(host):
    from memguard.hosts import service_class

    service = service_class()()
    prompt = "a (red:1.1) circle AND a blue square"
    analyzed = service.analyze(prompt, [0, 1])
    assert len(analyzed["scores"]) == 2 and all(s > 0 for s in analyzed["scores"])
    assert analyzed["words"] and all(prompt[w["start"] : w["end"]] == w["text"] for w in analyzed["words"])
    assert ("occlusion" in (analyzed["note"] or "")) == (host.kind == "forge")
    rows = service.audit(["a red circle", "a blue square"], [0])
    assert [r["prompt"] for r in rows] == ["a red circle", "a blue square"]
    calibrated = service.calibrate([f"a shape {i}" for i in range(10)], 0.1)
    assert service.threshold() == pytest.approx(calibrated["threshold"])
    assert calibrated["scores"] == pytest.approx(service.benign_scores([f"a shape {i}" for i in range(10)]))


def test_automatic_calibration_judges_the_first_generation_on_its_scale(host):
    """Automatic calibration before the first step stores a threshold from benign prompts scored against the same
    zero reference; a benign prompt's calibration score matches its generation's score (seed 0, native size)."""
    from modules import shared

    from memguard.hosts import service_class
    from memguard.service import benign_prompts

    shared.opts.memguard_auto_calibrate = True
    out = generate(host, batch_size=2)
    payload = data(out)
    assert payload["source"].startswith("calibrated automatically") and payload["errors"] == []
    assert all(r["verdict"] in ("ok", "flagged") for r in payload["results"])
    assert any("calibrated this checkpoint automatically" in n for n in payload["notices"])
    assert payload["results"][0]["threshold"] == pytest.approx(service_class()().threshold())
    prompt = benign_prompts()[0]
    (benign,) = service_class()().benign_scores([prompt])
    shared.opts.memguard_auto_calibrate = False
    assert results(generate(host, prompt=prompt, seed=0))[0]["score"] == pytest.approx(benign, rel=1e-2)
