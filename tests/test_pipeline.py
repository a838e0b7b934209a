"""The diffusers pipeline against a straightforward DDIM + CFG loop written here, on the tiny random model."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from diffusers import DDIMScheduler

from memguard.algebra import eps_from_x0
from memguard.pipeline import Model, positions_kept, sample, score

PROMPT = "a photo of a cat"


def _text(model: Model, prompt: str) -> torch.Tensor:
    ids = model.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model.text_encoder(input_ids=ids.input_ids).last_hidden_state


def _scheduler(model_dir, steps):
    config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    return scheduler


def _alphas_cumprod() -> torch.Tensor:
    """SD1's scaled-linear schedule, written out (beta from 0.00085 to 0.012 over 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


@torch.no_grad()
def plain_loop(model: Model, model_dir, prompt, seed, *, steps=10, guidance=7.5, negative="", n_scores=1):
    """DDIM with classifier-free guidance as in the diffusers pipeline; ``d_t`` against the empty prompt."""
    scheduler = _scheduler(model_dir, steps)
    cond, empty, neg = _text(model, prompt), _text(model, ""), _text(model, negative)
    gen = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn((1, 3, 8, 8), generator=gen) * scheduler.init_noise_sigma
    ds = []
    for step, t in enumerate(scheduler.timesteps):
        out = model.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([cond, neg])).sample
        eps_c, eps_n = out.chunk(2)
        eps_e = eps_n if negative == "" else model.unet(x, t, encoder_hidden_states=empty).sample
        if step < n_scores:
            ds.append(float((eps_c - eps_e).flatten().norm()))
        x = scheduler.step(eps_n + guidance * (eps_c - eps_n), t, x).prev_sample
    return ds, x


@pytest.mark.parametrize("seed", [0, 5])
def test_sample_matches_plain_ddim_loop(tiny, tiny_dir, seed):
    (gen,) = sample(tiny, PROMPT, [seed], steps=10, guidance=7.5, threshold=None)
    ds, x = plain_loop(tiny, tiny_dir, PROMPT, seed, steps=10, guidance=7.5)
    assert gen.detection.score == pytest.approx(ds[0], rel=1e-5)
    assert gen.detection.flagged is False and gen.detection.threshold is None
    assert gen.detection.extra_pass is False
    assert gen.trajectory[0] == pytest.approx(ds[0], rel=1e-5)
    assert gen.image.shape == (3, 8, 8)
    assert torch.allclose(gen.image, x[0].clamp(-1, 1), atol=1e-5, rtol=0)
    assert torch.allclose(gen.latent, x[0], atol=1e-5, rtol=1e-6)
    assert gen.mitigation is None


def test_sample_batch_seeds_are_independent(tiny):
    both = sample(tiny, PROMPT, [3, 4], steps=4, threshold=None)
    alone = sample(tiny, PROMPT, [4], steps=4, threshold=None)
    assert both[1].detection.score == pytest.approx(alone[0].detection.score, rel=1e-5)
    # batch of 2 and batch of 1 are different kernels: equal up to float rounding, amplified by the random model
    assert torch.allclose(both[1].latent, alone[0].latent, atol=1e-4, rtol=1e-5)
    assert both[0].detection.score != pytest.approx(both[1].detection.score, rel=1e-3)


def test_sample_threshold_flags(tiny):
    (base,) = sample(tiny, PROMPT, [0], steps=2, threshold=None, stop_after=1)
    s = base.detection.score
    (low,) = sample(tiny, PROMPT, [0], steps=2, threshold=s * 0.99, stop_after=1)
    (high,) = sample(tiny, PROMPT, [0], steps=2, threshold=s * 1.01, stop_after=1)
    assert low.detection.flagged and not high.detection.flagged
    assert low.image is None and low.latent is None  # stop_after: no image


def test_score_steps_average(tiny, tiny_dir):
    (gen,) = sample(tiny, PROMPT, [2], steps=10, threshold=None, score_steps=3)
    ds, _ = plain_loop(tiny, tiny_dir, PROMPT, 2, steps=10, n_scores=3)
    assert gen.detection.steps == 3
    assert gen.detection.score == pytest.approx(sum(ds) / 3, rel=1e-5)
    assert gen.trajectory[:3] == pytest.approx(ds, rel=1e-5)


