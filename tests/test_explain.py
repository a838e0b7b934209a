"""Token significance: gradients per position, mapping to prompt pieces, and grouping into words."""

from __future__ import annotations

import pytest
import torch

from memguard.explain import Explanation, TokenScore, explain, significance, token_gradients, token_occlusion
from memguard.pipeline import explain_prompt
from memguard.tokens import load_tokenizer, tokenize


@pytest.fixture(scope="module")
def tk():
    return load_tokenizer()


def test_token_gradients_only_where_the_model_looks():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=gen)
    cond = torch.randn(3, 10, 6, generator=gen)
    eps_empty = torch.zeros(3, 2, 4, 4)

    def eps_model(xx, cc):
        return xx * cc[:, 1, 0].view(-1, 1, 1, 1)  # only position 1, channel 0 matters

    grads = token_gradients(eps_model, x, cond, eps_empty)
    assert grads.shape == (10,)
    assert grads[1] > 0
    assert torch.count_nonzero(grads) == 1
    # d_j = |c_j| ||x_j||, so |dd_j/dc_j| = ||x_j||; averaged over the rows
    expected = x.flatten(1).norm(dim=1).mean()
    assert grads[1].item() == pytest.approx(expected.item(), rel=1e-5)
    assert cond.grad is None and not cond.requires_grad


def test_token_gradients_norm_over_channels():
    x = torch.ones(1, 1, 1, 1)
    cond = torch.zeros(1, 3, 4)
    cond[0, 2] = torch.tensor([3.0, 0.0, 0.0, 4.0])

    def eps_model(xx, cc):
        return xx * cc[:, 2].sum(dim=-1).view(-1, 1, 1, 1)  # d = |sum of channels| -> gradient 1 on each channel

    grads = token_gradients(eps_model, x, cond, torch.zeros(1, 1, 1, 1))
    assert grads.tolist() == pytest.approx([0.0, 0.0, 2.0])  # ||(1, 1, 1, 1)||_2


def _linear_model(weights: torch.Tensor):
    """eps(x, c) = x * (c . w) summed over positions: every position matters in proportion to w."""

    def eps_model(xx, cc):
        return xx * (cc[..., 0] * weights).sum(dim=1).view(-1, 1, 1, 1)

    return eps_model


def test_token_occlusion_is_the_drop_in_d_per_position():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 3, 3, generator=gen)
    cond = torch.rand(2, 5, 2, generator=gen) + 0.5
    empty = torch.zeros(1, 5, 2)
    weights = torch.tensor([0.0, 2.0, -1.0, 0.5, 1.0])
    eps_model, eps_empty = _linear_model(weights), torch.zeros(2, 1, 3, 3)
    drops = token_occlusion(eps_model, x, cond, eps_empty, empty, [1, 2, 3], rows_per_call=4)
    full = [float(eps_model(x[[j]], cond[[j]]).norm()) for j in range(2)]
    for p in range(5):
        expected = 0.0
        if p in (1, 2, 3):
            for j in range(2):
                occluded = cond[[j]].clone()
                occluded[0, p] = 0
                expected += max(0.0, full[j] - float(eps_model(x[[j]], occluded).norm())) / 2
        assert drops[p].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert drops[1] > drops[3] > 0 and drops[2] == 0  # removing a negative contribution raises d: clamped


def test_significance_falls_back_to_occlusion_on_inference_weights():
    gen = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():  # positive weights on positive embeddings: every position adds to d (not left to chance)
        layer.weight.copy_(torch.tensor([[0.7, 0.4]]))
    x, cond = torch.randn(1, 1, 2, 2, generator=gen), torch.rand(1, 4, 2, generator=gen) + 0.5

    def eps_model(xx, cc):
        return xx * layer(cc).sum(dim=(1, 2)).view(-1, 1, 1, 1)

    eps_empty, empty = torch.zeros(1, 1, 2, 2), torch.zeros(1, 4, 2)
    values, note = significance(eps_model, x, cond, eps_empty, empty, [1, 2])
    assert note is None and torch.allclose(values, token_gradients(eps_model, x, cond, eps_empty))
    with torch.inference_mode():
        layer.weight.data = layer.weight.data.clone()  # what Forge's loader makes of every weight
    values, note = significance(eps_model, x, cond, eps_empty, empty, [1, 2])
    assert "occlusion" in note and "inference tensors" in note
    assert torch.equal(values, token_occlusion(eps_model, x, cond, eps_empty, empty, [1, 2]))
    assert values[0] == 0 and values[3] == 0 and values[1] > 0


