"""Conditioning as the hosts hand it over (a tensor, or SDXL's dict), with or without the prefix row ControlNet puts
before the 77-token chunks: the rows memguard reads and replaces are the prompt's, and nothing else changes."""

from __future__ import annotations

import torch
from fakehost.modules.prompt_parser import DictWithShape  # the A1111 double of the host's modules/prompt_parser.py

from memguard.hosts.a1111.conditioning import (
    SIZES,
    condition,
    crossattn,
    pooled_text,
    prefix,
    take,
    with_crossattn,
    with_pooled,
    with_rows,
)


def context(n: int = 3, chunks: int = 1, extra: int = 0, channels: int = 4) -> torch.Tensor:
    """``n`` rows: ``extra`` prefix positions (-1000 - row), then ``77 * chunks`` positions (row + 0.01 * position)."""
    tokens = torch.arange(77 * chunks, dtype=torch.float32) * 0.01
    rows = [torch.cat([torch.full((extra,), -1000.0 - r), r + tokens]) for r in range(n)]
    return torch.stack(rows)[:, :, None].expand(n, extra + 77 * chunks, channels).clone()


def test_prefix_counts_the_rows_before_the_chunks():
    assert prefix(context()) == 0
    assert prefix(context(chunks=2)) == 0
    assert prefix(context(extra=1)) == 1
    assert prefix(context(chunks=2, extra=1)) == 1


def test_take_picks_rows_of_a_tensor_or_of_every_tensor_of_a_dict():
    cond = context()
    assert torch.equal(take(cond, [2, 0]), cond[[2, 0]])
    sdxl = {"crossattn": cond, "vector": torch.arange(3.0)[:, None]}
    taken = take(sdxl, [1])
    assert set(taken) == {"crossattn", "vector"}
    assert torch.equal(taken["crossattn"], cond[[1]]) and taken["vector"].tolist() == [[1.0]]


def test_crossattn_leaves_the_prefix_rows_out():
    cond = context(extra=1)
    assert torch.equal(crossattn(cond), cond[:, 1:])
    assert torch.equal(crossattn({"crossattn": cond, "vector": torch.zeros(3, 2)}), cond[:, 1:])
    plain = context(chunks=2)
    assert crossattn(plain) is not None and torch.equal(crossattn(plain), plain)


def test_with_crossattn_puts_the_prefix_back_in_front():
    cond = context(extra=1)
    new = torch.ones(2, 77, 4, dtype=torch.float16)  # the prompt rows' dtype wins, a narrower one too
    out = with_crossattn(cond, new)
    assert out.shape == (2, 78, 4) and out.dtype == torch.float16
    assert torch.equal(out[:, 0], cond[:2, 0].half())  # the first rows' prefixes
    assert torch.equal(out[:, 1:], new)
    assert with_crossattn(context(), new) is new  # nothing to put back
    sdxl = {"crossattn": cond, "vector": torch.zeros(3, 2)}
    out = with_crossattn(sdxl, new)
    assert out["vector"] is sdxl["vector"] and torch.equal(out["crossattn"][:, 1:], new)
    assert sdxl["crossattn"] is cond  # the host's dict is left as it was


def test_with_crossattn_keeps_the_hosts_dict_type_and_its_shape():
    sdxl = DictWithShape({"crossattn": context(), "vector": torch.zeros(3, 2)})
    new = torch.ones(2, 77, 4)
    out = with_crossattn(sdxl, new)
    assert type(out) is DictWithShape and out.shape == (2, 77, 4)  # A1111's CFGDenoiser.forward reads the shape
    assert out["crossattn"] is new and out["vector"] is sdxl["vector"]


def test_condition_is_the_hosts_condition_dict():
    cond, image = context(), torch.zeros(3, 5, 1, 1)
    plain = condition(cond, image)
    assert set(plain) == {"c_crossattn", "c_concat"}
    assert plain["c_crossattn"][0] is cond and plain["c_concat"][0] is image and len(plain["c_concat"]) == 1
    sdxl = {"crossattn": cond, "vector": torch.zeros(3, 2)}
    out = condition(sdxl, image)
    assert set(out) == {"crossattn", "vector", "c_concat"} and out["c_concat"] == [image]
    assert "c_concat" not in sdxl


