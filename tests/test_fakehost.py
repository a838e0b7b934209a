"""Self-tests of the A1111 1.10.1 test double in ``tests/fakehost``: it behaves as ``shared/research/a1111.md``
documents the host (the [verified] facts especially), with the tiny random model of ``conftest.py`` (or the model
directory named by ``FAKEHOST_MODEL_DIR``).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import fakehost
import pytest
import torch

SIZE = 8  # pixel-space tiny model: 3x8x8 samples


@pytest.fixture
def fresh():
    """A pristine fake host (new module objects, options, callbacks and caches) for each test."""
    fakehost.uninstall()
    modules = fakehost.install()
    yield modules
    fakehost.uninstall()


def boot(model_dir: Path, **kwargs):
    return fakehost.boot(model_dir, **kwargs)


def size(model_dir: Path) -> int:
    from modules import shared

    return int(shared.sd_model.model.diffusion_model.config.sample_size)


def make_p(host, **fields):
    from modules import shared

    side = int(shared.sd_model.model.diffusion_model.config.sample_size)
    defaults = dict(
        prompt="a cat",
        negative_prompt="",
        steps=3,
        batch_size=1,
        width=side,
        height=side,
        seed=1234,
        sampler_name="Euler",
    )
    return host.txt2img_processing(**{**defaults, **fields})


class Recorder:
    """Registers on_cfg_denoiser / on_cfg_denoised / on_cfg_after_cfg and keeps clones of what they saw."""

    def __init__(self) -> None:
        from modules import script_callbacks

        self.before: list[dict] = []
        self.after: list[dict] = []
        script_callbacks.on_cfg_denoiser(self.on_denoiser, name="recorder")
        script_callbacks.on_cfg_denoised(self.on_denoised, name="recorder")

    def on_denoiser(self, params) -> None:
        d = params.denoiser
        self.before.append(
            dict(
                x=params.x.clone(),
                sigma=params.sigma.clone(),
                image_cond=params.image_cond.clone(),
                text_cond=params.text_cond.clone(),
                text_uncond=params.text_uncond.clone(),
                sampling_step=params.sampling_step,
                total=params.total_sampling_steps,
                step=d.step,
                total_steps=d.total_steps,
                denoiser=d,
                is_hr_pass=d.p.is_hr_pass,
            )
        )

    def on_denoised(self, params) -> None:
        self.after.append(dict(x=params.x.clone(), sampling_step=params.sampling_step, inner_model=params.inner_model))


def unet_eps(x, t, cond):
    from modules import shared

    unet = shared.sd_model.model.diffusion_model
    return unet(x, t, encoder_hidden_states=cond).sample


# --------------------------------------------------------------------------------------------------------------
# CFG batch layout and what the callbacks see


def test_and_prompt_batch_layout(fresh, model_dir):
    host = boot(model_dir)
    rec = Recorder()
    p = make_p(host, prompt="a cat AND a dog:0.5", batch_size=2)
    processed = host.run_txt2img(p)
    first = rec.before[0]
    assert first["x"].shape[0] == 6 and first["text_cond"].shape[0] == 4 and first["text_uncond"].shape[0] == 2
    assert first["text_cond"].shape[1] == 77 and first["text_uncond"].shape[1] == 77
    x = first["x"]
    # rows: image 0 (cat, dog), image 1 (cat, dog), then the two uncond rows
    assert torch.equal(x[0], x[1]) and torch.equal(x[2], x[3])
    assert torch.equal(x[4], x[0]) and torch.equal(x[5], x[2])
    assert not torch.equal(x[0], x[2])
    cond = first["text_cond"]
    assert torch.equal(cond[0], cond[2]) and torch.equal(cond[1], cond[3]) and not torch.equal(cond[0], cond[1])
    from modules import prompt_parser, shared

    assert p.c is None and p.uc is None  # closing(p) cleared them after the generation, as in the host
    res_indexes, flat, _ = prompt_parser.get_multicond_prompt_list(["a cat AND a dog:0.5"])
    assert res_indexes == [[(0, 1.0), (1, 0.5)]] and list(flat) == [
        "a cat",
        " a dog",
    ]  # leading space kept, as in the host
    cat = shared.sd_model.get_learned_conditioning(["a cat"])[0]
    assert torch.allclose(cond[0], cat, atol=1e-6)
    assert len(processed.images) == 3 and processed.index_of_first_image == 1  # grid first


def test_kdiffusion_eps_recomputed_from_x_out(fresh, model_dir):
    host = boot(model_dir)
    rec = Recorder()
    host.run_txt2img(make_p(host, prompt="a red cube", negative_prompt="blurry", batch_size=2))
    first, out = rec.before[0], rec.after[0]
    x_in, sigma_in, x_out = first["x"], first["sigma"], out["x"]
    inner = first["denoiser"].inner_model
    assert hasattr(inner, "sigmas") and hasattr(inner, "sigma_to_t")
    c_in = 1 / (sigma_in**2 + 1) ** 0.5
    cond = torch.cat([first["text_cond"], first["text_uncond"]])
    with torch.no_grad():
        direct = unet_eps(x_in * c_in[:, None, None, None], inner.sigma_to_t(sigma_in), cond)
    recomputed = (x_in - x_out) / sigma_in[:, None, None, None]
    for i in range(2):
        for row in (i, 2 + i):  # cond row of image i, uncond row of image i
            assert torch.allclose(recomputed[row], direct[row], atol=1e-4, rtol=1e-4)
    # Wen's difference per image with the a1111.md row mapping
    n_cond = 2
    delta = [(x_out[n_cond + i] - x_out[i]) / sigma_in[i] for i in range(2)]
    for i in range(2):
        assert torch.allclose(delta[i], direct[i] - direct[n_cond + i], atol=1e-4, rtol=1e-4)
    assert float(sigma_in[0]) == pytest.approx(float(inner.sigmas[-1]), rel=1e-6)  # Euler starts at sigma_max


def test_ddim_x_out_is_eps_at_integer_timestep(fresh, model_dir):
    host = boot(model_dir)
    rec = Recorder()
    host.run_txt2img(make_p(host, sampler_name="DDIM", steps=20, batch_size=2))
    assert len(rec.before) == 19  # N - 1 model calls
    first, out = rec.before[0], rec.after[0]
    sigma = first["sigma"]
    assert torch.all(sigma == 951.0) and not hasattr(first["denoiser"].inner_model, "sigmas")
    from modules import sd_samplers_timesteps, shared

    assert isinstance(first["denoiser"], sd_samplers_timesteps.CFGDenoiserTimesteps)
    cond = torch.cat([first["text_cond"], first["text_uncond"]])
    with torch.no_grad():
        direct = unet_eps(first["x"], sigma, cond)
    assert torch.allclose(out["x"], direct, atol=1e-5)
    # memguard's own pipeline evaluates the same network output at the same first DDIM timestep
    mg = shared.sd_model.memguard_model
    assert int(mg.scheduler(20).timesteps[0]) == 951
    with torch.no_grad():
        eps = mg.eps(first["x"][:2], 951, first["text_cond"][:2])
    assert torch.allclose(eps, out["x"][:2], atol=1e-5)


def test_recompute_inside_on_cfg_denoiser_with_gradients(fresh, model_dir):
    """a1111.md section 2: calling params.denoiser.inner_model again reproduces x_out exactly, and a cloned cond
    with requires_grad gets gradients under enable_grad (sampling itself runs under no_grad)."""
    host = boot(model_dir)
    from modules import script_callbacks

    got = {}

    def measure(params):
        if params.denoiser.step != 0:
            return
        got["grad_enabled"] = torch.is_grad_enabled()
        d = params.denoiser
        c = params.text_cond.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            cond = {"c_crossattn": [torch.cat([c, params.text_uncond])], "c_concat": [params.image_cond]}
            out = d.inner_model(params.x, params.sigma, cond=cond)
            got["grad"] = torch.autograd.grad(out[: c.shape[0]].square().sum(), c)[0]
        got["recomputed"] = out.detach()

    script_callbacks.on_cfg_denoiser(measure)
    script_callbacks.on_cfg_denoised(lambda params: got.setdefault("x_out", params.x.clone()))
    host.run_txt2img(make_p(host, batch_size=2, negative_prompt="dark"))
    assert got["grad_enabled"] is False
    assert float((got["recomputed"] - got["x_out"]).abs().max()) == 0.0
    assert (got["grad"].abs().sum(dim=-1) > 0).all()  # every one of the 77 positions of both rows


def test_initial_noise_per_image_seed(fresh, model_dir):
    host = boot(model_dir)
    rec = Recorder()
    processed = host.run_txt2img(make_p(host, batch_size=3, seed=77))
    first = rec.before[0]
    side = size(model_dir)
    for i in range(3):
        g = torch.Generator("cpu").manual_seed(77 + i)
        noise = torch.randn((3, side, side), generator=g)
        assert torch.allclose(first["x"][i] / first["sigma"][i], noise, atol=1e-6)
    assert processed.all_seeds == [77, 78, 79] and processed.seed == 77


def test_batch_matches_single_image_with_ancestral_noise(fresh, model_dir):
    """Image i of a batch equals a single generation with seed + i, ancestral noise included (TorchHijack)."""
    from modules import scripts

    finals = []

    class Grab(scripts.Script):
        def title(self):
            return "grab"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def post_sample(self, p, ps, *args):
            finals.append(ps.samples.clone())

    host = boot(model_dir, script_classes=[Grab])
    host.run_txt2img(make_p(host, sampler_name="Euler a", batch_size=2, seed=5, steps=4))
    host.run_txt2img(make_p(host, sampler_name="Euler a", batch_size=1, seed=6, steps=4))
    assert torch.allclose(finals[0][1], finals[1][0], atol=1e-4)
    assert not torch.allclose(finals[0][0], finals[1][0], atol=1e-2)


def test_skip_early_cond_copies_cond_rows(fresh, model_dir):
    host = boot(model_dir)
    from modules import shared

    shared.opts.skip_early_cond = 0.4
    rec = Recorder()
    calls = []
    handle = shared.sd_model.model.diffusion_model.register_forward_hook(
        lambda module, args, output: calls.append(args[0].shape[0])
    )
    try:
        processed = host.run_txt2img(make_p(host, negative_prompt="ugly", batch_size=2, steps=5))
    finally:
        handle.remove()
    assert rec.before[0]["x"].shape[0] == 4  # the callback still sees the full batch
    out = rec.after[0]["x"]
    assert torch.equal(out[2], out[0]) and torch.equal(out[3], out[1])
    assert float((out[2:] - out[:2]).abs().max()) == 0.0
    assert calls[:3] == [2, 2, 2]  # steps 0..2 (step/total <= 0.4): cond rows only
    assert calls[3] == 4
    assert "Skip Early CFG: 0.4" in processed.infotexts[1]


def test_ngms_skips_odd_steps_below_sigma(fresh, model_dir):
    host = boot(model_dir)
    rec = Recorder()
    processed = host.run_txt2img(make_p(host, steps=6, s_min_uncond=100.0))
    outs = [r["x"] for r in rec.after]
    assert not torch.equal(outs[0][1], outs[0][0])  # step 0 is even: uncond evaluated
    assert torch.equal(outs[1][1], outs[1][0])  # step 1 odd, sigma < 100: skipped
    assert "NGMS: 100.0" in processed.infotexts[0]


def test_sampling_step_lags_one_call(fresh, model_dir):
    host = boot(model_dir)
    rec = Recorder()
    host.run_txt2img(make_p(host, steps=4))
    assert [r["sampling_step"] for r in rec.before] == [0, 0, 1, 2]
    assert [r["step"] for r in rec.before] == [0, 1, 2, 3]
    assert all(r["total"] == 4 and r["total_steps"] == 4 for r in rec.before)
    assert [r["sampling_step"] for r in rec.after] == [0, 0, 1, 2]


def test_hires_pass_resets_step_and_sets_flag(fresh, model_dir):
    host = boot(model_dir)
    rec = Recorder()
    side = size(model_dir)
    p = make_p(host, steps=3, enable_hr=True, hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.5)
    processed = host.run_txt2img(p)
    first_pass = [r for r in rec.before if not r["is_hr_pass"]]
    second_pass = [r for r in rec.before if r["is_hr_pass"]]
    assert [r["step"] for r in first_pass] == [0, 1, 2]
    assert [r["step"] for r in second_pass] == [0, 1]
    assert second_pass[0]["denoiser"] is not first_pass[0]["denoiser"]
    assert first_pass[0]["x"].shape[-1] == side and second_pass[0]["x"].shape[-1] == 2 * side
    assert second_pass[0]["sigma"][0] < first_pass[0]["sigma"][0]
    assert p.is_hr_pass is False  # reset at the end of sample_hr_pass
    assert processed.images[0].size == (2 * side, 2 * side)
    assert "Hires upscale: 2" in processed.info and "Denoising strength: 0.5" in processed.info


def test_long_prompt_takes_unequal_length_path(fresh, model_dir):
    host = boot(model_dir)
    from modules import shared

    prompt = " ".join(["a photo of a red cat"] * 16)
    chunks, _ = shared.sd_model.cond_stage_model.tokenize_line(prompt)
    assert len(chunks) == 2
    rec = Recorder()
    calls = []
    handle = shared.sd_model.model.diffusion_model.register_forward_hook(
        lambda m, args, kwargs, out: calls.append((args[0].shape[0], kwargs["encoder_hidden_states"].shape[1])),
        with_kwargs=True,
    )
    try:
        processed = host.run_txt2img(make_p(host, prompt=prompt, batch_size=2, steps=2))
        assert rec.before[0]["text_cond"].shape[1] == 154 and rec.before[0]["text_uncond"].shape[1] == 77
        assert calls[:2] == [(2, 154), (2, 77)]  # cond rows, then a separate uncond call
        assert rec.after[0]["x"].shape[0] == 4
        assert "Pad conds" not in processed.info
        calls.clear()
        shared.opts.pad_cond_uncond = True
        processed = host.run_txt2img(make_p(host, prompt=prompt, batch_size=2, steps=2))
        assert calls[0] == (4, 154)  # padded with the empty prompt's chunk: one batched call
        assert "Pad conds: True" in processed.info
    finally:
        handle.remove()


def test_batch_cond_uncond_off_slices_by_batch(fresh, model_dir):
    host = boot(model_dir)
    from modules import shared

    shared.opts.batch_cond_uncond = False
    calls = []
    handle = shared.sd_model.model.diffusion_model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        host.run_txt2img(make_p(host, batch_size=3, steps=1))
    finally:
        handle.remove()
    assert calls == [3, 3]


# --------------------------------------------------------------------------------------------------------------
# callbacks


def test_exception_in_callback_is_reported_and_generation_completes(fresh, model_dir):
    host = boot(model_dir)
    from modules import errors, script_callbacks

    def broken(params):
        raise ValueError("boom")

    script_callbacks.on_cfg_denoiser(broken)
    script_callbacks.on_cfg_denoised(broken)
    processed = host.run_txt2img(make_p(host, steps=2))
    assert len(processed.images) == 1
    messages = [r.message for r in errors.reported]
    assert any("cfg_denoiser_callback" in m for m in messages) and any("cfg_denoised_callback" in m for m in messages)
    assert all(isinstance(r.exception, ValueError) for r in errors.reported)
    assert len(errors.reported) == 4  # two callbacks x two steps


def test_substituting_text_cond_changes_the_output(fresh, model_dir):
    host = boot(model_dir)
    from modules import script_callbacks

    def grab():
        processed = host.run_txt2img(make_p(host, steps=3, seed=9, do_not_save_grid=True))
        import numpy as np

        return np.asarray(processed.images[0]).astype(int)

    base = grab()
    assert (grab() == base).all()  # deterministic for a seed

    def substitute(params):
        if params.denoiser.step == 0 and not params.denoiser.p.is_hr_pass:
            params.text_cond = params.text_cond * 0 + 3.0

    script_callbacks.on_cfg_denoiser(substitute)
    changed = grab()
    assert (changed != base).any()


def test_editing_after_callbacks(fresh, model_dir):
    """on_cfg_denoised is not read back (in-place edits work); on_cfg_after_cfg's params.x is."""
    host = boot(model_dir)
    from modules import script_callbacks

    seen = {}

    def replace_x(params):
        params.x = torch.zeros_like(params.x)  # rebinding is ignored by the host

    def after(params):
        seen.setdefault("denoised", params.x.clone())
        params.x = params.x * 0  # read back

    script_callbacks.on_cfg_denoised(replace_x)
    script_callbacks.on_cfg_after_cfg(after)
    processed = host.run_txt2img(make_p(host, steps=2))
    assert seen["denoised"].abs().max() > 0
    import numpy as np

    assert (np.asarray(processed.images[0]) == 127).all()  # x0 = 0 everywhere -> mid grey


