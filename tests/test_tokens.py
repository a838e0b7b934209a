"""The offline CLIP BPE tokenizer and the 77-token chunk arithmetic."""

from __future__ import annotations

import pytest

from memguard.tokens import (
    BOS,
    CHUNK,
    CONTEXT,
    EOS,
    VOCAB_SIZE,
    clip_vocab,
    load_tokenizer,
    position_of,
    tokenize,
    write_tokenizer_files,
)

BOS_ID, EOS_ID = 49406, 49407
WORDS = ["a", "red", "cat", "on", "the", "mat", "in", "sun", "with", "dog"]


@pytest.fixture(scope="module")
def tk():
    return load_tokenizer()


def long_prompt(n_words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words))


def test_known_clip_ids(tk):
    tok = tokenize(tk, "a photo of a cat")
    assert tok.n_chunks == 1
    assert tok.ids[0][:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert [t.id for t in tok.tokens] == [320, 1125, 539, 320, 2368]


def test_vocab_size_and_specials(tk):
    vocab, merges = clip_vocab()
    assert len(vocab) == VOCAB_SIZE == 49408
    assert len(tk) == 49408
    assert vocab[BOS] == BOS_ID and vocab[EOS] == EOS_ID
    assert tk.bos_token_id == BOS_ID and tk.eos_token_id == EOS_ID and tk.pad_token_id == EOS_ID
    assert len(set(vocab.values())) == len(vocab)  # no two tokens share an id
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))


@pytest.mark.parametrize("prompt", ["", "a photo of a cat", long_prompt(74), long_prompt(75)])
def test_single_chunk_framing(tk, prompt):
    tok = tokenize(tk, prompt)
    assert tok.n_chunks == 1
    row = tok.ids[0]
    n = len(tok.tokens)
    assert len(row) == CONTEXT == 77
    assert row[0] == BOS_ID
    assert row[1 : 1 + n] == [t.id for t in tok.tokens]
    assert row[1 + n] == EOS_ID
    assert row[2 + n :] == [EOS_ID] * (CHUNK - n)


def test_single_chunk_matches_plain_padding(tk):
    prompt = "an astronaut riding a horse, oil painting"
    plain = tk(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    assert tokenize(tk, prompt).ids == [plain]


def test_max_chunks_one_truncates_like_diffusers(tk):
    prompt = long_prompt(160)
    plain = tk(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    tok = tokenize(tk, prompt, max_chunks=1)
    assert tok.ids == [plain]
    assert len(tok.tokens) == CHUNK


def test_multi_chunk_positions_and_spans(tk):
    prompt = long_prompt(160)
    tok = tokenize(tk, prompt)
    assert len(tok.tokens) == 160  # one BPE piece per word
    assert tok.n_chunks == 3
    for row in tok.ids:
        assert len(row) == 77 and row[0] == BOS_ID
    # the last chunk carries 10 tokens, then EOS and padding
    assert tok.ids[2][11:] == [EOS_ID] * 66
    assert tok.ids[0][76] == EOS_ID and tok.ids[1][76] == EOS_ID
    flat = [i for row in tok.ids for i in row]
    cursor = 0
    words = prompt.split(" ")
    for j, t in enumerate(tok.tokens):
        k, i = divmod(j, 75)
        assert t.position == k * 77 + 1 + i == position_of(j)
        assert flat[t.position] == t.id
        assert prompt[t.start : t.end] == t.text == words[j]
        assert t.start >= cursor
        cursor = t.end
        assert tk.convert_ids_to_tokens(t.id).removesuffix("</w>") == t.text


def test_split_word_pieces_cover_the_word(tk):
    prompt = "Vantremont castle"
    tok = tokenize(tk, prompt)
    pieces = [t for t in tok.tokens if t.end <= 10]
    assert len(pieces) >= 2
    assert "".join(t.text for t in pieces) == "Vantremont"
    # pieces are lower-cased vocabulary entries of the text they cover
    for t in tok.tokens:
        assert tk.convert_ids_to_tokens(t.id).removesuffix("</w>") == t.text.lower()


@pytest.mark.parametrize(
    "prompt",
    [
        "猫が好き 🐱!!",
        "a cat 🐈‍⬛ on a mat… «quoted», (emphasis:1.2) [edit] don't",
        "  leading and   inner   spaces  ",
        "東京タワー、夜景。 👩🏽‍🚀🚀 café naïve",
    ],
)
def test_spans_inside_prompt(tk, prompt):
    tok = tokenize(tk, prompt)
    assert tok.tokens
    covered = set()
    previous_start = 0
    for t in tok.tokens:
        assert 0 <= t.start < t.end <= len(prompt)
        assert t.text == prompt[t.start : t.end]
        assert not t.text.isspace()
        assert t.start >= previous_start
        previous_start = t.start
        covered.update(range(t.start, t.end))
    # every visible character belongs to some piece
    for i, ch in enumerate(prompt):
        if not ch.isspace():
            assert i in covered, (i, ch)


def test_write_tokenizer_files_round_trip(tk, tmp_path):
    folder = write_tokenizer_files(tmp_path / "tokenizer")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (folder / name).is_file()
    loaded = load_tokenizer(folder)
    assert len(loaded) == 49408
    for prompt in ["a photo of a cat", "Vantremont castle at dusk", "猫が好き 🐱!!", long_prompt(160), ""]:
        a, b = tokenize(tk, prompt), tokenize(loaded, prompt)
        assert a.ids == b.ids
        assert a.tokens == b.tokens
