"""Prediction algebra (eps from x0 / v) and the CFG batch layout."""

from __future__ import annotations

import pytest
import torch

from memguard.algebra import BatchLayout, cond_deltas, eps_from_v, eps_from_x0


def _synthetic(abar_values):
    gen = torch.Generator().manual_seed(0)
    n = len(abar_values)
    eps = torch.randn(n, 4, 5, 5, generator=gen, dtype=torch.float64)
    x0 = torch.randn(n, 4, 5, 5, generator=gen, dtype=torch.float64)
    abar = torch.tensor(abar_values, dtype=torch.float64)
    a = abar.sqrt().view(-1, 1, 1, 1)
    s = (1 - abar).sqrt().view(-1, 1, 1, 1)
    x_t = a * x0 + s * eps  # DDPM, variance preserving
    v = a * eps - s * x0  # Salimans & Ho
    sigma = ((1 - abar) / abar).sqrt()  # k-diffusion
    x_k = x0 + sigma.view(-1, 1, 1, 1) * eps
    return eps, x0, abar, x_t, v, sigma, x_k


def test_eps_from_x0_and_v_recover_eps_per_row():
    eps, x0, abar, x_t, v, sigma, x_k = _synthetic([0.9991, 0.5, 0.047, 0.0047])
    assert torch.allclose(x_k, x_t / abar.sqrt().view(-1, 1, 1, 1), atol=1e-12)
    from_x0 = eps_from_x0(x_k, x0, sigma)
    from_v = eps_from_v(x_t, v, abar)
    assert torch.allclose(from_x0, eps, atol=1e-9, rtol=0)
    assert torch.allclose(from_v, eps, atol=1e-9, rtol=0)
    assert torch.allclose(from_x0, from_v, atol=1e-9, rtol=0)


@pytest.mark.parametrize("abar", [0.9, 0.2, 0.01])
def test_scalar_sigma_and_abar(abar):
    eps, x0, _, x_t, v, sigma, x_k = _synthetic([abar, abar])
    assert torch.allclose(eps_from_x0(x_k, x0, float(sigma[0])), eps, atol=1e-9)
    assert torch.allclose(eps_from_v(x_t, v, abar), eps, atol=1e-9)


def test_eps_from_v_is_not_symmetric_in_its_coefficients():
    # guard against swapped sqrt(abar) / sqrt(1 - abar)
    x_t = torch.ones(1, 1, 1, 1)
    v = torch.zeros(1, 1, 1, 1)
    assert eps_from_v(x_t, v, 0.36).item() == pytest.approx(0.8)
    assert eps_from_v(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), 0.36).item() == pytest.approx(0.6)


def test_eps_keeps_the_latents_dtype_with_per_row_coefficients():
    """A per-row ``sigma`` or ``abar`` (float32, as samplers keep them) takes the latent's dtype: half-precision
    latents give half-precision eps."""
    x = torch.ones(2, 4, 2, 2, dtype=torch.float16)
    assert eps_from_x0(x, x * 0, torch.tensor([1.0, 2.0])).dtype == torch.float16
    assert eps_from_v(x, x, torch.tensor([0.5, 0.25])).dtype == torch.float16


def test_eps_follows_the_latent_to_its_device():
    """Per-row coefficients on the CPU are moved to the latent's device ("meta" stands in for a GPU here)."""
    x = torch.empty(2, 4, 8, 8, device="meta")
    assert eps_from_x0(x, x, torch.tensor([1.0, 2.0])).device == x.device
    assert eps_from_v(x, x, torch.tensor([0.5, 0.25])).device == x.device


def test_plain_layout():
    layout = BatchLayout.plain(3)
    assert layout.cond_rows == (((0, 1.0),), ((1, 1.0),), ((2, 1.0),))  # every prompt at full weight
    assert layout.batch == 3 and layout.n_cond == 3
    assert [layout.uncond_row(i) for i in range(3)] == [3, 4, 5]
    assert layout.image_of_rows() == [0, 1, 2]


def _rows(values):
    """A batch whose row ``r`` is filled with the constant ``values[r]``."""
    return torch.stack([torch.full((2, 3, 3), float(v)) for v in values])


def test_and_layout_maps_rows_to_their_image():
    layout = BatchLayout.from_conds_list([[(0, 1.0), (1, 0.5)], [(2, 1.0)]])
    assert layout.batch == 2 and layout.n_cond == 3
    assert layout.cond_rows == (((0, 1.0), (1, 0.5)), ((2, 1.0),))
    assert layout.uncond_row(0) == 3 and layout.uncond_row(1) == 4
    assert layout.image_of_rows() == [0, 0, 1]
    # conditional rows 10, 20, 30; unconditional rows 1 (image 0) and 2 (image 1)
    eps = _rows([10, 20, 30, 1, 2])
    deltas = cond_deltas(eps, layout)
    assert deltas.shape == (3, 2, 3, 3)
    assert [float(d.unique()) for d in deltas] == [9.0, 19.0, 28.0]


def test_and_layout_with_rows_in_host_order():
    # the host may list an image's sub-prompts anywhere in the conditional block
    layout = BatchLayout.from_conds_list([[(2, 1.0)], [(0, 0.7), (1, 0.3)]])
    assert layout.image_of_rows() == [1, 1, 0]
    eps = _rows([10, 20, 30, 1, 2])
    assert [float(d.unique()) for d in cond_deltas(eps, layout)] == [8.0, 18.0, 29.0]


def test_cond_deltas_with_reference():
    layout = BatchLayout.from_conds_list([[(0, 1.0), (1, 0.5)], [(2, 1.0)]])
    eps = _rows([10, 20, 30, 1, 2])
    reference = _rows([100, 200])
    deltas = cond_deltas(eps, layout, reference)
    assert [float(d.unique()) for d in deltas] == [-90.0, -80.0, -170.0]


def test_cond_deltas_ignores_extra_rows_after_uncond():
    layout = BatchLayout.plain(2)
    eps = _rows([5, 7, 1, 2, 1000, 1000])  # memguard's appended reference rows follow
    assert [float(d.unique()) for d in cond_deltas(eps, layout)] == [4.0, 5.0]