def test_callback_registry(fresh, model_dir):
    boot(model_dir)
    from modules import script_callbacks

    class Owner:
        def cb(self, params):
            pass

    owner = Owner()
    script_callbacks.on_cfg_denoiser(owner.cb, name="mine")
    script_callbacks.on_cfg_denoiser(owner.cb, name="mine")
    names = [c.name for c in script_callbacks.callback_map["callbacks_cfg_denoiser"]]
    assert names == ["base/test_fakehost.py/cfg_denoiser/mine", "base/test_fakehost.py/cfg_denoiser/mine-1"]
    assert script_callbacks.count_callbacks("cfg_denoiser") == 2
    assert len(script_callbacks.ordered_callbacks("cfg_denoiser")) == 2
    script_callbacks.remove_callbacks_for_function(owner.cb)  # bound methods compare equal
    assert script_callbacks.count_callbacks("cfg_denoiser") == 0
    assert script_callbacks.ordered_callbacks("cfg_denoiser") == []
    script_callbacks.on_ui_settings(lambda: None)
    script_callbacks.on_image_saved(lambda params: None)
    script_callbacks.remove_current_script_callbacks()
    assert script_callbacks.count_callbacks("ui_settings") == 0 and script_callbacks.count_callbacks("image_saved") == 0
    script_callbacks.on_model_loaded(lambda m: None)
    script_callbacks.clear_callbacks()
    assert sum(script_callbacks.count_callbacks().values()) == 0