def test_explain_maps_positions_and_normalizes(tk):
    prompt = " ".join(["red cat"] * 45)  # 90 tokens: two chunks
    tok = tokenize(tk, prompt)
    grads = torch.arange(2 * 77, dtype=torch.float32)
    exp = explain(tok, grads)
    assert len(exp.tokens) == len(tok.tokens) == 90
    for j, ts in enumerate(exp.tokens):
        k, i = divmod(j, 75)
        assert ts.position == k * 77 + 1 + i
        assert ts.value == float(ts.position)
        assert ts.text == prompt[ts.start : ts.end]
    assert max(t.normalized for t in exp.tokens) == pytest.approx(1.0)
    assert exp.tokens[-1].normalized == 1.0


def test_explain_prompt_two_chunks(tiny):
    prompt = " ".join(["a red cat on a mat"] * 15)  # 90 tokens
    tok = tiny.tokenize(prompt)
    assert tok.n_chunks == 2
    exp = explain_prompt(tiny, prompt, [0, 1], steps=10)
    assert len(exp.tokens) == len(tok.tokens)
    positions = [t.position for t in exp.tokens]
    assert positions == [k * 77 + 1 + i for k in range(2) for i in range(75)][: len(tok.tokens)]
    # BOS (0, 77), the EOS of each chunk (76, 93) and the second chunk's padding (94..153)
    special = {0, 76, 77, 93, *range(94, 154)}
    assert not special & set(positions)
    assert all(isinstance(t, TokenScore) for t in exp.tokens)
    assert max(t.normalized for t in exp.tokens) == pytest.approx(1.0)
    assert all(t.value >= 0 for t in exp.tokens)
    assert any(t.value > 0 for t in exp.tokens)


def test_explain_prompt_values_are_gradient_norms(tiny):
    prompt = "a photo of a cat"
    seeds = [3]
    exp = explain_prompt(tiny, prompt, seeds, steps=10)
    tok = tiny.tokenize(prompt)
    t = tiny.scheduler(10).timesteps[0]
    x = tiny.noise(3)
    cond = tiny.encode(tok).clone().requires_grad_(True)
    with torch.enable_grad():
        eps_c = tiny.unet(x, t, encoder_hidden_states=cond).sample
        with torch.no_grad():
            eps_e = tiny.unet(x, t, encoder_hidden_states=tiny.empty()).sample
        (eps_c - eps_e).flatten().norm().backward()
    per_position = cond.grad[0].norm(dim=-1)
    assert [ts.value for ts in exp.tokens] == pytest.approx([float(per_position[p]) for p in range(1, 6)], rel=1e-4)


def test_words_groups_bpe_pieces(tk):
    prompt = "castle of Vantremont, at dusk"
    tok = tokenize(tk, prompt)
    pieces = [t for t in tok.tokens if prompt.index("Vantremont") <= t.start < prompt.index(",")]
    assert len(pieces) >= 2
    grads = torch.zeros(77)
    for n, t in enumerate(tok.tokens):
        grads[t.position] = 1.0 + n
    strongest = max(pieces, key=lambda t: t.position)
    grads[strongest.position] = 100.0
    words = explain(tok, grads).words()
    assert [w.text for w in words] == ["castle", "of", "Vantremont", ",", "at", "dusk"]
    vw = words[2]
    assert (vw.start, vw.end) == (prompt.index("Vantremont"), prompt.index(","))
    assert prompt[vw.start : vw.end] == vw.text
    assert vw.value == 100.0 and vw.normalized == 1.0
    assert words[0].value == 1.0


