"""Mirrors ``modules/sd_hijack_clip.py`` of A1111 1.10.1: ``PromptChunk``, ``TextConditionalModel`` and
``FrozenCLIPEmbedderWithCustomWords`` (SD1's ``shared.sd_model.cond_stage_model``).

Behaviour kept:

* ``tokenize(texts)``: the HF tokenizer without special tokens and without truncation;
* ``tokenize_line(line)``: ``parse_prompt_attention`` fragments tokenized separately; ``BREAK`` closes the chunk;
  a chunk closes at 75 tokens, and with ``opts.comma_padding_backtrack`` (20) the tokens after the last comma
  within that distance move to the next chunk; each chunk becomes ``[id_start] + 75 tokens + [id_end]`` padded with
  ``id_end`` (77 ids) with multiplier 1.0 on BOS/EOS/padding; returns ``(chunks, token_count)``;
* ``process_texts`` (per-line cache), ``empty_chunk``, ``get_target_prompt_token_count``;
* ``forward(texts)``: per chunk index, a batch through the text encoder (``CLIP_stop_at_last_layers`` honoured with
  the final layer norm), then the emphasis of ``opts.emphasis``; ``torch.hstack`` of the chunks -> (B, 77*k, C);
  sets ``model_hijack.extra_generation_params["Emphasis"]`` like the host.

* ``return_pooled`` (SDXL's CLIP-G): ``forward`` returns ``(z, pooled)``, the pooled output of the first chunk, kept on
  ``z.pooled`` through the emphasis (``process_tokens``); ``id_pad != id_end`` (OpenCLIP) pads after the first EOS;
* ``FrozenCLIPEmbedderForSDXLWithCustomWords``: SDXL's CLIP-L (the wrapped embedder's ``layer``/``layer_idx``,
  ``opts.sdxl_clip_l_skip``). The OpenCLIP wrappers (SD2, SDXL's CLIP-G) are in ``sd_hijack_open_clip.py``.

Simplification: no textual-inversion embeddings (``fixes`` stay empty).
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import Any

import torch
from modules import devices, prompt_parser, sd_emphasis, sd_hijack
from modules.shared import opts


class PromptChunk:
    """77 token ids, their 77 multipliers, and textual-inversion fixes (always empty in the double)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.multipliers: list[float] = []
        self.fixes: list = []


PromptChunkFix = namedtuple("PromptChunkFix", ["offset", "embedding"])