def test_extension_loading_order_and_callbacks(fresh, model_dir, tmp_path):
    ext = tmp_path / "extensions" / "memtest"
    (ext / "scripts").mkdir(parents=True)
    (ext / "memtest_lib.py").write_text("VALUE = 42\n")
    (ext / "scripts" / "memtest.py").write_text(
        textwrap.dedent(
            """
            import memtest_lib
            import modules.scripts as scripts
            from modules import script_callbacks, shared

            EVENTS = []
            script_callbacks.on_model_loaded(
                lambda m: EVENTS.append(("model_loaded", shared.sd_model.cond_stage_model_empty_prompt)))
            script_callbacks.on_ui_settings(lambda: (EVENTS.append(("ui_settings",)), shared.opts.add_option(
                "memtest_threshold", shared.OptionInfo(2.5, "Threshold", section=("memtest", "Memtest")))))
            script_callbacks.on_ui_tabs(lambda: EVENTS.append(("ui_tabs",)) or [("blocks", "Memtest", "memtest")])
            script_callbacks.on_app_started(lambda demo, app: EVENTS.append(("app_started", demo is None)))
            script_callbacks.on_cfg_denoiser(lambda params: None, name="watch")

            class MemTest(scripts.Script):
                calls = []

                def title(self):
                    return "MemTest"

                def show(self, is_img2img):
                    return scripts.AlwaysVisible

                def ui(self, is_img2img):
                    from modules.builtin_scripts import Control

                    MemTest.calls.append(is_img2img)
                    return [Control(value=1, label="level")]
            """
        )
    )
    host = boot(model_dir, extension_dirs=[str(ext)], api=True)
    from modules import script_callbacks, scripts, shared

    script = next(s for s in scripts.scripts_txt2img.alwayson_scripts if s.title() == "MemTest")
    module_events = type(script).__module__
    assert module_events == "memtest.py"  # loaded by path, not as a package module
    recorded = script_callbacks.callback_map["callbacks_model_loaded"][0].callback.__globals__["EVENTS"]
    assert [e[0] for e in recorded] == ["model_loaded", "ui_settings", "ui_tabs", "app_started"]
    assert recorded[0][1] is None  # on_model_loaded fires before the empty-prompt cond is computed
    assert recorded[-1] == ("app_started", False)
    assert host.demo.tabs == [("blocks", "Memtest", "memtest")]
    assert shared.opts.memtest_threshold == 2.5
    names = [c.name for c in script_callbacks.callback_map["callbacks_cfg_denoiser"]]
    assert names == ["memtest/memtest.py/cfg_denoiser/watch"]
    assert type(script).calls == [
        False,
        True,
        False,
        False,
        True,
        True,
    ]  # UI (txt2img, img2img), then twice per tab for the API defaults
    assert "memtest_lib" in __import__("sys").modules  # imported while the extension dir was on sys.path
    assert str(ext) not in __import__("sys").path