def test_score_function_matches_sample(tiny):
    dets = score(tiny, PROMPT, [0, 1], steps=10)
    gens = sample(tiny, PROMPT, [0, 1], steps=10, threshold=None)
    assert [d.score for d in dets] == pytest.approx([g.detection.score for g in gens], rel=1e-6)


def test_negative_prompt_scores_against_empty(tiny, tiny_dir):
    (plain,) = sample(tiny, PROMPT, [1], steps=10, negative="")
    (neg,) = sample(tiny, PROMPT, [1], steps=10, negative="blurry")
    assert plain.detection.extra_pass is False
    assert neg.detection.extra_pass is True
    assert neg.detection.score == pytest.approx(plain.detection.score, rel=1e-5)
    # but the sampled image follows the negative prompt
    ds, x = plain_loop(tiny, tiny_dir, PROMPT, 1, steps=10, negative="blurry")
    assert neg.detection.score == pytest.approx(ds[0], rel=1e-5)
    assert torch.allclose(neg.image, x[0].clamp(-1, 1), atol=1e-5)
    assert not torch.allclose(neg.image, plain.image, atol=1e-3)


def test_negative_prompt_score_steps_use_empty_reference(tiny, tiny_dir):
    (gen,) = sample(tiny, PROMPT, [2], steps=10, negative="blurry", threshold=None, score_steps=3)
    ds, _ = plain_loop(tiny, tiny_dir, PROMPT, 2, steps=10, negative="blurry", n_scores=3)
    assert gen.detection.score == pytest.approx(sum(ds) / 3, rel=1e-5)


def test_long_prompt_two_chunks_runs(tiny):
    prompt = " ".join(["red cat"] * 50)  # 100 tokens: two chunks, the empty prompt has one
    tok = tiny.tokenize(prompt)
    assert tok.n_chunks == 2
    assert tiny.encode(tok).shape == (1, 154, 32)
    (gen,) = sample(tiny, prompt, [0], steps=3, threshold=None)
    # d is the norm of eps(cond) - eps(empty), each chunked context evaluated on its own
    x = tiny.noise(0)
    t = tiny.scheduler(3).timesteps[0]
    with torch.no_grad():
        d = (tiny.eps(x, t, tiny.encode(tok)) - tiny.eps(x, t, tiny.empty())).flatten().norm()
    assert gen.detection.score == pytest.approx(float(d), rel=1e-5)


def test_positions_kept():
    from memguard.tokens import load_tokenizer, tokenize

    tk = load_tokenizer()
    tok = tokenize(tk, "a photo of a cat")
    assert positions_kept(tok) == [0, 1, 2, 3, 4, 5, 6]
    tok = tokenize(tk, " ".join(["cat"] * 80))
    assert positions_kept(tok) == [*range(77), *range(77, 77 + 7)]


def test_v_prediction_eps_by_hand(tmp_path):
    from tiny_model import build_tiny_model

    model = Model.load(build_tiny_model(tmp_path / "v", prediction_type="v_prediction"))
    assert model.prediction_type == "v_prediction"
    abar_all = _alphas_cumprod()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    cond = torch.cat([model.encode(model.tokenize(PROMPT)), model.empty()])
    for t in (981, 500, 21):
        with torch.no_grad():
            v = model.unet(x, t, encoder_hidden_states=cond).sample
            got = model.eps(x, t, cond)
        abar = float(abar_all[t])
        expected = math.sqrt(abar) * v + math.sqrt(1 - abar) * x
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, v, atol=1e-3)


def test_v_prediction_sample_matches_diffusers_v_scheduler(tmp_path):
    """DDIM on eps converted from v equals diffusers' own DDIM with ``prediction_type="v_prediction"``."""
    from tiny_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "v", prediction_type="v_prediction")
    model = Model.load(model_dir)
    (gen,) = sample(model, PROMPT, [7], steps=6, guidance=5.0, threshold=None)
    scheduler = _scheduler(model_dir, 6)
    assert scheduler.config.prediction_type == "v_prediction"
    cond, empty = _text(model, PROMPT), _text(model, "")
    x = torch.randn((1, 3, 8, 8), generator=torch.Generator("cpu").manual_seed(7)) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            v_c, v_u = model.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([cond, empty])).sample.chunk(2)
            x = scheduler.step(v_u + 5.0 * (v_c - v_u), t, x).prev_sample
    assert torch.allclose(gen.image, x[0].clamp(-1, 1), atol=1e-4, rtol=0)


