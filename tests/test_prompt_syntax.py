"""The WebUI's prompt syntax replayed with character positions kept: AND sub-prompts, emphasis fragments, BREAK, the
75-token chunks with the comma backtrack, and the typed-to-encoded alignment. Worked by hand on small examples (a
tokenizer that makes one token of each character, chunks of 4 tokens); ``tests/test_prompts_fuzz.py`` checks the same
functions against the host's parser and the real tokenizer on many prompts."""

from __future__ import annotations

import pytest

from memguard.prompt_syntax import Fragment, Piece, align, parse_attention, replay_chunks, split_and

BOS, EOS, COMMA = 1, 2, ord(",")


def characters(text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """One token per character, spaces left out (the id is the character's code)."""
    kept = [i for i, ch in enumerate(text) if ch != " "]
    return [ord(text[i]) for i in kept], [(i, i + 1) for i in kept]


def replay(fragments, backtrack: int = 20, chunk_length: int = 4):
    return replay_chunks(
        fragments, characters, comma_id=COMMA, bos_id=BOS, eos_id=EOS, backtrack=backtrack, chunk_length=chunk_length
    )


def plain(text: str, weight: float = 1.0, at: int = 0) -> Fragment:
    return Fragment(text, weight, list(range(at, at + len(text))))


def ids(text: str) -> list[int]:
    return [ord(ch) for ch in text]


# --- AND ------------------------------------------------------------------------------------------------------------
def test_split_and_gives_each_sub_prompt_its_weight_and_offset():
    prompt = "a cat AND a dog :0.5 AND (sky:1.2)"
    assert split_and(prompt) == [("a cat", 1.0, 0), (" a dog", 0.5, 9), (" (sky:1.2)", 1.0, 24)]
    assert split_and("plain") == [("plain", 1.0, 0)]
    assert split_and("x:-2 AND y") == [("x", -2.0, 0), (" y", 1.0, 8)]
    assert split_and("ANDROID") == [("ANDROID", 1.0, 0)]  # a word that starts with AND is no separator


# --- emphasis -------------------------------------------------------------------------------------------------------
def fragments(prompt: str) -> list[tuple[str, float, list[int]]]:
    return [(f.text, pytest.approx(f.weight), f.source) for f in parse_attention(prompt)]


def test_parse_attention_weights_as_the_webui_does():
    """The examples of A1111's ``parse_prompt_attention`` docstring, with each character's index in the prompt."""
    assert fragments("normal text") == [("normal text", 1.0, list(range(11)))]
    assert fragments("an (important) word") == [
        ("an ", 1.0, [0, 1, 2]),
        ("important", 1.1, list(range(4, 13))),
        (" word", 1.0, list(range(14, 19))),
    ]
    assert fragments("(unbalanced") == [("unbalanced", 1.1, list(range(1, 11)))]
    assert fragments("[less]") == [("less", 1 / 1.1, [1, 2, 3, 4])]
    assert fragments("[unbalanced") == [("unbalanced", 1 / 1.1, list(range(1, 11)))]
    assert fragments("a (b") == [("a ", 1.0, [0, 1]), ("b", 1.1, [3])]  # from the open bracket on
    assert fragments("a [b") == [("a ", 1.0, [0, 1]), ("b", 1 / 1.1, [3])]
    assert fragments("(unnecessary)(parens)") == [("unnecessaryparens", 1.1, [*range(1, 12), *range(14, 20)])]
    assert fragments("(word:1.5) x") == [("word", 1.5, [1, 2, 3, 4]), (" x", 1.0, [10, 11])]
    assert fragments("a ((house:1.3)) [on]") == [
        ("a ", 1.0, [0, 1]),
        ("house", 1.3 * 1.1, list(range(4, 9))),
        (" ", 1.0, [15]),
        ("on", 1 / 1.1, [17, 18]),
    ]


def test_parse_attention_keeps_escaped_brackets_as_text():
    assert fragments(r"\(literal\]") == [("(literal]", 1.0, [1, *range(2, 9), 10])]
    assert fragments("a\\\\b") == [("a\\b", 1.0, [0, 2, 3])]
    assert fragments("a:b") == [("a:b", 1.0, [0, 1, 2])]  # a colon outside brackets is text
    assert fragments("a)b]") == [("a)b]", 1.0, [0, 1, 2, 3])]  # unmatched closers too


def test_parse_attention_marks_break_with_the_keywords_characters():
    assert fragments("a BREAK b") == [("a", 1.0, [0]), ("BREAK", -1, [2, 3, 4, 5, 6]), ("b", 1.0, [8])]
    (first, brk, last) = parse_attention("a BREAK b")
    assert brk.is_break and not first.is_break and not last.is_break
    assert fragments("(x BREAK)") == [("x", 1.1, [1]), ("BREAK", -1.1, [3, 4, 5, 6, 7]), ("", 1.1, [])]
    assert not parse_attention("(x BREAK)")[1].is_break  # inside brackets: the word BREAK, not a break
    assert fragments("BREAKFAST") == [("BREAKFAST", 1.0, list(range(9)))]


def test_an_empty_prompt_is_one_empty_fragment():
    assert fragments("") == [("", 1.0, [])]
    assert fragments("()") == [("", 1.0, [])]


def test_a_fragment_is_a_break_only_as_the_keyword_with_weight_minus_one():
    assert Fragment("BREAK", -1).is_break
    assert not Fragment("BREAK", 1.0).is_break
    assert not Fragment("break", -1).is_break
    assert Fragment("x", 1.0).source == []


# --- chunks ---------------------------------------------------------------------------------------------------------
def test_chunks_are_bos_tokens_and_eos_padding_with_a_piece_per_token():
    chunks, pieces = replay([plain("abc", 1.5, at=2)])
    assert chunks == [[BOS, *ids("abc"), EOS, EOS]]
    assert pieces == [
        Piece(ord("a"), 1, 2, 3, 1.5),
        Piece(ord("b"), 2, 3, 4, 1.5),
        Piece(ord("c"), 3, 4, 5, 1.5),
    ]


def test_a_full_chunk_continues_in_the_next():
    chunks, pieces = replay([plain("abcdef")])
    assert chunks == [[BOS, *ids("abcd"), EOS], [BOS, *ids("ef"), EOS, EOS, EOS]]
    assert [(p.position, p.start) for p in pieces] == [(1, 0), (2, 1), (3, 2), (4, 3), (7, 4), (8, 5)]


def test_exactly_one_full_chunk_has_no_empty_one_after_it():
    chunks, _ = replay([plain("abcd")])
    assert chunks == [[BOS, *ids("abcd"), EOS]]


def test_the_words_after_the_last_comma_move_to_the_next_chunk():
    """``ab,c`` fills the chunk; ``d`` would start the next: ``c`` (after the comma, within the backtrack) moves."""
    chunks, pieces = replay([plain("ab,cde")])
    assert chunks == [[BOS, *ids("ab,"), EOS, EOS], [BOS, *ids("cde"), EOS, EOS]]
    assert [p.position for p in pieces] == [1, 2, 3, 7, 8, 9]
    assert [p.start for p in pieces] == [0, 1, 2, 3, 4, 5]


def test_the_backtrack_reaches_exactly_its_length():
    text = "ab,cde"  # when d arrives, the comma is 2 tokens back from the chunk's end
    moved = [[BOS, *ids("ab,"), EOS, EOS], [BOS, *ids("cde"), EOS, EOS]]
    kept = [[BOS, *ids("ab,c"), EOS], [BOS, *ids("de"), EOS, EOS, EOS]]
    assert replay([plain(text)], backtrack=2)[0] == moved
    assert replay([plain(text)], backtrack=1)[0] == kept
    assert replay([plain(text)], backtrack=0)[0] == kept  # 0: the setting is off


def test_a_comma_counts_only_in_its_own_chunk():
    """After a chunk is closed, a comma of the previous chunk no longer pulls words along."""
    chunks, _ = replay([plain("a,bcdefg")])
    assert chunks == [[BOS, *ids("a,"), EOS, EOS, EOS], [BOS, *ids("bcde"), EOS], [BOS, *ids("fg"), EOS, EOS, EOS]]


def test_a_comma_that_ends_a_full_chunk_moves_nothing():
    chunks, _ = replay([plain("abc,d")])
    assert chunks == [[BOS, *ids("abc,"), EOS], [BOS, *ids("d"), EOS, EOS, EOS, EOS]]


def test_break_closes_the_chunk_even_when_empty():
    brk = Fragment("BREAK", -1, [2, 3, 4, 5, 6])
    chunks, pieces = replay([plain("ab"), brk, plain("c", at=8)])
    assert chunks == [[BOS, *ids("ab"), EOS, EOS, EOS], [BOS, ord("c"), EOS, EOS, EOS, EOS]]
    assert [(p.position, p.start, p.end) for p in pieces] == [(1, 0, 1), (2, 1, 2), (7, 8, 9)]
    chunks, _ = replay([brk, plain("c", at=6)])
    assert chunks == [[BOS, EOS, EOS, EOS, EOS, EOS], [BOS, ord("c"), EOS, EOS, EOS, EOS]]


def test_an_empty_prompt_is_one_chunk_of_padding():
    assert replay([plain("")]) == ([[BOS, EOS, EOS, EOS, EOS, EOS]], [])


def test_a_token_without_characters_of_its_fragment_has_no_span():
    def odd(text):  # one token with an empty span, one past the fragment's end, one inside
        return [5, 6, 7], [(0, 0), (0, len(text) + 1), (0, len(text))]

    _, pieces = replay_chunks([plain("ab", at=3)], odd, comma_id=COMMA, bos_id=BOS, eos_id=EOS, chunk_length=4)
    assert [(p.start, p.end) for p in pieces] == [(None, None), (None, None), (3, 5)]


def test_the_default_chunk_is_75_tokens_with_a_backtrack_of_20():
    chunks, pieces = replay_chunks([plain("a" * 75 + "b")], characters, comma_id=COMMA, bos_id=BOS, eos_id=EOS)
    assert [len(c) for c in chunks] == [77, 77]
    assert pieces[-1].position == 78
    text = "a" * 55 + "," + "b" * 19 + "c"  # at "c", the comma is 20 tokens before the chunk's end: the b's move
    chunks, _ = replay_chunks([plain(text)], characters, comma_id=COMMA, bos_id=BOS, eos_id=EOS)
    assert chunks[0][1:58] == [*ids("a" * 55 + ","), EOS] and chunks[1][1:22] == [*ids("b" * 19 + "c"), EOS]
    text = "a" * 54 + "," + "b" * 20 + "c"  # 21 tokens before the end: nothing moves
    chunks, _ = replay_chunks([plain(text)], characters, comma_id=COMMA, bos_id=BOS, eos_id=EOS)
    assert chunks[0][-2:] == [ord("b"), EOS] and chunks[1][1:3] == [ord("c"), EOS]


# --- alignment ------------------------------------------------------------------------------------------------------
def test_align_maps_the_encoded_text_back_to_the_typed_one():
    assert align("a cat", "a cat") == [0, 1, 2, 3, 4]
    assert align("a cat", "a cat, oil") == [0, 1, 2, 3, 4, None, None, None, None, None]
    assert align("a <lora:x:1> cat", "a  cat") == [0, 1, 12, 13, 14, 15]
    assert align("", "ab") == [None, None]
    assert align("ab", "") == []


def test_align_maps_a_long_prompt_of_repeated_characters():
    """No character is junk: in a prompt of 200 characters or more, characters that make up over 1% of it (spaces,
    common letters) still map."""
    typed = "a cat, " * 40
    assert align(typed, typed) == list(range(len(typed)))
    assert align(typed, "oil, " + typed) == [None] * 5 + list(range(len(typed)))