def test_nowebui_app_started_gets_no_demo(fresh, model_dir, tmp_path):
    from modules import script_callbacks

    seen = []
    script_callbacks.on_app_started(lambda demo, app: seen.append(demo))  # cleared by load_scripts, as in the host
    host = boot(model_dir, nowebui=True)
    assert seen == [] and host.demo is None and host.api is not None


# --------------------------------------------------------------------------------------------------------------
# scripts, processing, infotext, API


def _scripts(modules_scripts, log):
    class Dropdown(modules_scripts.Script):
        def title(self):
            return "Memguard Test"

        def ui(self, is_img2img):
            from modules.builtin_scripts import Control

            return [Control(value=False, label="force"), Control(value=2.5, label="threshold")]

        def process(self, p, *args):
            log.append(("dropdown.process", args))

        def run(self, p, force, threshold):
            from modules import processing

            log.append(("run", force, threshold, p.scripts is not None))
            p.comment("memguard: checked")
            p.extra_generation_params["Memguard threshold"] = threshold
            return processing.process_images(p)

    class Always(modules_scripts.Script):
        def title(self):
            return "Always"

        def show(self, is_img2img):
            return modules_scripts.AlwaysVisible

        def ui(self, is_img2img):
            from modules.builtin_scripts import Control

            return [Control(value=1, label="level")]

        def before_process(self, p, level):
            log.append(("before_process", level))

        def process(self, p, level):
            log.append(("process", level))
            p.extra_generation_params["Memguard score"] = lambda p=None, index=0, **kw: f"{index}:{p.all_seeds[index]}"
            p.extra_generation_params["Memguard list"] = [f"item{i}" for i in range(p.batch_size * p.n_iter)]
            p.extra_generation_params["Memguard text"] = "a, b"

        def before_process_batch(self, p, level, **kwargs):
            log.append(("before_process_batch", kwargs["batch_number"]))

        def process_batch(self, p, level, **kwargs):
            log.append(("process_batch", kwargs["batch_number"], list(kwargs["seeds"])))

        def postprocess_image(self, p, pp, level):
            log.append(("postprocess_image", p.batch_index))

        def postprocess(self, p, processed, level):
            log.append(("postprocess", len(processed.images)))

    return Dropdown, Always


