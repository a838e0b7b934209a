"""Wen's magnitude, per-image scores over AND sub-prompts, and verdicts."""

from __future__ import annotations

import math

import pytest
import torch

from memguard.algebra import BatchLayout
from memguard.detect import (
    Detection,
    anisotropy,
    combined_score,
    image_scores,
    judge,
    row_scores,
    size_factor,
    size_normalized,
    unscorable,
    wen_norm,
)


def test_wen_norm_is_plain_l2_per_row():
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(3, 4, 8, 8, generator=gen)
    expected = [math.sqrt(sum(v * v for v in row.flatten().tolist())) for row in delta]
    got = wen_norm(delta)
    assert got.shape == (3,)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_wen_norm_scale_and_size():
    # ||2 * 1||_2 over 4 elements is 4: not squared (16), not averaged (2 or 1)
    assert wen_norm(torch.full((1, 1, 2, 2), 2.0)).item() == pytest.approx(4.0)
    assert wen_norm(torch.full((1, 3, 4, 4), 1.0)).item() == pytest.approx(math.sqrt(48))


def test_wen_norm_half_precision_input_returns_float32():
    delta = torch.full((2, 4, 64, 64), 3.0, dtype=torch.float16)
    got = wen_norm(delta)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx([3.0 * 128, 3.0 * 128])


def test_row_scores_and_image_scores_take_max_over_and():
    layout = BatchLayout.from_conds_list([[(0, 1.0), (1, 0.5)], [(2, 1.0)]])
    eps = torch.zeros(5, 1, 1, 4)
    eps[0] = 3.0  # image 0, sub-prompt 0: delta 3 -> norm 6
    eps[1] = 5.0  # image 0, sub-prompt 1: norm 10
    eps[2] = 1.0  # image 1: delta 1 - 0.5 -> norm 1
    eps[4] = 0.5
    rows = row_scores(eps, layout)
    assert rows.tolist() == pytest.approx([6.0, 10.0, 1.0])
    assert image_scores(rows, layout) == pytest.approx([10.0, 1.0])
    # sub-prompt order does not matter
    swapped = BatchLayout.from_conds_list([[(1, 0.5), (0, 1.0)], [(2, 1.0)]])
    assert image_scores(rows, swapped) == pytest.approx([10.0, 1.0])


def test_image_scores_nan_sub_prompt_is_order_independent():
    rows = torch.tensor([float("nan"), 1.0])
    a = image_scores(rows, BatchLayout.from_conds_list([[(0, 1.0), (1, 1.0)]]))[0]
    b = image_scores(rows, BatchLayout.from_conds_list([[(1, 1.0), (0, 1.0)]]))[0]
    assert math.isnan(a) == math.isnan(b)


def test_judge_flags_strictly_above_threshold():
    dets = judge([0.5, 1.0, 1.5], 1.0)
    assert [d.flagged for d in dets] == [False, False, True]
    assert [d.score for d in dets] == [0.5, 1.0, 1.5]
    assert all(d.threshold == 1.0 and d.scorable and d.reason == "" for d in dets)


def test_judge_threshold_none_never_flags():
    dets = judge([0.0, 1e9], None)
    assert [d.flagged for d in dets] == [False, False]
    assert [d.score for d in dets] == [0.0, 1e9]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_judge_non_finite_is_unscorable(bad):
    dets = judge([bad, 2.0], 1.0, sub_scores=[[1.0], [2.0]])
    assert dets[0].score is None and not dets[0].scorable
    assert dets[0].flagged is False
    assert dets[0].reason
    assert dets[1].score == 2.0 and dets[1].flagged is True and dets[1].reason == ""
    assert dets[1].sub_scores == [2.0]


def test_judge_carries_metadata_and_to_dict():
    (det,) = judge([3.0], 2.0, step=0, steps=4, extra_pass=True, method="asthana")
    d = det.to_dict()
    assert d["score"] == 3.0 and d["flagged"] is True and d["steps"] == 4
    assert d["extra_pass"] is True and d["method"] == "asthana"


def test_unscorable():
    dets = unscorable(2, "no CFG pair", threshold=1.0)
    assert len(dets) == 2
    assert all(isinstance(d, Detection) and d.score is None and not d.flagged for d in dets)
    assert dets[0].reason == "no CFG pair" and dets[0].threshold == 1.0


def _positions(*pairs: tuple[float, float]) -> torch.Tensor:
    """One row of 2-channel vectors, one per spatial position: shape ``(1, 2, 1, len(pairs))``."""
    return torch.tensor([[[[a for a, _ in pairs]], [[b for _, b in pairs]]]])