def test_words_group_multibyte_pieces(tk):
    prompt = "猫が好き 🐱 cat"
    tok = tokenize(tk, prompt)
    assert len(tok.tokens) > len(prompt.split())  # byte-level pieces
    words = explain(tok, torch.ones(77)).words()
    for w in words:
        assert w.text == prompt[w.start : w.end]
    # pieces of one character never end up in two words
    starts = [w.start for w in words]
    assert len(starts) == len(set(starts))
    assert words[-1].text == "cat"
    assert "🐱" in [w.text for w in words]


def test_top_and_to_dict(tk):
    tok = tokenize(tk, "a red cat")
    grads = torch.zeros(77)
    grads[1], grads[2], grads[3] = 0.1, 0.5, 0.3
    exp = explain(tok, grads)
    assert isinstance(exp, Explanation)
    assert [w.text for w in exp.top(2)] == ["red", "cat"]
    d = exp.to_dict()
    assert len(d["tokens"]) == 3 and len(d["words"]) == 3


def test_explain_all_zero_gradients(tk):
    exp = explain(tokenize(tk, "a red cat"), torch.zeros(77))
    assert [t.normalized for t in exp.tokens] == [0.0, 0.0, 0.0]


def test_pieces_without_a_span_are_words_of_their_own():
    """A piece the host's chunks could not map to the prompt (``start == -1``, e.g. textual inversion) is a word of
    its own, shown with the piece's text, never joined to its neighbours."""
    prompt = "a cat"
    tokens = [
        TokenScore("a", 0, 1, 1, 0.1, 0.1),
        TokenScore("cat", 2, 5, 2, 0.5, 0.5),
        TokenScore("emb", -1, -1, 3, 1.0, 1.0),
        TokenScore("ding", -1, -1, 4, 0.3, 0.3),
    ]
    words = Explanation(prompt, tokens).words()
    assert [(w.text, w.start, w.end, w.value) for w in words] == [
        ("a", 0, 1, 0.1),
        ("cat", 2, 5, 0.5),
        ("emb", -1, -1, 1.0),
        ("ding", -1, -1, 0.3),
    ]


def test_a_word_spans_every_character_of_its_pieces():
    """Pieces that share characters are one word, from the first piece's start to the furthest end of any piece."""
    prompt = "xyz abc"
    tokens = [
        TokenScore("xyz", 0, 3, 1, 0.2, 0.2),
        TokenScore("y", 1, 2, 2, 0.9, 0.9),  # inside the first piece's characters, ending before it
        TokenScore("abc", 4, 7, 3, 1, 1),
    ]
    words = Explanation(prompt, tokens).words()
    assert [(w.text, w.start, w.end, w.value) for w in words] == [("xyz", 0, 3, 0.9), ("abc", 4, 7, 1)]


def test_token_occlusion_uses_each_rows_own_empty_embedding():
    """``empty`` with one row per image: position ``p`` of row ``j`` is replaced by ``empty[j, p]``."""
    x = torch.ones(2, 1, 1, 1)
    cond = torch.full((2, 3, 1), 2.0)
    empty = torch.tensor([[[0.0], [0.0], [0.0]], [[1.0], [1.5], [1.0]]])
    weights = torch.tensor([0.0, 1.0, 1.0])
    drops = token_occlusion(_linear_model(weights), x, cond, torch.zeros(2, 1, 1, 1), empty, [1])
    # d_j = sum_p w_p c_jp = 4 for both rows; occluding position 1: row 0 -> 2 (drop 2), row 1 -> 3.5 (drop 0.5)
    assert drops.tolist() == pytest.approx([0.0, (2.0 + 0.5) / 2, 0.0])


def test_token_occlusion_measures_d_against_the_empty_prompts_prediction():
    """``d`` is the distance to the empty prompt's eps, with and without the occlusion: by hand, ``x = 1``,
    ``eps(c) = c_1 + c_2`` against ``eps("") = 3``: ``d = |4 - 3| = 1``; occluding position 1 gives ``|2 - 3| = 1``
    (no drop), position 2 gives ``|3 - 3| = 0`` (a drop of 1)."""
    x = torch.ones(1, 1, 1, 1)
    cond = torch.tensor([[[0.0], [2.0], [2.0]]])
    empty = torch.tensor([[[0.0], [0.0], [1.0]]])
    eps_empty = torch.full((1, 1, 1, 1), 3.0)
    drops = token_occlusion(_linear_model(torch.tensor([0.0, 1.0, 1.0])), x, cond, eps_empty, empty, [1, 2])
    assert drops.tolist() == [0.0, 0.0, 1.0]


