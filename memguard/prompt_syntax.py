"""The WebUI's prompt syntax, with character positions kept, so scores can be shown on the words the user typed.

The WebUI (A1111 1.10.1 ``modules/prompt_parser.py``, ``parse_prompt_attention``; ``modules/sd_hijack_clip.py``,
``tokenize_line``) strips emphasis brackets, merges runs of equal weight, tokenizes each run on its own, and packs the
tokens into 75-token chunks (a ``BREAK`` starts a new chunk; text after the last comma within
``comma_padding_backtrack`` tokens of a full chunk moves to the next one). It drops character positions on the way.
This module re-derives the same fragments and chunks while carrying, for every character, where it came from, so
each conditioning position maps back to a span of the prompt. The host's own token ids stay the reference: callers
compare the replayed chunks with the host's and fall back to token-level display if they differ.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .tokens import CHUNK

_ATTENTION = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:",
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


@dataclass
class Fragment:
    """A run of text with one emphasis weight; ``source[i]`` is the prompt index of ``text[i]``. BREAK has weight -1."""

    text: str
    weight: float
    source: list[int] = field(default_factory=list)

    @property
    def is_break(self) -> bool:
        return self.text == "BREAK" and self.weight == -1


def split_and(prompt: str) -> list[tuple[str, float, int]]:
    """``AND`` sub-prompts as ``(text, weight, offset in prompt)`` (mirrors ``get_multicond_prompt_list``)."""
    out, start = [], 0
    for part in _AND.split(prompt):
        match = _WEIGHT.search(part)
        text, weight = match.groups() if match else (part, None)
        out.append((text, float(weight) if weight is not None else 1.0, start))
        start += len(part) + len("AND")
    return out


def parse_attention(text: str) -> list[Fragment]:
    """Emphasis fragments exactly as the WebUI derives them, with each character's index in ``text``."""
    res: list[Fragment] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for frag in res[start:]:
            frag.weight *= factor

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            res.append(Fragment(token[1:], 1.0, list(range(m.start() + 1, m.end()))))
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            multiply(square_open.pop(), 1 / 1.1)
        else:
            cursor = 0
            for brk in [*_BREAK.finditer(token), None]:
                end = brk.start() if brk is not None else len(token)
                res.append(Fragment(token[cursor:end], 1.0, list(range(m.start() + cursor, m.start() + end))))
                if brk is not None:
                    # the keyword keeps its characters: inside brackets its weight is scaled and the host then
                    # encodes it as the word "BREAK"
                    at = m.start() + brk.start() + brk.group(0).index("BREAK")
                    res.append(Fragment("BREAK", -1, list(range(at, at + len("BREAK")))))
                    cursor = brk.end()
    for pos in round_open:
        multiply(pos, 1.1)
    for pos in square_open:
        multiply(pos, 1 / 1.1)
    if not res:
        res = [Fragment("", 1.0)]
    merged = [res[0]]
    for frag in res[1:]:
        if merged[-1].weight == frag.weight:
            merged[-1] = Fragment(merged[-1].text + frag.text, frag.weight, merged[-1].source + frag.source)
        else:
            merged.append(frag)
    return merged


@dataclass(frozen=True)
class Piece:
    """One token of the replayed chunks: id, conditioning position, and prompt span (``None`` when unknown)."""

    id: int
    position: int
    start: int | None
    end: int | None
    weight: float


Tokenizer = Callable[[str], tuple[list[int], list[tuple[int, int]]]]


def replay_chunks(
    fragments: Sequence[Fragment],
    tokenize: Tokenizer,
    *,
    comma_id: int,
    bos_id: int,
    eos_id: int,
    backtrack: int = 20,
    chunk_length: int = CHUNK,
) -> tuple[list[list[int]], list[Piece]]:
    """Pack fragment tokens into 77-id chunks as the WebUI does (mirrors ``tokenize_line``; no textual inversion).

    ``tokenize(text)`` returns the ids and character offsets of ``text``. Returns the chunks' ids and one
    :class:`Piece` per prompt token.
    """
    chunks: list[list[int]] = []
    pieces: list[Piece] = []
    chunk: list[tuple[int, int | None, int | None, float]] = []
    last_comma = -1

    def close() -> None:
        nonlocal chunk, last_comma
        base = len(chunks) * (chunk_length + 2)
        for i, (tid, s, e, w) in enumerate(chunk):
            pieces.append(Piece(tid, base + 1 + i, s, e, w))
        chunks.append([bos_id] + [t for t, *_ in chunk] + [eos_id] * (chunk_length - len(chunk) + 1))
        chunk, last_comma = [], -1

    for frag in fragments:
        if frag.is_break:
            close()
            continue
        ids, offsets = tokenize(frag.text)
        for tid, (s, e) in zip(ids, offsets):
            span = (frag.source[s], frag.source[e - 1] + 1) if e > s and e <= len(frag.source) else (None, None)
            if tid == comma_id:
                last_comma = len(chunk)
            elif backtrack and len(chunk) == chunk_length and last_comma != -1 and len(chunk) - last_comma <= backtrack:
                moved = chunk[last_comma + 1 :]
                chunk = chunk[: last_comma + 1]
                close()
                chunk = moved
            if len(chunk) == chunk_length:
                close()
            chunk.append((tid, *span, frag.weight))
    if chunk or not chunks:
        close()
    return chunks, pieces


def align(typed: str, encoded: str) -> list[int | None]:
    """For each character of ``encoded`` (the text the host encoded: styles added, LoRA tags removed, prompt
    editing resolved), its index in ``typed`` (what the user typed), or ``None`` where it has no counterpart."""
    out: list[int | None] = [None] * len(encoded)
    matcher = difflib.SequenceMatcher(a=encoded, b=typed, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            out[a + k] = b + k
    return out