def test_dropdown_script_and_alwayson_hooks(fresh, model_dir):
    from modules import scripts

    log: list = []
    host = boot(model_dir, script_classes=list(_scripts(scripts, log)))
    runner = scripts.scripts_txt2img
    dropdown = next(s for s in runner.selectable_scripts if s.title() == "Memguard Test")
    always = next(s for s in runner.alwayson_scripts if s.title() == "Always")
    assert runner.titles[:3] == ["Prompt matrix", "Prompts from file or textbox", "X/Y/Z plot"]
    assert runner.titles.index("Memguard Test") + 1 == 4  # the dropdown index the UI sends
    assert always.args_from == 1 and always.args_to == 2  # AlwaysVisible controls first
    assert dropdown.args_from > 1 + 5 + 4 + 18 and dropdown.args_to == dropdown.args_from + 2
    p = make_p(host, batch_size=2, n_iter=2, script_title="Memguard Test", script_args={dropdown.args_from: True})
    processed = host.run_txt2img(p)
    assert ("run", True, 2.5, True) in log
    assert not any(e[0] == "dropdown.process" for e in log)  # a dropdown script gets only run()
    order = [e[0] for e in log]
    assert order[:3] == ["run", "before_process", "process"]
    assert order.count("process_batch") == 2 and order.count("postprocess_image") == 4 and order[-1] == "postprocess"
    assert processed.comments == "memguard: checked\n"
    info = json.loads(processed.js())
    assert "comments" not in info and info["extra_generation_params"]["Memguard threshold"] == 2.5
    texts = processed.infotexts[1:]  # grid first
    assert len(texts) == 4
    for i, text in enumerate(texts):
        # process_images_inner passes the index *within the batch* (not the job-wide index that the host's
        # create_infotext docstring and a1111.md describe): with n_iter 2, images 2 and 3 get index 0 and 1
        index = i % 2
        assert f'Memguard score: "{index}:{1234 + index}"' in text
        assert f"Memguard list: item{index}" in text
        assert f"Seed: {1234 + i}" in text
        assert 'Memguard text: "a, b"' in text and "Memguard threshold: 2.5" in text