class TextConditionalModel(torch.nn.Module):
    """Long-prompt text conditioning: 75-token chunks encoded separately and concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.hijack = sd_hijack.model_hijack
        self.chunk_length = 75
        self.is_trainable = False
        self.input_key = "txt"
        self.return_pooled = False
        self.comma_token: int | None = None
        self.id_start: int | None = None
        self.id_end: int | None = None
        self.id_pad: int | None = None

    def empty_chunk(self) -> PromptChunk:
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def get_target_prompt_token_count(self, token_count: int) -> int:
        return math.ceil(max(token_count, 1) / self.chunk_length) * self.chunk_length

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode_with_transformers(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tokenize_line(self, line: str) -> tuple[list[PromptChunk], int]:
        """Cut one prompt into 77-id chunks with per-token multipliers; also return its token count."""
        parsed = prompt_parser.parse_prompt_attention(line) if opts.emphasis != "None" else [[line, 1.0]]
        tokenized = self.tokenize([text for text, _ in parsed])

        chunks: list[PromptChunk] = []
        current = PromptChunk()
        count = 0
        last_comma = -1

        def close(is_last: bool = False) -> None:
            nonlocal current, count, last_comma
            count += len(current.tokens) if is_last else self.chunk_length
            missing = self.chunk_length - len(current.tokens)
            if missing > 0:
                current.tokens += [self.id_end] * missing
                current.multipliers += [1.0] * missing
            current.tokens = [self.id_start] + current.tokens + [self.id_end]
            current.multipliers = [1.0] + current.multipliers + [1.0]
            last_comma = -1
            chunks.append(current)
            current = PromptChunk()

        for tokens, (text, weight) in zip(tokenized, parsed):
            if text == "BREAK" and weight == -1:
                close()
                continue
            position = 0
            while position < len(tokens):
                token = tokens[position]
                full = len(current.tokens) == self.chunk_length
                if token == self.comma_token:
                    last_comma = len(current.tokens)
                elif (
                    opts.comma_padding_backtrack != 0
                    and full
                    and last_comma != -1
                    and len(current.tokens) - last_comma <= opts.comma_padding_backtrack
                ):
                    cut = last_comma + 1
                    moved_tokens, moved_mults = current.tokens[cut:], current.multipliers[cut:]
                    current.tokens, current.multipliers = current.tokens[:cut], current.multipliers[:cut]
                    close()
                    current.tokens, current.multipliers = moved_tokens, moved_mults
                if len(current.tokens) == self.chunk_length:
                    close()
                embedding, embedding_length = self.hijack.embedding_db.find_embedding_at_position(tokens, position)
                if embedding is None:
                    current.tokens.append(token)
                    current.multipliers.append(weight)
                    position += 1
                    continue
                vectors = int(embedding.vectors)
                if len(current.tokens) + vectors > self.chunk_length:
                    close()
                current.fixes.append(PromptChunkFix(len(current.tokens), embedding))
                current.tokens += [0] * vectors
                current.multipliers += [weight] * vectors
                position += embedding_length

        if current.tokens or not chunks:
            close(is_last=True)
        return chunks, count

    def process_texts(self, texts: list[str]) -> tuple[list[list[PromptChunk]], int]:
        """Chunks for each text (cached per distinct line) and the largest token count."""
        token_count = 0
        cache: dict[str, list[PromptChunk]] = {}
        batch_chunks = []
        for line in texts:
            if line not in cache:
                cache[line], line_count = self.tokenize_line(line)
                token_count = max(line_count, token_count)
            batch_chunks.append(cache[line])
        return batch_chunks, token_count

    def forward(self, texts: list[str]) -> torch.Tensor:
        """(B, 77 * n_chunks, C): chunk ``i`` of every text encoded as one batch, then concatenated."""
        batch_chunks, _ = self.process_texts(texts)
        n_chunks = max(len(chunks) for chunks in batch_chunks)
        zs = []
        for i in range(n_chunks):
            batch = [chunks[i] if i < len(chunks) else self.empty_chunk() for chunks in batch_chunks]
            self.hijack.fixes = [chunk.fixes for chunk in batch]
            zs.append(self.process_tokens([c.tokens for c in batch], [c.multipliers for c in batch]))
        if any("(" in x or "[" in x for x in texts) and opts.emphasis != "Original":
            self.hijack.extra_generation_params["Emphasis"] = opts.emphasis
        if self.return_pooled:
            return torch.hstack(zs), zs[0].pooled
        return torch.hstack(zs)

    def process_tokens(
        self, remade_batch_tokens: list[list[int]], batch_multipliers: list[list[float]]
    ) -> torch.Tensor:
        """Encode one chunk batch and apply the emphasis option."""
        tokens = torch.asarray(remade_batch_tokens).to(devices.device)
        if self.id_end != self.id_pad:
            for row, ids in enumerate(remade_batch_tokens):
                tokens[row, ids.index(self.id_end) + 1 :] = self.id_pad
        z = self.encode_with_transformers(tokens)
        pooled = getattr(z, "pooled", None)
        emphasis = sd_emphasis.get_current_option(opts.emphasis)()
        emphasis.tokens = remade_batch_tokens
        emphasis.multipliers = torch.asarray(batch_multipliers).to(devices.device)
        emphasis.z = z
        emphasis.after_transformers()
        z = emphasis.z
        if pooled is not None:
            z.pooled = pooled
        return z


def _text_model(transformer: torch.nn.Module) -> torch.nn.Module:
    """``transformer.text_model`` (transformers 4.x, the host's); transformers 5 flattened it into the model."""
    return getattr(transformer, "text_model", transformer)


class FrozenCLIPEmbedder(torch.nn.Module):
    """Stand-in for ldm's ``FrozenCLIPEmbedder``: holds ``tokenizer`` (HF CLIPTokenizer) and ``transformer``
    (HF CLIPTextModel), frozen."""

    def __init__(self, tokenizer: Any, transformer: torch.nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.layer = "last"
        self.layer_idx = None


class FrozenCLIPEmbedderWithCustomWordsBase(TextConditionalModel):
    def __init__(self, wrapped: FrozenCLIPEmbedder, hijack: Any):
        super().__init__()
        self.hijack = hijack
        self.wrapped = wrapped
        self.is_trainable = getattr(wrapped, "is_trainable", False)
        self.input_key = getattr(wrapped, "input_key", "txt")
        self.return_pooled = getattr(wrapped, "return_pooled", False)
        self.legacy_ucg_val = None


class FrozenCLIPEmbedderWithCustomWords(FrozenCLIPEmbedderWithCustomWordsBase):
    """SD1 conditioning model: ``wrapped.tokenizer``, ``id_start``/``id_end``/``id_pad``, ``comma_token``."""

    def __init__(self, wrapped: FrozenCLIPEmbedder, hijack: Any):
        super().__init__(wrapped, hijack)
        self.tokenizer = wrapped.tokenizer
        vocab = self.tokenizer.get_vocab()
        self.comma_token = vocab.get(",</w>", None)
        self.token_mults: dict[int, float] = {}
        for text, ident in vocab.items():
            if not any(c in text for c in "()[]"):
                continue
            mult = 1.0
            for c in text:
                mult = mult / 1.1 if c in "[)" else mult * 1.1 if c in "](" else mult
            if mult != 1.0:
                self.token_mults[ident] = mult
        self.id_start = self.wrapped.tokenizer.bos_token_id
        self.id_end = self.wrapped.tokenizer.eos_token_id
        self.id_pad = self.id_end

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.wrapped.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def encode_with_transformers(self, tokens: torch.Tensor) -> torch.Tensor:
        skip = opts.CLIP_stop_at_last_layers
        outputs = self.wrapped.transformer(input_ids=tokens, output_hidden_states=-skip)
        if skip > 1:
            return _text_model(self.wrapped.transformer).final_layer_norm(outputs.hidden_states[-skip])
        return outputs.last_hidden_state

    def encode_embedding_init_text(self, init_text: str, nvpt: int) -> torch.Tensor:
        embedding_layer = _text_model(self.wrapped.transformer).embeddings
        ids = self.wrapped.tokenizer(init_text, max_length=nvpt, return_tensors="pt", add_special_tokens=False)[
            "input_ids"
        ]
        return embedding_layer.token_embedding(ids).squeeze(0)


class FrozenCLIPEmbedderForSDXLWithCustomWords(FrozenCLIPEmbedderWithCustomWords):
    """SDXL's CLIP-L: the hidden state the wrapped sgm embedder names (``layer`` "hidden" at ``layer_idx``), or
    ``CLIP_stop_at_last_layers`` from the end with ``opts.sdxl_clip_l_skip``; no final layer norm."""

    def encode_with_transformers(self, tokens: torch.Tensor) -> torch.Tensor:
        outputs = self.wrapped.transformer(input_ids=tokens, output_hidden_states=self.wrapped.layer == "hidden")
        if opts.sdxl_clip_l_skip is True:
            return outputs.hidden_states[-opts.CLIP_stop_at_last_layers]
        if self.wrapped.layer == "last":
            return outputs.last_hidden_state
        return outputs.hidden_states[self.wrapped.layer_idx]
