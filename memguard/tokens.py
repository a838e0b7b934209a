"""The CLIP BPE tokenizer built offline, and the 77-token chunk arithmetic every host shares.

Stable Diffusion v1 conditions on CLIP ViT-L/14 text features: a prompt is cut into chunks of
75 BPE tokens, each chunk is framed as ``[BOS] t_1 .. t_75 [EOS/pad ...]`` (77 positions), and
the chunks' encodings are concatenated along the sequence axis (the WebUI's long-prompt scheme).
Position ``k*77 + 1 + i`` therefore holds prompt token ``75*k + i``.

The vocabulary is rebuilt from the BPE merges file that ``open-clip-torch`` ships
(``bpe_simple_vocab_16e6.txt.gz``), following the construction described in Radford et al. 2021
(byte-level alphabet, its end-of-word variants, then one entry per merge, then the two specials):
49,408 ids, identical to the ``openai/clip-vit-large-patch14`` tokenizer.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CONTEXT = 77
CHUNK = CONTEXT - 2
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
VOCAB_SIZE = 49408
_N_MERGES = VOCAB_SIZE - 2 * 256 - 2


def clip_bpe_path() -> Path:
    """Locate ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open-clip-torch, without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the CLIP BPE vocabulary comes from open-clip-torch: pip install --no-deps open-clip-torch"
        )
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open-clip-torch is installed but has no {path.name}")
    return path


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP reversible byte alphabet in vocabulary order.

    Printable bytes stand for themselves and come first; the other bytes follow, mapped to 256, 257, ...
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(rest))]


def clip_vocab(bpe_path: Path | None = None) -> tuple[dict[str, int], list[str]]:
    """Return ``(token -> id, merges)`` for the CLIP BPE, built from the merges file alone."""
    with gzip.open(bpe_path or clip_bpe_path(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = lines[1 : 1 + _N_MERGES]
    alphabet = _byte_alphabet()
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tokenizer_files(directory: Path, bpe_path: Path | None = None) -> Path:
    """Write a diffusers-layout ``tokenizer/`` folder (vocab.json, merges.txt, configs) for SD1's CLIP."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab(bpe_path)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CONTEXT,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    return directory


def load_tokenizer(directory: Path | None = None):
    """A fast ``transformers`` CLIP tokenizer from a ``tokenizer/`` folder, or built offline when none is given.

    Fast, because only the Rust tokenizer gives character offsets (transformers 4.x's slow ``CLIPTokenizer`` refuses
    ``return_offsets_mapping``); loaded from files, because that is the one constructor transformers 4.30 (A1111),
    4.46 (Forge) and 5.x share. Without a folder the vocabulary is written from open-clip-torch's merges file to a
    temporary folder first (:func:`write_tokenizer_files`).
    """
    from transformers import CLIPTokenizerFast  # type: ignore[attr-defined]  # transformers 5: a lazy alias of CLIPTokenizer

    if directory is not None:
        tokenizer = CLIPTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    else:
        with tempfile.TemporaryDirectory(prefix="memguard-clip-") as folder:
            tokenizer = CLIPTokenizerFast.from_pretrained(write_tokenizer_files(Path(folder)), local_files_only=True)
    tokenizer.model_max_length = 1 << 30  # memguard chunks long prompts itself (see ``tokenize``)
    return tokenizer


@dataclass(frozen=True)
class Token:
    """One BPE piece of the prompt: id, text, character span in the prompt, position in the conditioning."""

    id: int
    text: str
    start: int
    end: int
    position: int


@dataclass(frozen=True)
class Tokenized:
    """A prompt cut into 77-token chunks: ``ids`` is ``n_chunks x 77`` with BOS/EOS/padding; ``tokens`` its pieces."""

    prompt: str
    ids: list[list[int]]
    tokens: list[Token]

    @property
    def n_chunks(self) -> int:
        return len(self.ids)


def position_of(index: int) -> int:
    """Sequence position of the ``index``-th prompt token in the concatenated chunks (``k*77 + 1 + i``)."""
    chunk, offset = divmod(index, CHUNK)
    return chunk * CONTEXT + 1 + offset


def well_formed(text: str) -> bool:
    """Whether ``text`` is well-formed Unicode (no unpaired surrogate, which JSON and JavaScript strings can carry
    but no tokenizer encodes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def tokenize(tokenizer, prompt: str, max_chunks: int | None = None) -> Tokenized:
    """Tokenize ``prompt`` into 75-token chunks framed as SD's 77-token contexts, with character spans.

    ``max_chunks=1`` reproduces the plain diffusers truncation to 77 tokens. Raises ``ValueError`` for a prompt that
    is not :func:`well_formed`.
    """
    return tokenize_many(tokenizer, [prompt], max_chunks)[0]


def tokenize_many(tokenizer, prompts: Sequence[str], max_chunks: int | None = None) -> list[Tokenized]:
    """:func:`tokenize` for many prompts in one call of the (Rust) fast tokenizer; the same result per prompt."""
    for prompt in prompts:
        if not well_formed(prompt):
            raise ValueError("the prompt is not well-formed Unicode (it holds an unpaired surrogate)")
    if not prompts:
        return []
    enc = tokenizer(list(prompts), add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    return [
        _framed(prompt, ids, offsets, max_chunks, bos, eos, pad)
        for prompt, ids, offsets in zip(prompts, enc["input_ids"], enc["offset_mapping"])
    ]


def _framed(prompt: str, ids: list[int], offsets: list, max_chunks: int | None, bos: int, eos: int, pad: int):
    n_chunks = max(1, -(-len(ids) // CHUNK))
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
        ids, offsets = ids[: n_chunks * CHUNK], offsets[: n_chunks * CHUNK]
    rows = []
    for k in range(n_chunks):
        body = ids[k * CHUNK : (k + 1) * CHUNK]
        rows.append([bos, *body, eos] + [pad] * (CHUNK - len(body)))
    tokens = [
        Token(id=i, text=prompt[s:e], start=s, end=e, position=position_of(j))
        for j, (i, (s, e)) in enumerate(zip(ids, offsets))
    ]
    return Tokenized(prompt=prompt, ids=rows, tokens=tokens)