def test_api_script_args_mapping(fresh, model_dir):
    from modules import scripts

    log: list = []
    host = boot(model_dir, script_classes=list(_scripts(scripts, log)), api=True)
    from modules.api.api import HTTPException

    side = size(model_dir)
    dropdown = next(s for s in scripts.scripts_txt2img.selectable_scripts if s.title() == "Memguard Test")
    defaults = host.api.default_script_arg_txt2img
    assert defaults[0] == 0 and defaults[dropdown.args_from : dropdown.args_to] == [False, 2.5]
    request = {
        "prompt": "a cat",
        "steps": 2,
        "width": side,
        "height": side,
        "seed": 3,
        "script_name": "memguard test",
        "script_args": [True, 7.0],
        "alwayson_scripts": {"Always": {"args": [5, "ignored"]}},
    }
    response = host.api.text2imgapi(request)
    assert ("run", True, 7.0, True) in log and ("process", 5) in log
    info = json.loads(response.info)
    assert "comments" not in info and info["extra_generation_params"]["Memguard threshold"] == 7.0
    assert info["sampler_name"] == "Euler" and len(response.images) == 1  # API default sampler_index "Euler"
    with pytest.raises(HTTPException) as err:
        host.api.text2imgapi({**request, "script_name": "nope"})
    assert err.value.status_code == 422
    with pytest.raises(HTTPException) as err:
        host.api.text2imgapi({**request, "alwayson_scripts": {"memguard test": {"args": []}}})
    assert err.value.status_code == 422
    assert "memguard test" in host.api.get_scripts_list()["txt2img"]


def test_infotext_roundtrip_and_paste_callback(fresh, model_dir):
    host = boot(model_dir)
    from modules import infotext_utils, script_callbacks

    def pasted(text, params):
        params["Memguard pasted"] = params.get("Memguard score", "")

    script_callbacks.on_infotext_pasted(pasted)
    p = make_p(host, negative_prompt="blurry, dark", sampler_name="DPM++ 2M", steps=3, cfg_scale=5.5)
    p.extra_generation_params["Memguard score"] = "1.5: flagged"
    processed = host.run_txt2img(p)
    text = processed.infotexts[0]
    assert "Schedule type: Karras" in text and 'Memguard score: "1.5: flagged"' in text
    params, values = infotext_utils.paste_infotext(text, [(None, "Memguard score"), (None, lambda d: d["Steps"])])
    assert params["Prompt"] == "a cat" and params["Negative prompt"] == "blurry, dark"
    assert params["Steps"] == "3" and params["Sampler"] == "DPM++ 2M" and params["CFG scale"] == "5.5"
    assert params["Size-1"] == str(p.width) and params["Seed"] == "1234" and params["Clip skip"] == "1"
    assert params["Memguard score"] == "1.5: flagged" and params["Memguard pasted"] == "1.5: flagged"
    assert values == ["1.5: flagged", "3"]


def test_override_settings_are_restored(fresh, model_dir):
    host = boot(model_dir)
    from modules import shared

    seen = []
    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(lambda params: seen.append(shared.opts.CLIP_stop_at_last_layers))
    processed = host.run_txt2img(make_p(host, steps=1, override_settings={"CLIP_stop_at_last_layers": 2}))
    assert seen == [2] and shared.opts.CLIP_stop_at_last_layers == 1
    assert "Clip skip: 2" in processed.info


def test_cond_cache_is_shared_across_generations(fresh, model_dir):
    host = boot(model_dir)
    from modules import processing, shared

    calls = []
    original = shared.sd_model.get_learned_conditioning
    shared.sd_model.get_learned_conditioning = lambda texts: calls.append(list(texts)) or original(texts)
    rec = Recorder()
    host.run_txt2img(make_p(host, prompt="a cat", negative_prompt="x"))
    host.run_txt2img(make_p(host, prompt="a cat", negative_prompt="x", seed=2))
    assert calls == [["x"], ["a cat"]]  # computed once (persistent_cond_cache), negative first
    cached = processing.StableDiffusionProcessing.cached_c[1].batch[0][0].schedules[0].cond
    assert torch.equal(rec.before[0]["text_cond"][0], cached)


def test_interrupt_stops_sampling(fresh, model_dir):
    host = boot(model_dir)
    from modules import script_callbacks, shared

    steps = []

    def interrupt(params):
        steps.append(params.denoiser.step)
        if params.denoiser.step == 1:
            shared.state.interrupt()

    script_callbacks.on_cfg_denoiser(interrupt)
    processed = host.run_txt2img(make_p(host, steps=6, batch_size=2, n_iter=2))
    assert steps == [0, 1]  # raised at the next denoiser call; the second batch never starts
    assert len(processed.images) == 3  # grid + the two images of batch 1 (from last_latent)