def test_anisotropy_is_the_mean_cosine_between_eps_u_and_the_guidance_vector():
    """Asthana & Belagiannis: ``cos(eps_u, eps_c - eps_u)`` over the channels at each position, averaged over the
    positions (not weighted by length, not the cosine of the flattened tensors). By hand: the guidance vectors make
    angles of 90, 60 and 0 degrees with ``eps_u`` in row 0 (cosines 0, 1/2, 1: mean 1/2), 180 degrees in row 1."""
    root3 = math.sqrt(3)
    eps_u = torch.cat([_positions((1, 0), (2, 0), (0, 5)), _positions((0, 1), (0, 1), (0, 1))])
    eps_c = torch.cat([_positions((1, 3), (3, root3), (0, 9)), _positions((0, -1), (0, -2), (0, -0.5))])
    got = anisotropy(eps_u, eps_c)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx([0.5, -1.0], abs=1e-6)
    # the same at a 2x2 grid of positions and 3 channels: (1, 0, 0) against (0, 0, 1) + (1, 0, 0) * k
    eps_u = torch.zeros(1, 3, 2, 2)
    eps_u[:, 0] = 1.0
    eps_c = eps_u.clone()
    eps_c[0, 2, 0, 0] = 1.0  # delta (0, 0, 1): cos 0
    eps_c[0, 0, 0, 1] = 3.0  # delta (2, 0, 0): cos 1
    eps_c[0, 0, 1, 0] = 0.0  # delta (-1, 0, 0): cos -1
    eps_c[0, 0, 1, 1], eps_c[0, 1, 1, 1] = 2.0, 1.0  # delta (1, 1, 0): cos 1/sqrt(2)
    assert anisotropy(eps_u, eps_c).item() == pytest.approx((0 + 1 - 1 + 1 / math.sqrt(2)) / 4, abs=1e-6)


def test_anisotropy_of_a_zero_guidance_vector_is_zero():
    eps = _positions((1, 2), (3, 4))
    assert anisotropy(eps, eps.clone()).tolist() == [0.0]


def test_combined_score_weights_norm_and_angle():
    norm, cos = torch.tensor([3.0, 4.0]), torch.tensor([0.5, -1.0])
    assert combined_score(norm, cos).tolist() == pytest.approx([4.0, 2.0])  # gamma (1, 2): SD1.4
    assert combined_score(norm, cos, 1.0, 0.1).tolist() == pytest.approx([3.05, 3.9])  # gamma (1, 0.1): SD2
    assert combined_score(norm, cos, 2.0, 1.0).tolist() == pytest.approx([6.5, 7.0])


@pytest.mark.parametrize(
    ("size", "factor"),
    [
        ((4, 64, 64), 1.0),
        ((4, 128, 128), 0.5),
        ((4, 64, 128), math.sqrt(0.5)),
        ((4, 128, 64), math.sqrt(0.5)),
        ((4, 32, 64), math.sqrt(2.0)),
        ((1, 4, 96, 48), math.sqrt(64 * 64 / (96 * 48))),
    ],
)
def test_size_factor_brings_d_to_the_native_area(size, factor):
    """``d`` grows like the square root of the latent's area: ``sqrt(h0 w0 / (h w))`` brings it to 64x64's."""
    assert size_factor(size, (4, 64, 64)) == pytest.approx(factor, rel=1e-12)
    assert size_normalized(3.0, size, (4, 64, 64)) == pytest.approx(3.0 * factor, rel=1e-12)


def test_judge_carries_the_step_it_was_read_at():
    (det,) = judge([1.0], 0.5, step=3, steps=2)
    assert det.step == 3 and det.steps == 2 and det.to_dict()["step"] == 3


@pytest.mark.parametrize("native", [(96, 48), (4, 96, 48), (1, 4, 96, 48)])
def test_size_factor_reads_height_and_width_of_a_non_square_native_size(native):
    """The native size counts by its last two axes, whatever comes before them (a bare ``(h0, w0)`` too)."""
    assert size_factor((4, 96, 48), native) == 1.0
    assert size_factor((4, 48, 96), native) == 1.0  # same area, other orientation
    assert size_factor((4, 192, 48), native) == pytest.approx(math.sqrt(0.5), rel=1e-12)
    assert size_factor((1, 4, 96, 24), native) == pytest.approx(math.sqrt(2.0), rel=1e-12)


def test_row_scores_measure_against_the_given_reference_rows():
    """With ``reference`` (memguard's own empty-prompt rows), each image's rows are measured against its reference,
    not against the host's unconditional rows."""
    layout = BatchLayout.plain(2)
    eps = torch.zeros(4, 1, 1, 4)
    eps[0], eps[1] = 3.0, 1.0  # conditional rows; unconditional rows 2 and 3 stay 0
    reference = torch.stack([torch.full((1, 1, 4), 1.0), torch.full((1, 1, 4), 2.0)])
    assert row_scores(eps, layout).tolist() == pytest.approx([6.0, 2.0])
    assert row_scores(eps, layout, reference).tolist() == pytest.approx([4.0, 2.0])  # |3-1| * 2, |1-2| * 2


def test_anisotropy_of_short_vectors_is_still_their_cosine():
    """The cosine's ``eps`` only guards a division by zero: vectors much shorter than 1 keep their angle."""
    eps_u = _positions((0.01, 0.0))
    eps_c = _positions((0.03, 0.0))  # guidance vector (0.02, 0): parallel, cos 1
    assert anisotropy(eps_u, eps_c).tolist() == pytest.approx([1.0], abs=1e-6)


def test_judge_defaults_describe_wen_at_the_first_step():
    (det,) = judge([1.0], 0.5)
    assert (det.step, det.steps, det.extra_pass, det.method) == (0, 1, False, "wen")
    assert det.sub_scores == []


def test_judge_says_why_a_non_finite_score_cannot_be_judged():
    (det,) = judge([math.nan], 1.0)
    assert det.reason == "the prediction was not finite (NaN or inf)"


def test_unscorable_verdicts_are_not_flagged():
    assert [d.flagged for d in unscorable(2, "no CFG pair")] == [False, False]
    assert all(d.flagged is False and d.threshold is None for d in unscorable(1, "no CFG pair"))
