"""The typed prompt's words behind the host's tokens: which text the host encoded for an image, its chunking
replayed (``process_texts``), each token's conditioning position and span in the prompt the user typed."""

from __future__ import annotations

import re
from typing import Any

from ... import prompt_syntax
from ...algebra import BatchLayout
from ...tokens import CONTEXT, Token, Tokenized
from .. import settings
from .host import step0_text, text_model
from .process import PROCESS

# an extra network's tag (``<lora:name:0.8>``), which the host takes out of the batch's prompts (A1111 1.10
# ``modules/extra_networks.py: re_extra_net``)
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def typed_prompt(p: Any, i: int) -> str:
    """What image ``i``'s words are shown on: the prompt the user typed (``p.prompt``; styles add to it around it),
    or, where an extension rewrote the batch's prompts (Dynamic Prompts, wildcards: ``p.prompt`` is then the
    template), the prompt that was generated."""
    prompt = getattr(p, "prompt", "")
    if isinstance(prompt, list):
        prompt = prompt[min(i, len(prompt) - 1)] if prompt else ""
    prompts = getattr(p, "prompts", None) or []
    generated = prompts[i] if i < len(prompts) else None
    if generated is not None and EXTRA_NETWORK.sub("", prompt or "") not in generated:
        return generated
    return prompt or ""


def encoded_subprompt(p: Any, image: int, sub: int) -> str:
    """The text the host encoded for AND sub-prompt ``sub`` of image ``image`` at step 0."""
    return step0_text(p, prompt_syntax.split_and(p.prompts[image])[sub][0])


def host_tokens(text: str, typed: str) -> Tokenized:
    """Pieces of the encoded sub-prompt ``text`` with their conditioning positions and spans in the ``typed`` prompt,
    replayed from the host's own chunking (``process_texts``); token-level only if the replay disagrees."""
    chunks = text_model().process_texts([text])[0][0]
    host_ids = [list(c.tokens) for c in chunks]
    tokenizer = PROCESS.tokenizer()

    def tokenize(fragment: str):
        enc = tokenizer(fragment, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    emphasis = settings.host_opt("emphasis", "Original")
    fragments = (
        prompt_syntax.parse_attention(text)
        if emphasis != "None"
        else [prompt_syntax.Fragment(text, 1.0, list(range(len(text))))]
    )
    ids, pieces = prompt_syntax.replay_chunks(
        fragments,
        tokenize,
        comma_id=tokenizer.convert_tokens_to_ids(",</w>"),
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        backtrack=int(settings.host_opt("comma_padding_backtrack", 20) or 0),
    )
    if ids != host_ids:
        flat = [t for chunk in host_ids for t in chunk]
        names = tokenizer.convert_ids_to_tokens(flat)
        tokens = [
            Token(id=t, text=names[k].replace("</w>", ""), start=-1, end=-1, position=k)
            for k, t in enumerate(flat)
            if k % CONTEXT != 0 and t != tokenizer.eos_token_id
        ]
        return Tokenized(prompt=typed, ids=host_ids, tokens=tokens)
    where = prompt_syntax.align(typed, text)
    tokens = []
    for piece in pieces:
        if piece.start is None or piece.end is None:
            continue
        mapped = [k for k in (where[j] for j in range(piece.start, piece.end)) if k is not None]
        if mapped:
            start, end = min(mapped), max(mapped) + 1
            tokens.append(Token(id=piece.id, text=typed[start:end], start=start, end=end, position=piece.position))
    return Tokenized(prompt=typed, ids=host_ids, tokens=tokens)


def keep_positions(chunks_ids: list[int], eos: int) -> list[int]:
    """BOS, prompt tokens and the first EOS of every 77-token chunk (Ren et al.'s padding mask keeps these)."""
    keep: list[int] = []
    for k in range(0, len(chunks_ids), CONTEXT):
        chunk = chunks_ids[k : k + CONTEXT]
        first_eos = next((j for j in range(1, len(chunk)) if chunk[j] == eos), len(chunk) - 1)
        keep.extend(range(k, k + first_eos + 1))
    return keep


def keep_ids(p: Any, image: int, row: int, lay: BatchLayout) -> list[int]:
    """:func:`keep_positions` of the sub-prompt the host encoded in cond row ``row`` of image ``image``."""
    sub = next(k for k, (r, _) in enumerate(lay.cond_rows[image]) if r == row)
    text = encoded_subprompt(p, image, sub)
    chunker = text_model()
    chunks = chunker.process_texts([text])[0][0]
    ids = [t for c in chunks for t in c.tokens]
    return keep_positions(ids, getattr(chunker, "id_end", 49407))