def test_prompt_editing_schedules_follow_denoiser_step(fresh, model_dir):
    host = boot(model_dir)
    from modules import prompt_parser, shared

    g = lambda text, steps=10: prompt_parser.get_learned_conditioning_prompt_schedules([text], steps)[0]  # noqa: E731
    assert g("a [b:3]") == [[3, "a "], [10, "a b"]]
    assert g("a [b : c : 1] d") == [[1, "a b  d"], [10, "a  c  d"]]
    assert g("a[b:[c:d:2]:1]e") == [[1, "abe"], [2, "ace"], [10, "ade"]]
    assert g("a [unbalanced") == [[10, "a [unbalanced"]]
    assert g("a [b:.5] c") == [[5, "a  c"], [10, "a b c"]]
    assert g("((a][:b:c [d:3]") == [[3, "((a][:b:c "], [10, "((a][:b:c d"]]
    assert g("[fe|||]male") == [
        [1, "female"],
        [2, "male"],
        [3, "male"],
        [4, "male"],
        [5, "female"],
        [6, "male"],
        [7, "male"],
        [8, "male"],
        [9, "female"],
        [10, "male"],
    ]
    assert g("[(a:2):3]") == [[3, ""], [10, "(a:2)"]]
    assert prompt_parser.get_learned_conditioning_prompt_schedules(["a [b:1.5] c"], 10, 10)[0] == [
        [5, "a  c"],
        [10, "a b c"],
    ]
    rec = Recorder()
    host.run_txt2img(make_p(host, prompt="a [dog:cat:2]", steps=4))
    dog = shared.sd_model.get_learned_conditioning(["a dog"])[0]
    cat = shared.sd_model.get_learned_conditioning(["a cat"])[0]
    used = [r["text_cond"][0] for r in rec.before]
    assert [torch.allclose(c, dog, atol=1e-6) for c in used] == [True, True, True, False]
    assert torch.allclose(used[3], cat, atol=1e-6)


def test_parse_prompt_attention_and_emphasis(fresh, model_dir):
    boot(model_dir)
    from modules import prompt_parser, shared

    p = prompt_parser.parse_prompt_attention
    assert p("an (important) word") == [["an ", 1.0], ["important", 1.1], [" word", 1.0]]
    assert p("(unbalanced") == [["unbalanced", 1.1]]
    assert p("\\(literal\\]") == [["(literal]", 1.0]]
    assert p("(unnecessary)(parens)") == [["unnecessaryparens", 1.1]]
    assert p("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == [
        ["a ", 1.0],
        ["house", pytest.approx(1.573)],
        [" ", 1.1],
        ["on", 1.0],
        [" a ", 1.1],
        ["hill", 0.55],
        [", sun, ", 1.1],
        ["sky", pytest.approx(1.4641)],
        [".", 1.1],
    ]
    assert p("a BREAK b") == [["a", 1.0], ["BREAK", -1], ["b", 1.0]]
    model = shared.sd_model.cond_stage_model
    chunks, _ = model.tokenize_line("a BREAK b")
    assert len(chunks) == 2 and all(len(c.tokens) == 77 for c in chunks)
    assert chunks[0].tokens[0] == model.id_start and chunks[0].tokens[2:] == [model.id_end] * 75
    plain = model(["a cat"])
    weighted = model(["a (cat:1.5)"])
    chunk, _ = model.tokenize_line("a (cat:1.5)")
    mult = torch.tensor(chunk[0].multipliers)
    assert mult[2] == 1.5 and mult[1] == 1.0
    raw = shared.sd_model.memguard_model.text_encoder(input_ids=torch.tensor([chunk[0].tokens])).last_hidden_state
    expected = raw * mult[None, :, None]
    expected = expected * (raw.mean() / expected.mean())
    assert torch.allclose(weighted, expected, atol=1e-5) and not torch.allclose(weighted, plain)


def test_comma_backtrack_moves_words_to_next_chunk(fresh, model_dir):
    boot(model_dir)
    from modules import shared

    model = shared.sd_model.cond_stage_model
    words = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks, count = model.tokenize_line(words)
    first = chunks[0].tokens
    assert first[71] == model.comma_token and first[72:] == [model.id_end] * 5  # cut after the comma
    assert chunks[1].tokens[1:11] == model.tokenize(["dog"])[0] * 10
    shared.opts.comma_padding_backtrack = 0
    chunks, _ = model.tokenize_line(words)
    assert chunks[0].tokens[-2] != model.id_end


