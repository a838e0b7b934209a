"""The training-time filter (Wen et al. 2024, Sec. 4.3) on the tiny UNet: mask, all-dropped batches, bf16, no grads."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from memguard.training import (
    FilterResult,
    FlaggedSamples,
    TimestepThreshold,
    memorization_filter,
    training_magnitudes,
)

PROMPTS = ["a red circle", "a photo of a dog", "", "mona lisa by leonardo da vinci"]
TIMESTEPS = torch.tensor([10, 300, 600, 990])


@pytest.fixture
def step(tiny):
    """A training-mode, trainable copy of the tiny UNet and one batch of a training step."""
    torch.manual_seed(0)
    unet = copy.deepcopy(tiny.unet).train().requires_grad_(True)
    x = torch.randn(len(PROMPTS), *tiny.latent_shape)
    cond = torch.cat([tiny.encode(tiny.tokenize(p)) for p in PROMPTS])
    return unet, x, cond, tiny.empty()


def by_hand(unet, x, cond, empty) -> torch.Tensor:
    with torch.no_grad():
        eps_c = unet(x, TIMESTEPS, encoder_hidden_states=cond).sample
        eps_u = unet(x, TIMESTEPS, encoder_hidden_states=empty.expand(len(x), -1, -1)).sample
    return ((eps_c - eps_u) ** 2).sum(dim=(1, 2, 3)).sqrt()


def test_keep_mask_is_d_below_threshold(step):
    unet, x, cond, empty = step
    d = by_hand(unet, x, cond, empty)
    threshold = d.median().item()
    result = memorization_filter(unet, x, TIMESTEPS, cond, empty, threshold)
    assert torch.allclose(result.d, d, rtol=1e-5)
    assert result.keep.tolist() == (d < threshold).tolist()
    assert 0 < result.kept < len(PROMPTS)
    assert result.d[2] == 0.0 and result.keep[2]  # the empty caption is its own reference
    stats = result.stats()
    assert stats["memguard/dropped"] == result.dropped and stats["memguard/skipped_step"] == 0.0
    assert stats["memguard/d_max"] == pytest.approx(d.max().item(), rel=1e-5)


def test_given_prediction_is_used_and_no_gradient_is_added(step):
    unet, x, cond, empty = step
    flags = [p.requires_grad for p in unet.parameters()]
    model_pred = unet(x, TIMESTEPS, encoder_hidden_states=cond).sample
    result = memorization_filter(unet, x, TIMESTEPS, cond, empty, 1e9, model_pred=model_pred)
    assert torch.allclose(result.d, by_hand(unet, x, cond, empty), rtol=1e-5)
    assert all(p.grad is None for p in unet.parameters())
    assert not any(t.requires_grad for t in (result.keep, result.d, result.threshold))
    assert unet.training and [p.requires_grad for p in unet.parameters()] == flags
    model_pred[result.keep].pow(2).mean().backward()  # the step's own graph is intact
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)


def test_filter_leaves_eval_mode_alone(tiny, step):
    _, x, cond, empty = step
    memorization_filter(tiny.unet, x, TIMESTEPS, cond, empty, 1.0)
    assert not tiny.unet.training and not any(p.requires_grad for p in tiny.unet.parameters())


def test_all_dropped_batch_tells_the_caller_to_skip(step):
    unet, x, cond, empty = step
    result = memorization_filter(unet, x, TIMESTEPS, cond, empty, 0.0)
    assert not result.keep.any() and result.skip and result.kept == 0 and result.dropped == len(PROMPTS)
    assert result.stats()["memguard/skipped_step"] == 1.0 and result.stats()["memguard/drop_rate"] == 1.0
    kept = memorization_filter(unet, x, TIMESTEPS, cond, empty, math.inf)
    assert kept.keep.all() and not kept.skip and kept.dropped == 0


def test_nan_magnitude_is_dropped():
    result = FilterResult(torch.tensor([False]), torch.tensor([math.nan]), torch.tensor([1.0]))
    assert result.skip and result.stats()["memguard/d_max"] == math.inf


def test_bf16_autocast(step):
    """Under bf16 autocast ``d`` is float32 and equals the same bf16 difference taken by hand: parity with the same
    kernels on the same inputs, so it holds on any CPU (bf16 kernels differ between CPUs, and so does their error
    against float32)."""
    unet, x, cond, empty = step
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model_pred = unet(x, TIMESTEPS, encoder_hidden_states=cond).sample
        assert model_pred.dtype == torch.bfloat16
        with torch.no_grad():
            eps_u = unet(x, TIMESTEPS, encoder_hidden_states=empty.expand(len(x), -1, -1)).sample
        bf16_by_hand = ((model_pred.detach().float() - eps_u.float()) ** 2).sum(dim=(1, 2, 3)).sqrt()
        threshold = bf16_by_hand.median().item()
        result = memorization_filter(unet, x, TIMESTEPS, cond, empty, threshold, model_pred=model_pred)
    assert result.d.dtype == torch.float32 and torch.isfinite(result.d).all()
    assert torch.allclose(result.d, bf16_by_hand, rtol=1e-5)
    assert result.keep.tolist() == (bf16_by_hand < threshold).tolist()
    assert all(p.grad is None for p in unet.parameters())


def test_timestep_threshold_buckets_and_calibration(tmp_path, step):
    rule = TimestepThreshold(tuple(float(k) for k in range(1, 11)))
    assert rule(torch.tensor([0, 99, 100, 555, 999, 1200])).tolist() == [1, 1, 2, 6, 10, 10]
    unet, x, cond, empty = step
    d = by_hand(unet, x, cond, empty)
    per_sample = TimestepThreshold((d[0].item() + 1e-3, 0.0, 0.0, d[3].item() - 1e-3), 1000)
    assert memorization_filter(unet, x, TIMESTEPS, cond, empty, per_sample).keep.tolist() == [
        True,
        False,
        d[2].item() < 0.0,
        False,
    ]

    generator = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (4000,), generator=generator)
    values = t / 100 + torch.rand(4000, generator=generator)
    fitted = TimestepThreshold.calibrate(values, t, quantile=0.9, buckets=4)
    for k in range(4):
        inside = values[(t >= 250 * k) & (t < 250 * (k + 1))]
        assert fitted.values[k] == pytest.approx(torch.quantile(inside, 0.9).item())
    sparse = TimestepThreshold.calibrate(values[t < 500], t[t < 500], quantile=0.9, buckets=2, min_count=10_000)
    assert sparse.values[0] == sparse.values[1] == pytest.approx(torch.quantile(values[t < 500], 0.9).item())
    fitted.save(tmp_path / "threshold.json")
    assert TimestepThreshold.load(tmp_path / "threshold.json") == fitted
    with pytest.raises(ValueError):
        TimestepThreshold.from_dict({"values": [1.0]})
    with pytest.raises(ValueError):
        TimestepThreshold.calibrate(torch.tensor([]), torch.tensor([]))


def test_training_magnitudes_draw_timesteps_and_noise(step):
    from diffusers import DDPMScheduler

    from memguard.miniature.train import SCHEDULE

    unet, x, cond, empty = step
    scheduler = DDPMScheduler(**SCHEDULE)
    d, t = training_magnitudes(unet, x, cond, empty, scheduler, torch.Generator().manual_seed(3))
    again, t2 = training_magnitudes(unet, x, cond, empty, scheduler, torch.Generator().manual_seed(3))
    assert d.shape == t.shape == (len(PROMPTS),) and ((t >= 0) & (t < 1000)).all()
    assert torch.equal(t, t2) and torch.allclose(d, again)
    assert not d.requires_grad and all(p.grad is None for p in unet.parameters())


def _result(keep: list[bool]) -> FilterResult:
    n = len(keep)
    return FilterResult(keep=torch.tensor(keep), d=torch.zeros(n), threshold=torch.ones(n))


def test_flagged_samples_are_left_out_for_the_rest_of_training():
    flagged = FlaggedSamples(strikes=1)
    first = flagged.update(["cat", "dog", "cat"], _result([True, False, False]))
    assert first.keep.tolist() == [False, False, False]  # the cat's other copy goes with it, in the same batch
    assert flagged.excluded == {"cat", "dog"}
    later = flagged.update(["dog", "cow", "cat"], _result([True, True, True]))  # they pass now: still left out
    assert later.keep.tolist() == [False, True, False] and not later.skip
    assert flagged.update(["dog"], _result([True])).skip


def test_strikes_spare_a_single_crossing():
    flagged = FlaggedSamples(strikes=2)
    assert flagged.update([1, 2], _result([False, True])).keep.tolist() == [False, True]  # this draw still drops it
    assert flagged.excluded == set()
    assert flagged.update([1, 2], _result([True, True])).keep.tolist() == [True, True]
    assert flagged.update([1, 2], _result([False, True])).keep.tolist() == [False, True]
    assert flagged.excluded == {1}
    assert flagged.update([1, 2], _result([True, True])).keep.tolist() == [False, True]
    with pytest.raises(ValueError, match="2 keys for a batch of 1"):
        flagged.update([1, 2], _result([True]))


def test_native_size_normalizes_d_for_other_training_resolutions(step):
    """With ``native``, ``d`` of a batch at another resolution reads as at the native one: ``d * sqrt(h0 w0 / hw)``."""
    unet, _, cond, empty = step
    torch.manual_seed(1)
    x = torch.randn(len(PROMPTS), unet.config.in_channels, 2 * unet.config.sample_size, unet.config.sample_size)
    plain = memorization_filter(unet, x, TIMESTEPS, cond, empty, 1.0)
    side = unet.config.sample_size
    native = memorization_filter(unet, x, TIMESTEPS, cond, empty, 1.0, native=(side, side))
    assert torch.allclose(plain.d, by_hand(unet, x, cond, empty), rtol=1e-5)
    assert torch.allclose(native.d, plain.d / 2**0.5, rtol=1e-6)