def test_with_rows_replaces_only_the_given_rows_prompt_positions():
    for cond in (context(extra=1), context(chunks=2)):
        value = torch.full(crossattn(cond).shape[1:], 7.0)
        out = with_rows(cond, {1: value})
        assert out is not cond and out.shape == cond.shape
        assert torch.equal(crossattn(out)[1], value)
        assert torch.equal(out[[0, 2]], cond[[0, 2]])
        assert torch.equal(out[1, : prefix(cond)], cond[1, : prefix(cond)])  # a prefix stays
        assert not torch.equal(crossattn(cond)[1], value)  # the host's tensor is not written to
    sdxl = {"crossattn": context(), "vector": torch.zeros(3, 2)}
    out = with_rows(sdxl, {0: torch.zeros(77, 4)})
    assert out["vector"] is sdxl["vector"] and crossattn(out)[0].abs().sum() == 0
    assert torch.equal(crossattn(out)[1:], sdxl["crossattn"][1:])


def test_with_no_rows_the_conditioning_is_handed_back_as_is():
    cond = context()
    assert with_rows(cond, {}) is cond


def test_with_rows_replaces_the_pooled_text_of_sdxls_vector_and_keeps_its_sizes():
    """SDXL's ``vector``: the pooled text (here 3 channels), then the size/crop part (``SIZES``); the given rows'
    pooled text is replaced, their size part and every other row kept, in the host's dict type."""

    class DictWithShape(dict):
        pass

    vector = torch.arange(2 * (3 + SIZES), dtype=torch.float32).view(2, 3 + SIZES)
    cond = DictWithShape(crossattn=context(n=2), vector=vector)
    assert torch.equal(pooled_text(cond), vector[:, :3]) and pooled_text(context()) is None
    new = with_rows(cond, {1: torch.zeros(77, 4)}, {1: torch.full((3,), -1.0)})
    assert type(new) is DictWithShape
    assert new["vector"][1, :3].tolist() == [-1.0] * 3 and torch.equal(new["vector"][1, 3:], vector[1, 3:])
    assert torch.equal(new["vector"][0], vector[0]) and torch.equal(new["crossattn"][1], torch.zeros(77, 4))
    assert torch.equal(cond["vector"], torch.arange(2 * (3 + SIZES), dtype=torch.float32).view(2, 3 + SIZES))


def test_a_vector_without_pooled_text_has_none():
    """Only a ``vector`` wider than the size/crop part carries pooled text: a dict without one, or one of the size
    part alone, has none, and an SDXL dict with no pooled rows to replace is handed back as is."""
    assert pooled_text({"crossattn": context()}) is None
    assert pooled_text({"crossattn": context(), "vector": torch.zeros(3, SIZES)}) is None
    sdxl = {"crossattn": context(n=2), "vector": torch.zeros(2, 3 + SIZES)}
    assert with_rows(sdxl, {}) is sdxl and with_rows(sdxl, {}, {}) is sdxl


def test_the_pooled_text_keeps_the_vectors_dtype():
    """The host's ``vector`` is half precision under ``--precision half``: the optimized pooled text (float32) is
    written back in the vector's dtype."""
    vector = torch.zeros(2, 3 + SIZES, dtype=torch.float16)
    new = with_rows({"crossattn": context(n=2), "vector": vector}, {}, {0: torch.ones(3)})
    assert new["vector"].dtype == torch.float16 and new["vector"][0, :3].tolist() == [1.0] * 3
    optimized = with_pooled({"crossattn": context(n=2), "vector": vector}, torch.ones(2, 3))  # the optimizer's float32
    assert optimized["vector"].dtype == torch.float16 and optimized["vector"][:, :3].tolist() == [[1.0] * 3] * 2