def test_options_api(fresh, model_dir):
    boot(model_dir)
    from modules import shared

    opts = shared.opts
    assert (opts.skip_early_cond, opts.s_min_uncond, opts.s_min_uncond_all) == (0.0, 0.0, False)
    assert (opts.pad_cond_uncond, opts.pad_cond_uncond_v0, opts.batch_cond_uncond) == (False, False, True)
    assert (opts.persistent_cond_cache, opts.comma_padding_backtrack, opts.emphasis, opts.CLIP_stop_at_last_layers) == (
        True,
        20,
        "Original",
        1,
    )
    with pytest.raises(AttributeError):
        _ = opts.memguard_unknown
    opts.add_option(
        "memguard_threshold",
        shared.OptionInfo(2.5, "Threshold", "Slider", {"minimum": 0}, section=("memguard", "Memguard")).info("hint"),
    )
    assert opts.memguard_threshold == 2.5 and opts.data["memguard_threshold"] == 2.5
    assert opts.set("memguard_threshold", 3.0) is True and opts.set("memguard_threshold", 3.0) is False
    assert getattr(opts, "memguard_missing", "default") == "default"
    assert shared.cmd_opts.api_auth is None and shared.cmd_opts.nowebui is False
    state = shared.state
    state.interrupt()
    state.skip()
    assert state.interrupted and state.skipped
    state.begin()
    assert not state.interrupted and not state.skipped and state.job_count == -1


def test_model_object_like_ldm(fresh, model_dir):
    boot(model_dir)
    from modules import shared

    m = shared.sd_model
    assert m.parameterization == "eps" and m.alphas_cumprod.shape == (1000,)
    assert m.sd_checkpoint_info.shorthash == m.sd_model_hash == m.memguard_model.model_hash
    assert m.cond_stage_model_empty_prompt.shape[:2] == (1, 77)
    assert any(name.endswith("attn2.to_k") for name, _ in m.model.diffusion_model.named_modules())
    x = torch.randn(2, 3, size(model_dir), size(model_dir))
    cond = {"c_crossattn": [m.cond_stage_model_empty_prompt.expand(2, -1, -1)], "c_concat": [torch.zeros(2, 5, 1, 1)]}
    out = m.apply_model(x, torch.tensor([500.0, 500.0]), cond)
    assert out.shape == x.shape


def test_unet_has_ldms_top_level_blocks(fresh, model_dir):
    """``model.diffusion_model`` is ldm's ``UNetModel`` to extensions: ``input_blocks`` (the input convolution, a block
    per residual block of each level, a downsampler after every level but the last), ``middle_block``,
    ``output_blocks`` (one more residual block per level than the input side), holding every residual block, spatial
    transformer and resampler of the network exactly once."""
    from memguard.mitigate.embedding import LAYERS, checkpoint_units

    boot(model_dir)
    from modules import shared

    unet = shared.sd_model.model.diffusion_model
    levels, per = len(unet.config.block_out_channels), unet.config.layers_per_block
    assert type(unet).__name__ == "UNetModel"
    assert len(unet.input_blocks) == 1 + levels * per + levels - 1 and len(unet.output_blocks) == levels * (per + 1)
    assert unet.input_blocks[0][0] is unet.conv_in
    blocks = [*unet.input_blocks[1:], unet.middle_block, *unet.output_blocks]
    layers = checkpoint_units(blocks, "layers")
    assert all(m in layers for block in blocks for m in block)  # nothing but layers in the blocks
    every = [m for m in unet.modules() if type(m).__name__ in LAYERS]
    assert sorted(map(id, layers)) == sorted(map(id, every))


def test_unknown_host_sampler_is_refused(fresh, model_dir):
    host = boot(model_dir)
    with pytest.raises(NotImplementedError):
        host.run_txt2img(make_p(host, sampler_name="DPM++ SDE"))


def test_txt2img_batch_of_four_runs_one_cfg_batch_per_step(fresh, model_dir):
    """Six steps of DPM++ 2M on four images: six denoiser calls, each one UNet call on the 8 rows of the CFG batch
    (4 conditional, 4 unconditional), counted on the network itself."""
    from modules import shared

    host = boot(model_dir)
    rec = Recorder()
    rows: list[int] = []
    unet = shared.sd_model.model.diffusion_model
    hook = unet.register_forward_pre_hook(lambda _module, args: rows.append(args[0].shape[0]))
    try:
        processed = host.run_txt2img(
            make_p(host, batch_size=4, steps=6, sampler_name="DPM++ 2M", negative_prompt="blurry")
        )
    finally:
        hook.remove()
    assert len(rec.before) == 6 and rec.before[0]["x"].shape[0] == 8
    assert rows == [8] * 6
    assert len(processed.images) == 5 and len(processed.infotexts) == 5
    assert processed.images[1].info["parameters"] == processed.infotexts[1]


def test_image_save_callbacks_and_elem_id(fresh, model_dir):
    from modules import scripts

    log: list = []
    host = boot(model_dir, script_classes=list(_scripts(scripts, log)))
    from modules import script_callbacks

    saved = []
    script_callbacks.on_before_image_saved(lambda params: saved.append(("before", params.pnginfo.get("parameters"))))
    script_callbacks.on_image_saved(lambda params: saved.append(("after", os.path.exists(params.filename))))
    processed = host.run_txt2img(make_p(host, batch_size=2))
    assert saved[0] == ("before", processed.infotexts[1]) and saved[1] == ("after", True)
    assert len(saved) == 6  # two images and the grid
    dropdown = next(s for s in scripts.scripts_txt2img.selectable_scripts if s.title() == "Memguard Test")
    assert dropdown.elem_id("threshold") == "script_txt2img_memguard_test_threshold"
    assert dropdown.name == "memguard test" and dropdown.api_info.args[1].value == 2.5
