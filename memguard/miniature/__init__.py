"""A miniature, bundled text-to-image diffusion model that memorizes some of its training captions.

The model is a pixel-space (3x16x16) Stable-Diffusion-1-shaped pipeline: a tiny frozen CLIP text encoder,
a tiny ``UNet2DConditionModel`` predicting epsilon, SD1's scheduler and CLIP tokenizer. It is trained from
scratch by :mod:`memguard.miniature.train` on procedural data where a few captions and images are heavily
duplicated (verbatim and template memorization), so memorization detectors can be tested without network
access or a GPU. :mod:`memguard.miniature.fidelity` measures what the benchmark needs on its outputs.
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"
XL_MODEL_DIR = Path(__file__).parent / "model_xl"  # the SDXL-shaped miniature (memguard.miniature.xl)

__all__ = ["MODEL_DIR", "XL_MODEL_DIR"]
