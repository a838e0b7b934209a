"""Determinism: memguard watching (scoring, explaining and warning about flagged images, not mitigating) leaves every
image bit-identical to memguard switched off (the ``memguard_watch`` setting), across samplers, batch sizes, hires
fix, a non-empty negative prompt (memguard's extra empty-prompt batch) and ``AND`` prompts; the global torch RNG ends
in the same state (Euler a draws fresh noise at every step, so any draw memguard made would show). When mitigating,
the images memguard does not mitigate are bit-identical to a run without it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from webui_helpers import GUARD, flag_one, generate, guard_index, pixels, results, set_threshold

pytest.importorskip("gradio")

SAMPLERS = ["Euler", "Euler a", "DPM++ 2M", "DDIM"]


def _run(webui, watch: bool, title=None, script_args=None, **job):
    from modules import shared

    shared.opts.memguard_watch = watch
    torch.manual_seed(1234)
    out = generate(webui, title, script_args, **job)
    return out, torch.get_rng_state()


def _assert_watching_changes_nothing(webui, **job):
    set_threshold(1e-6)  # every image flagged: scored, explained and warned about
    plain, plain_rng = _run(webui, False, **job)
    watched, watched_rng = _run(webui, True, **job)
    assert "memguard-data" not in plain.comments
    assert len(results(watched)) == job.get("batch_size", 1) and all(r["flagged"] for r in results(watched))
    assert all(r["mitigation"] is None for r in results(watched))
    assert len(pixels(watched)) == len(pixels(plain)) == job.get("batch_size", 1)
    for a, b in zip(pixels(watched), pixels(plain)):
        assert np.array_equal(a, b)
    assert torch.equal(watched_rng, plain_rng)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_watching_is_bit_identical(webui, sampler, batch):
    prompt = "a red circle AND a blue square :0.5" if batch == 4 else "a red circle"
    _assert_watching_changes_nothing(
        webui, sampler_name=sampler, batch_size=batch, prompt=prompt, negative_prompt="blurry, dark", steps=3
    )


def test_watching_with_hires_fix_is_bit_identical(webui):
    hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.5)
    _assert_watching_changes_nothing(
        webui, sampler_name="Euler a", batch_size=2, negative_prompt="blurry", steps=3, **hires
    )


STRATEGY_SAMPLERS = [("attention", "Euler a"), ("guidance", "DPM++ 2M"), ("auto", "DDIM")]


@pytest.mark.parametrize(("strategy", "sampler"), STRATEGY_SAMPLERS)
def test_mitigating_leaves_the_unflagged_images_bit_identical(webui, strategy, sampler):
    """``test_a1111.test_guard_mitigates_only_the_flagged_image`` does this for the embedding strategy with Euler."""
    job = dict(batch_size=4, seed=11, sampler_name=sampler, negative_prompt="blurry", steps=3)
    flagged = flag_one(webui, **job)[1]  # exactly one image above the threshold
    plain, _ = _run(webui, False, **job)
    guarded, _ = _run(webui, False, GUARD, {guard_index(): strategy}, **job)
    assert [r["mitigation"] is not None for r in results(guarded)] == [i == flagged for i in range(4)]
    for i, (a, b) in enumerate(zip(pixels(guarded), pixels(plain))):
        assert np.array_equal(a, b) == (i != flagged), i
