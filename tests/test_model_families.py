"""Model families beyond SD1 and SDXL in the WebUI doubles.

* SD2 (768-v: OpenCLIP-H-like, 1024 channels, v-prediction; ``tests/sdxl_model.py``) is scored and explained.
* Families memguard cannot score (``memguard.hosts.families``), probed from the loaded model and the job: SD3 on
  A1111 (``create_denoiser``: ``tests/fakehost/modules/models/sd3/sd3_model.py``), Flux (guidance-distilled) and SD3
  (flow matching) on Forge (``tests/fakeforge/backend/diffusion_engine/{flux,sd35}.py``), and img2img jobs that run
  txt2img's scripts (ADetailer's pattern; ``tests/fakehost/modules/processing_img2img.py``). For those the images are
  bit-identical to memguard off, every image is ``unscored`` with the reason (panel, API, infotext
  ``Memguard reason: not-applicable/...``), the notice is said once, and the tab and the API refuse with the reason.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import fakeforge
import fakehost
import numpy as np
import pytest
import torch
from PIL import Image
from sdxl_model import build_tiny_sd2
from webui_helpers import GUARD, data, generate, guard_index, pixels, results, set_threshold, side

pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sd2_host(tmp_path_factory):
    fakehost.uninstall()
    fakeforge.uninstall()
    h = fakehost.boot(build_tiny_sd2(tmp_path_factory.mktemp("sd2")), extension_dirs=[str(ROOT)], api=True)
    from modules import shared

    shared.opts.memguard_threshold = 0.0
    yield h
    fakehost.uninstall()


def sd2_encoding(prompt: str) -> torch.Tensor:
    """SD2's conditioning straight from the encoder: ``[BOS] ids [EOS]`` padded with 0 (OpenCLIP's "!"), the
    penultimate layer through the final layer norm."""
    from modules import shared

    from memguard.tokens import load_tokenizer

    ids = load_tokenizer()(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    row = [49406, *ids, 49407]
    encoder = shared.sd_model.memguard_model.text_encoder
    with torch.no_grad():
        out = encoder(input_ids=torch.tensor([row + [0] * (77 - len(row))]), output_hidden_states=True)
        return getattr(encoder, "text_model", encoder).final_layer_norm(out.hidden_states[-2])


def test_sd2_is_scored_from_the_hosts_batch(sd2_host):
    """SD2 (v-prediction) in A1111: ``d`` from the host's batch (x0 of ``CompVisVDenoiser`` -> eps) equals the
    network's own v difference at the first step, ``||v_c - v_u|| / sqrt(sigma^2 + 1)``, with the uncond the
    encoding of "" (SD2 does not zero it)."""
    from modules import script_callbacks, shared

    assert shared.sd_model.is_sd2 and shared.sd_model.parameterization == "v"
    seen = {}
    script_callbacks.on_cfg_denoiser(lambda p: seen.setdefault("x", (p.x[:2].clone(), p.sigma[:2].clone())))
    out = generate(sd2_host, batch_size=2)
    x, sigma = seen["x"]
    unet = shared.sd_model.memguard_model.unet
    scale = (sigma**2 + 1).sqrt()[:, None, None, None]
    t = torch.full((2,), 999.0)
    with torch.no_grad():
        v_c = unet(x / scale, t, encoder_hidden_states=sd2_encoding("a red circle").repeat(2, 1, 1)).sample
        v_u = unet(x / scale, t, encoder_hidden_states=sd2_encoding("").repeat(2, 1, 1)).sample
    d = ((v_c - v_u) / scale).flatten(1).norm(dim=1)
    assert shared.sd_model.get_learned_conditioning(["a red circle"]).shape == (1, 77, 1024)
    assert [r["d"] for r in results(out)] == pytest.approx(d.tolist(), rel=1e-4)
    with_negative = results(generate(sd2_host, batch_size=2, negative_prompt="blurry"))
    assert [r["d"] for r in with_negative] == pytest.approx(d.tolist(), rel=1e-4)


def test_sd2_flagged_image_is_explained_on_the_typed_words(sd2_host):
    prompt = "a (red:1.2) circle BREAK a blue square"
    set_threshold(1e-6)
    (result,) = results(generate(sd2_host, prompt=prompt))
    assert result["flagged"] and result["note"] is None  # A1111's weights: Wen's gradient
    assert {"circle", "square"} <= {w["text"] for w in result["words"]}
    assert all(prompt[w["start"] : w["end"]] == w["text"] for w in result["words"])


@pytest.mark.parametrize("strategy", ["embedding", "attention"])
def test_sd2_guard_applies_and_rescores_the_mitigation(sd2_host, strategy):
    """The strategies run on SD2's conditioning and the mitigated first step is re-scored from the host's batch (on
    these random weights neither needs to bring the score down: the optimizer's fixed step is large for them)."""
    set_threshold(1e-6)
    out = generate(sd2_host, GUARD, {guard_index(): strategy})
    (result,) = results(out)
    report = result["mitigation"]
    assert data(out)["errors"] == [] and report["strategy"] == strategy
    assert report["score_after"] > 0 and report["score_after"] != report["score_before"]


def test_native_latent_of_real_checkpoints_is_probed_from_the_model():
    """Without a diffusers config (the real hosts' ldm/sgm UNets): 128x128 for SDXL, 96x96 for a v-prediction SD2,
    64x64 otherwise; the native size in pixels is that times the host's latent factor."""
    from memguard.hosts.a1111.host import native_latent

    unet = SimpleNamespace(in_channels=4)
    assert native_latent(unet, SimpleNamespace(is_sdxl=True, parameterization="eps")) == (4, 128, 128)
    assert native_latent(unet, SimpleNamespace(is_sdxl=False, parameterization="v")) == (4, 96, 96)
    assert native_latent(unet, SimpleNamespace(is_sdxl=False, parameterization="eps")) == (4, 64, 64)


# --- families memguard cannot score --------------------------------------------------------------------------------


def boot_family(kind: str, model_dir: Path):
    """The SD1 tiny model booted in the A1111 ("a1111-sd3") or Forge ("forge-flux", "forge-sd3") double, the loaded
    model then replaced by a minimal double of that family built over the same weights."""
    fakehost.uninstall()
    fakeforge.uninstall()
    if kind.startswith("a1111"):
        h = fakehost.boot(model_dir, extension_dirs=[str(ROOT)], api=True)
        from modules import sd_models, shared
        from modules.models.sd3.sd3_model import SD3Inferencer

        h.sd_model = sd_models.use_model(SD3Inferencer(shared.sd_model.memguard_model))
        return h
    fakeforge.install()
    from memguard.hosts import forge
    from memguard.hosts.forge.scripts import make_scripts

    h = fakeforge.boot(model_dir, script_classes=list(make_scripts()), api=True)
    forge.register()
    from backend.diffusion_engine.flux import Flux, flow_engine
    from backend.diffusion_engine.sd35 import StableDiffusion3
    from modules import sd_models, shared

    engine = {"forge-flux": Flux, "forge-sd3": StableDiffusion3}[kind]
    h.sd_model = sd_models.use_model(flow_engine(engine, shared.sd_model.memguard_model))
    return h


FAMILIES = {"a1111-sd3": "flow-matching", "forge-flux": "guidance-distilled", "forge-sd3": "flow-matching"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_host(request, model_dir):
    h = boot_family(request.param, model_dir)
    h.kind, h.code = request.param, FAMILIES[request.param]
    yield h
    fakeforge.uninstall()


@pytest.fixture
def family(family_host):
    from modules import shared

    from memguard.hosts.settings import OPTIONS

    for key, option in OPTIONS.items():
        setattr(shared.opts, key, option.default)
    yield family_host


def assert_not_applicable(out, code: str, n: int) -> None:
    """Every image ``unscored`` with the reason, said once; the infotext carries verdict and reason."""
    from modules import infotext_utils

    res = results(out)
    assert len(res) == n and all(r["verdict"] == "unscored" and r["score"] is None for r in res)
    assert len({r["reason"] for r in res}) == 1 and res[0]["reason"].startswith("not applicable: ")
    notices = data(out)["notices"]
    assert len(notices) == 1 and notices[0].startswith("memguard does not apply to ")
    readable = [line for line in out.comments.splitlines() if not line.startswith("memguard-data:")]
    assert sum("memguard does not apply" in line for line in readable) == 1
    assert not any("could not score" in line or "not judged" in line for line in readable)
    assert data(out)["errors"] == []
    for infotext in out.infotexts[out.index_of_first_image :]:
        params = infotext_utils.parse_generation_parameters(infotext)
        assert params["Memguard verdict"] == "unscored" and params["Memguard reason"] == f"not-applicable/{code}"


def test_a_family_memguard_cannot_score_is_left_untouched_and_said_so(family):
    """Watching and the guard script (a threshold every image would exceed) on such a model: the images are
    bit-identical to memguard off; no mitigation, no patch, no hook; the reason once in the panel and the log."""
    from modules import shared

    from memguard.ui.panel import render_panel

    watched = generate(family, batch_size=2)
    assert_not_applicable(watched, family.code, 2)
    set_threshold(1e-9)
    guarded = generate(family, GUARD, {guard_index(): "auto"}, batch_size=2)
    assert_not_applicable(guarded, family.code, 2)
    assert not any(r["mitigation"] for r in results(guarded))
    shared.opts.memguard_watch = False
    plain = generate(family, batch_size=2)
    assert "memguard-data" not in plain.comments
    for out in (watched, guarded):
        assert all(np.array_equal(a, b) for a, b in zip(pixels(out), pixels(plain)))
    html = render_panel(results(watched), notices=data(watched)["notices"])
    assert "memguard does not apply to" in html and "Not scored" in html
    objects = getattr(shared.sd_model, "forge_objects", None)
    if objects is not None:
        assert objects.unet is shared.sd_model.forge_objects_after_applying_lora.unet
        assert objects.unet.model_options == {"transformer_options": {}}


def test_the_tab_and_the_api_refuse_such_a_model_with_the_reason(family):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from memguard.api import PREFIX, register_routes
    from memguard.hosts import families, service_class

    with pytest.raises(families.NotApplicable, match="memguard does not apply to a"):
        service_class()().analyze("a red circle", [0])
    app = FastAPI()
    register_routes(app, service_class())
    response = TestClient(app).post(f"{PREFIX}/score", json={"prompts": ["a red circle"], "seeds": 1})
    assert response.status_code == 409 and "does not apply" in response.json()["error"]


def test_the_probe_reads_the_model_not_its_name():
    """Predictor types and flags, not version strings: Forge's discrete eps/v ``Prediction`` is scored, its flow
    predictors (``prediction_type`` "const") and guidance-distilled engines are not; an A1111 model with its own
    denoiser (SD3) is not; reForge's ComfyUI-style ``model_sampling`` is read by its flow classes."""
    from memguard.hosts import families

    def forge_model(kind, **flags):
        unet = SimpleNamespace(model=SimpleNamespace(predictor=SimpleNamespace(prediction_type=kind)))
        return SimpleNamespace(forge_objects=SimpleNamespace(unet=unet), **flags)

    assert families.model_unscorable(forge_model("epsilon")) is None
    assert families.model_unscorable(forge_model("v_prediction")) is None
    assert families.model_unscorable(forge_model("const")) is families.FLOW
    assert families.model_unscorable(forge_model("const", use_distilled_cfg_scale=True)) is families.DISTILLED
    assert families.model_unscorable(SimpleNamespace(create_denoiser=lambda: None)) is families.FLOW
    assert families.model_unscorable(SimpleNamespace(parameterization="eps", is_sdxl=True)) is None

    class ModelSamplingDiscreteFlow:
        pass

    reforge = SimpleNamespace(model=SimpleNamespace(model_sampling=ModelSamplingDiscreteFlow()))
    assert families.model_unscorable(SimpleNamespace(forge_objects=SimpleNamespace(unet=reforge))) is families.FLOW
    assert families.infotext_value(families.FLOW.reason) == "not-applicable/flow-matching"
    assert families.infotext_value("the prediction was not finite (NaN or inf)") is None


# --- img2img ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def sd1_host(model_dir):
    fakehost.uninstall()
    fakeforge.uninstall()
    h = fakehost.boot(model_dir, extension_dirs=[str(ROOT)], api=True)
    yield h
    fakehost.uninstall()


def img2img_with_txt2img_scripts(**fields):
    """An img2img job run with txt2img's script runner and arguments, as ADetailer runs its inpainting passes."""
    from modules import processing, scripts

    pixels_in = (np.arange(side() * side() * 3) % 255).astype(np.uint8).reshape(side(), side(), 3)
    p = processing.StableDiffusionProcessingImg2Img(
        init_images=[Image.fromarray(pixels_in)],
        prompt="a red circle",
        width=side(),
        height=side(),
        steps=4,
        sampler_name="Euler",
        seed=3,
        batch_size=2,
        denoising_strength=0.6,
        do_not_save_samples=True,
        do_not_save_grid=True,
        **fields,
    )
    p.scripts = scripts.scripts_txt2img
    p.script_args = tuple(scripts.scripts_txt2img.default_script_args(None))
    with contextlib.closing(p):
        return processing.process_images(p)


def test_img2img_jobs_are_not_scored_and_not_changed(sd1_host):
    from modules import shared

    set_threshold(1e-9)
    watched = img2img_with_txt2img_scripts()
    assert_not_applicable(watched, "img2img", 2)
    shared.opts.memguard_action = "mitigate"
    mitigating = img2img_with_txt2img_scripts()
    assert_not_applicable(mitigating, "img2img", 2)
    shared.opts.memguard_watch = False
    plain = img2img_with_txt2img_scripts()
    assert "memguard-data" not in plain.comments
    for out in (watched, mitigating):
        assert all(np.array_equal(a, b) for a, b in zip(pixels(out), pixels(plain)))
    info = json.loads(watched.js())
    (reason,) = {r["reason"] for r in info["extra_generation_params"]["memguard"]["results"]}
    assert reason == "not applicable: img2img or inpainting"
