"""Mirrors ``modules/sd_emphasis.py`` of A1111 1.10.1: how ``(word:1.2)`` multipliers are applied to CLIP output.

``Original`` multiplies each token's embedding by its multiplier and rescales the whole chunk batch back to its
original mean (except when the new mean is exactly 0, see ``EmphasisOriginal``); ``No norm`` multiplies only;
``Ignore`` and ``None`` leave the encoding unchanged (``None`` also stops the prompt from being parsed for emphasis,
see ``sd_hijack_clip.TextConditionalModel.tokenize_line``).
"""

from __future__ import annotations

import torch


class Emphasis:
    name = "Base"
    description = ""
    tokens: list[list[int]]
    multipliers: torch.Tensor
    z: torch.Tensor

    def after_transformers(self) -> None:
        """Modify ``self.z`` (B, 77, C) using ``self.multipliers`` (B, 77)."""


class EmphasisNone(Emphasis):
    name = "None"
    description = "disable the mechanism entirely and treat (:.1.1) as literal characters"


class EmphasisIgnore(Emphasis):
    name = "Ignore"
    description = "treat all empasised words as if they have no emphasis"


class EmphasisOriginal(Emphasis):
    name = "Original"
    description = "the original emphasis implementation"

    def after_transformers(self) -> None:
        mean_before = self.z.mean()
        self.z = self.z * self.multipliers.unsqueeze(-1).expand(self.z.shape)
        mean_after = self.z.mean()
        # Deviation: the host divides unconditionally. An untrained text encoder whose final layer norm has no bias
        # can give an encoding with a mean of exactly 0.0, and 0/0 would turn the whole cond into NaN; real SD
        # encoders never do. The double leaves such an encoding unscaled (the host's factor is 1 otherwise when
        # all multipliers are 1).
        if mean_after != 0:
            self.z = self.z * (mean_before / mean_after)


class EmphasisOriginalNoNorm(EmphasisOriginal):
    name = "No norm"
    description = "same as original, but without normalization (seems to work better for SDXL)"

    def after_transformers(self) -> None:
        self.z = self.z * self.multipliers.unsqueeze(-1).expand(self.z.shape)


options = [EmphasisNone, EmphasisIgnore, EmphasisOriginal, EmphasisOriginalNoNorm]


def get_current_option(emphasis_option_name: str) -> type[Emphasis]:
    return next((x for x in options if x.name == emphasis_option_name), EmphasisOriginal)


def get_options_descriptions() -> str:
    return ", ".join(f"{x.name}: {x.description}" for x in options)