def test_k_diffusion_eps_from_x0_matches_direct_eps(tiny):
    abar_all = _alphas_cumprod()
    x_t = tiny.noise(11)
    cond = tiny.encode(tiny.tokenize(PROMPT))
    for t in (961, 601, 101):
        with torch.no_grad():
            eps = tiny.eps(x_t, t, cond).double()
        abar = float(abar_all[t])
        x0 = (x_t.double() - math.sqrt(1 - abar) * eps) / math.sqrt(abar)  # what a k-diffusion denoiser returns
        x_k = x_t.double() / math.sqrt(abar)
        sigma = math.sqrt((1 - abar) / abar)
        assert torch.allclose(eps_from_x0(x_k, x0, sigma), eps, atol=1e-6, rtol=1e-6)


def test_model_abar_matches_schedule(tiny):
    abar_all = _alphas_cumprod()
    for t in (0, 1, 500, 999):
        assert float(tiny.abar(t)) == pytest.approx(float(abar_all[t]), rel=1e-5)


def test_noise_is_the_schedules_scale_times_randn(tiny):
    """``x_T`` bit for bit as a new scheduler per seed gave it: ``init_noise_sigma * randn`` of the seed's generator."""
    sigma = DDIMScheduler.from_config({**tiny.scheduler_config, "prediction_type": "epsilon"}).init_noise_sigma
    for seed in (0, 1, 7, 12345, 2**31 - 1):
        gen = torch.Generator("cpu").manual_seed(seed)
        assert torch.equal(tiny.noise(seed), torch.randn((1, *tiny.latent_shape), generator=gen) * sigma)


def test_schedule_is_built_once_until_its_configuration_changes(tiny_dir, monkeypatch):
    model = Model.load(tiny_dir)
    built = []
    construct = DDIMScheduler.__init__

    @functools.wraps(construct)  # keeps the signature diffusers' ``from_config`` reads
    def counted(self, *args, **kwargs):
        built.append(1)
        construct(self, *args, **kwargs)

    monkeypatch.setattr(DDIMScheduler, "__init__", counted)
    noise = [model.noise(seed) for seed in range(6)]
    abar = float(model.abar(999))
    assert len(built) == 1
    model.scheduler_config["beta_end"] = 0.02  # changed in place: the schedule is rebuilt from the new one
    assert float(model.abar(999)) < abar
    assert len(built) == 2
    model.scheduler_config = {**model.scheduler_config, "beta_end": 0.012}  # replaced: back to the first schedule
    assert float(model.abar(999)) == pytest.approx(abar)
    assert torch.equal(torch.cat([model.noise(seed) for seed in range(6)]), torch.cat(noise))
    assert len(built) == 3


def test_empty_embedding_is_encoded_empty_prompt(tiny):
    assert torch.allclose(tiny.empty(), _text(tiny, ""), atol=1e-6)
    assert torch.allclose(tiny.encode(tiny.tokenize(PROMPT)), _text(tiny, PROMPT), atol=1e-6)


def test_watch_false_samples_the_same_image_unscored(tiny):
    (watched,) = sample(tiny, PROMPT, [4], steps=5, threshold=None)
    (plain,) = sample(tiny, PROMPT, [4], steps=5, threshold=0.0, watch=False, strategy=None)
    assert torch.equal(watched.image, plain.image)
    assert plain.detection.score is None and not plain.detection.flagged and plain.detection.reason


def test_one_prompt_per_seed(tiny):
    prompts = [PROMPT, "a red dog on the grass"]
    both = sample(tiny, prompts, [0, 1], steps=4, threshold=None)
    assert [g.prompt for g in both] == prompts
    for g, prompt, seed in zip(both, prompts, [0, 1]):
        (alone,) = sample(tiny, prompt, [seed], steps=4, threshold=None)
        assert g.detection.score == pytest.approx(alone.detection.score, rel=1e-5)
    with pytest.raises(ValueError):
        sample(tiny, [PROMPT], [0, 1], steps=2)
    with pytest.raises(ValueError):
        sample(tiny, [PROMPT, " ".join(["cat"] * 80)], [0, 1], steps=2)


