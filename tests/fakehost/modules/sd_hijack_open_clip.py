"""Mirrors ``modules/sd_hijack_open_clip.py`` of A1111 1.10.1: ``FrozenOpenCLIPEmbedderWithCustomWords`` (SD2's
``cond_stage_model``) and ``FrozenOpenCLIPEmbedder2WithCustomWords`` (SDXL's CLIP-G embedder), and the OpenCLIP
embedders they wrap (ldm's ``FrozenOpenCLIPEmbedder``, sgm's ``FrozenOpenCLIPEmbedder2``, ``modules.py`` of
``Stability-AI/stablediffusion`` and ``Stability-AI/generative-models``).

Behaviour kept:

* the long-prompt chunking of ``sd_hijack_clip.TextConditionalModel`` (both embedders of SDXL chunk identically);
* ``id_start``/``id_end`` from the tokenizer and ``id_pad = 0`` (open_clip pads with "!"): ``process_tokens`` puts
  0 after each chunk's first EOS;
* SD2: ``encode_with_transformer`` = the penultimate layer's output through the final layer norm (ldm's
  ``layer="penultimate"``);
* SDXL's CLIP-G: ``encode_with_transformer`` returns ``{"last", "penultimate", "pooled"}`` (sgm with
  ``legacy=False``); the wrapper takes ``layer`` ("penultimate", no final layer norm) and keeps ``pooled`` (the
  final layer's EOS state through the text projection) on ``z.pooled``.

Stand-ins: open_clip's ``SimpleTokenizer`` is the HF CLIP tokenizer over the same BPE vocabulary (``tokenizer``), and
open_clip's text tower is an HF ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` (``model``). Textual-inversion
embeddings are not mirrored.
"""

from __future__ import annotations

from typing import Any

import torch
from modules import sd_hijack_clip


class FrozenOpenCLIPEmbedder(torch.nn.Module):
    """ldm's ``FrozenOpenCLIPEmbedder`` (SD2): ``layer="penultimate"``, output through ``ln_final``."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module, layer: str = "penultimate"):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.layer = layer
        self.layer_idx = {"last": 0, "penultimate": 1}[layer]

    def encode_with_transformer(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=tokens, output_hidden_states=True)
        hidden = out.hidden_states[-1 - self.layer_idx]
        return sd_hijack_clip._text_model(self.model).final_layer_norm(hidden)


class FrozenOpenCLIPEmbedder2(torch.nn.Module):
    """sgm's ``FrozenOpenCLIPEmbedder2`` as SDXL configures it (``layer="penultimate"``, ``always_return_pooled``,
    ``legacy=False``)."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module, layer: str = "penultimate"):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.layer = layer
        self.layer_idx = {"last": 0, "penultimate": 1}[layer]
        self.return_pooled = True
        self.legacy = False

    def encode_with_transformer(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(input_ids=tokens, output_hidden_states=True)
        return {"last": out.last_hidden_state, "penultimate": out.hidden_states[-2], "pooled": out.text_embeds}


class _OpenCLIPWords(sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase):
    def __init__(self, wrapped: Any, hijack: Any):
        super().__init__(wrapped, hijack)
        vocab = wrapped.tokenizer.get_vocab()
        self.comma_token = vocab[",</w>"]
        self.id_start = vocab["<|startoftext|>"]
        self.id_end = vocab["<|endoftext|>"]
        self.id_pad = 0

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.wrapped.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]


class FrozenOpenCLIPEmbedderWithCustomWords(_OpenCLIPWords):
    """SD2's ``cond_stage_model``."""

    def encode_with_transformers(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.wrapped.encode_with_transformer(tokens)


class FrozenOpenCLIPEmbedder2WithCustomWords(_OpenCLIPWords):
    """SDXL's CLIP-G embedder: the ``layer`` state as ``z``, the pooled projection on ``z.pooled``."""

    def encode_with_transformers(self, tokens: torch.Tensor) -> torch.Tensor:
        d = self.wrapped.encode_with_transformer(tokens)
        z = d[self.wrapped.layer]
        pooled = d.get("pooled")
        if pooled is not None:
            z.pooled = pooled
        return z