def test_token_occlusion_values_are_float32_whatever_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x, cond = torch.ones(1, 1, 1, 1), torch.ones(1, 3, 1)
        drops = token_occlusion(
            _linear_model(torch.ones(3)), x, cond, torch.zeros(1, 1, 1, 1), torch.zeros(1, 3, 1), [1]
        )
    finally:
        torch.set_default_dtype(previous)
    assert drops.dtype == torch.float32 and drops.tolist() == [0.0, 1.0, 0.0]


def _refusing_model(message: str):
    def eps_model(xx, cc):
        if torch.is_grad_enabled():
            raise RuntimeError(message)
        return xx * cc[:, 1, 0].view(-1, 1, 1, 1)

    return eps_model


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            "Inference tensors cannot be saved for backward.\nTo work around ...",
            "the host keeps its weights as inference tensors",
        ),
        (
            "CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail",
            "CUDA out of memory. Tried to allocate 2.00 GiB",
        ),
        ("", ""),
    ],
)
def test_significance_says_why_it_fell_back_to_occlusion(error, reason):
    x, cond = torch.ones(1, 1, 1, 1), torch.ones(1, 3, 1)
    values, note = significance(_refusing_model(error), x, cond, torch.zeros(1, 1, 1, 1), torch.zeros(1, 3, 1), [1])
    assert note == f"word colours from occlusion (gradients are unavailable here: {reason})"
    assert values.tolist() == [0.0, 1.0, 0.0]


def test_explain_keeps_the_pieces_the_gradients_reach(tk):
    """Positions past the end of the gradients are left out (a host that hands over fewer positions)."""
    tokenized = tokenize(tk, "a red cat")  # pieces at positions 1, 2, 3
    exp = explain(tokenized, [0.0, 0.25, 0.5])  # positions 0..2
    assert [(t.text, t.value, t.normalized) for t in exp.tokens] == [("a", 0.25, 0.5), ("red", 0.5, 1.0)]
    assert explain(tokenized, [0.5]).tokens == []  # nothing reached: no tokens, no error


def test_explain_of_a_prompt_without_pieces(tk):
    exp = explain(tokenize(tk, ""), torch.zeros(77))
    assert exp.tokens == [] and exp.words() == [] and exp.top() == []


def test_top_gives_the_three_strongest_words_by_default():
    tokens = [TokenScore(w, 2 * i, 2 * i + 1, i + 1, v, v) for i, (w, v) in enumerate(zip("abcde", [1, 5, 2, 4, 3]))]
    exp = Explanation("a b c d e", tokens)
    assert [w.text for w in exp.top()] == ["b", "d", "e"]
    assert [w.text for w in exp.top(4)] == ["b", "d", "e", "c"]


def test_touching_pieces_join_only_between_letters_or_digits():
    """Pieces that touch are one word when the join is between two letters or digits: the last character of the
    first and the first of the second decide, whatever comes around them."""
    prompt = "a-bc,d x,y"
    tokens = [
        TokenScore("a-b", 0, 3, 1, 0.1, 0.1),
        TokenScore("c,", 3, 5, 2, 0.2, 0.2),  # b|c: joined, though "c," is not all letters
        TokenScore("d", 5, 6, 3, 0.3, 0.3),  # ,|d: separate
        TokenScore("x,", 7, 9, 4, 0.4, 0.4),
        TokenScore("y", 9, 10, 5, 0.5, 0.5),  # ,|y: separate
    ]
    words = Explanation(prompt, tokens).words()
    assert [(w.text, w.start, w.end) for w in words] == [("a-bc,", 0, 5), ("d", 5, 6), ("x,", 7, 9), ("y", 9, 10)]