def test_score_prompts_keeps_input_order(tiny):
    from memguard.pipeline import score_prompts

    prompts = ["a red dog", " ".join(["cat"] * 80), PROMPT]  # chunk counts 1, 2, 1
    out = score_prompts(tiny, prompts, [0, 1], batch_size=3, steps=4)
    assert [len(dets) for dets in out] == [2, 2, 2]
    for prompt, dets in zip(prompts, out):
        expected = score(tiny, prompt, [0, 1], steps=4)
        assert [d.score for d in dets] == pytest.approx([d.score for d in expected], rel=1e-5)


def test_score_rejects_unknown_method(tiny):
    with pytest.raises(ValueError):
        score(tiny, PROMPT, [0], steps=4, method="bogus")


def test_asthana_score_by_hand(tiny, tiny_dir):
    """``method="asthana"``: ``gamma1 * d + gamma2 * cos``, with Wen's ``d`` at the first step and the cosine term
    read on the same ``x_T`` with the network told the low-noise timestep ``timesteps[-3]``: at each pixel the
    cosine between ``eps_u`` (the empty prompt) and ``eps_c - eps_u`` over the channels, averaged over pixels
    (written out here with dot products)."""
    steps, seeds, gammas = 10, [0, 3], (1.0, 2.0)
    t_low = _scheduler(tiny_dir, steps).timesteps[-3]
    cond, empty = _text(tiny, PROMPT), _text(tiny, "")
    expected = []
    for seed in seeds:
        (d,), _ = plain_loop(tiny, tiny_dir, PROMPT, seed, steps=steps)
        x = torch.randn((1, 3, 8, 8), generator=torch.Generator("cpu").manual_seed(seed))
        with torch.no_grad():
            eps_c = tiny.unet(x, t_low, encoder_hidden_states=cond).sample[0].double()
            eps_u = tiny.unet(x, t_low, encoder_hidden_states=empty).sample[0].double()
        g = eps_c - eps_u
        cos = (eps_u * g).sum(0) / (eps_u.norm(dim=0) * g.norm(dim=0))  # (H, W)
        expected.append(gammas[0] * d + gammas[1] * float(cos.mean()))
    threshold = sum(expected) / 2  # between the two seeds' scores: one flagged
    dets = score(tiny, PROMPT, seeds, steps=steps, method="asthana", gammas=gammas, threshold=threshold)
    assert [det.method for det in dets] == ["asthana", "asthana"]
    assert [det.score for det in dets] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert sorted(det.flagged for det in dets) == [False, True]
    assert [det.flagged for det in dets] == [s > threshold for s in expected]
    weights = score(tiny, PROMPT, seeds, steps=steps, method="asthana", gammas=(1.0, 0.0))
    assert [det.score for det in weights] == pytest.approx(
        [det.score for det in score(tiny, PROMPT, seeds, steps=steps)], rel=1e-5
    )  # gamma2 = 0: Wen's d alone


def test_batched_scan_scores_as_one_at_a_time(tiny):
    """Batching (one tokenizer call, one text-encoder call, one UNet call per batch) changes no score beyond the last
    bits of batched matmuls: batch sizes 1, 4 and 7 (a ragged last batch), a repeated prompt and a two-chunk one."""
    from memguard.pipeline import score_prompts

    prompts = [
        PROMPT,
        "a red dog on the grass",
        "a blue square",
        PROMPT,
        " ".join(["cat"] * 80),
        "an oil painting of a harbour at night",
        "a green triangle on the right",
        "a small yellow bird",
        " ".join(["dog"] * 90),
    ]
    alone = score_prompts(tiny, prompts, [0, 3], batch_size=1, steps=4)
    for batch in (4, 7):
        batched = score_prompts(tiny, prompts, [0, 3], batch_size=batch, steps=4)
        for a, b in zip(alone, batched):
            assert [d.score for d in b] == pytest.approx([d.score for d in a], rel=1e-4)


def test_encode_many_matches_encode_each(tiny):
    from memguard.tokens import tokenize_many

    prompts = [PROMPT, "", "a red dog on the grass"]
    toks = tokenize_many(tiny.tokenizer, prompts)
    assert toks == [tiny.tokenize(p) for p in prompts]
    together = tiny.encode(toks)
    assert together.shape[0] == 3
    for i, tok in enumerate(toks):
        assert torch.allclose(together[i : i + 1], tiny.encode(tok), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        tiny.encode([toks[0], tiny.tokenize(" ".join(["cat"] * 80))])
