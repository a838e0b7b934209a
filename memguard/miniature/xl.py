"""The SDXL-shaped miniature: the same procedural data and training as :mod:`memguard.miniature.train`, with SDXL's
conditioning structure (Podell et al. 2023, "SDXL", Sec. 2.1-2.2; diffusers' ``StableDiffusionXLPipeline`` layout).

    python -m memguard.miniature.train --arch sdxl [--out DIR] [--seed 0] [--minutes 10]

* two tiny CLIP text encoders, both frozen at their random initialization (as the SD1 miniature's): ``text_encoder``
  (a ``CLIPTextModel``, CLIP-L's place) and ``text_encoder_2`` (a ``CLIPTextModelWithProjection``, OpenCLIP-G's
  place); the cross-attention context is the channel concatenation of both encoders' penultimate hidden states,
  the pooled vector ``text_encoder_2``'s projected EOS state (``text_embeds``);
* ``tokenizer_2`` pads with ``"!"`` (id 0) as SDXL's OpenCLIP tokenizer does, ``tokenizer`` with EOS: the token
  positions of both streams coincide;
* a tiny ``UNet2DConditionModel`` with ``addition_embed_type="text_time"``: the pooled vector and the six size/crop
  numbers (original size, crop top-left, target size; here always 16, 16, 0, 0, 16, 16) enter the timestep
  embedding;
* caption dropout by **zeroing** both the context and the pooled vector (as SDXL was trained: sgm's
  ``GeneralConditioner`` multiplies a dropped embedder's output by 0), the size/crop numbers kept;
* SDXL's scheduler configuration (scaled-linear betas 0.00085-0.012, "leading" spacing, steps offset 1).

The fidelity classifier is the SD1 miniature's (``eval/``, copied): it reads the same 3x16x16 pictures of the same
data generator.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..tokens import load_tokenizer, write_tokenizer_files
from . import MODEL_DIR, XL_MODEL_DIR
from .data import IMAGE_SIZE
from .dataset import MiniatureData, build
from .train import (
    BATCH_SIZE,
    CAPTION_DROPOUT,
    SCHEDULE,
    STEPS_PER_MINUTE,
    build_unet,
    log,
    random_text_encoder,
    token_ids,
    train_epsilon,
    write_json,
    write_model_index,
    write_prompts,
    write_references,
)

TEXT_WIDTHS = (32, 32)  # text_encoder (CLIP-L's place), text_encoder_2 (OpenCLIP-G's place)
TEXT_LAYERS = 3  # the penultimate state is the output of layer 2
POOLED_DIM = 32
TIME_EMBED_DIM = 8  # addition_time_embed_dim: sinusoidal features per size/crop number (SDXL: 256)
TIME_IDS = (IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE)
PAD_2 = "!"  # SDXL's tokenizer_2 (OpenCLIP) pads with id 0, the byte "!"
SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    **SCHEDULE,
    "interpolation_type": "linear",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
OUTPUTS = (
    "unet",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
    "prompts",
    "references",
    "eval",
)


def build_unet_xl():
    """The tiny pixel-space SDXL-shaped UNet: SD1 miniature's blocks, linear attention projections (SDXL's), and the
    ``text_time`` added embedding of the pooled vector and the six size/crop numbers."""
    return build_unet(
        sum(TEXT_WIDTHS),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=POOLED_DIM + len(TIME_IDS) * TIME_EMBED_DIM,
    )


def build_text_encoders():
    """``(text_encoder, text_encoder_2)``, drawn in that order from torch's global generator (see
    ``train.random_text_encoder``): CLIP-L's place (quick GELU, EOS padding) and OpenCLIP-G's (GELU, padding 0)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    first = random_text_encoder(CLIPTextModel, TEXT_WIDTHS[0], TEXT_LAYERS, POOLED_DIM)
    second = random_text_encoder(
        CLIPTextModelWithProjection, TEXT_WIDTHS[1], TEXT_LAYERS, POOLED_DIM, hidden_act="gelu", pad_token_id=0
    )
    return first, second


def padded_2(ids: Tensor, pad: int = 0) -> Tensor:
    """``tokenizer_2``'s framing of the same tokens: every position after a row's first EOS is ``pad``."""
    eos = (ids == 49407).int().argmax(dim=1, keepdim=True)
    after = torch.arange(ids.shape[1]).unsqueeze(0) > eos
    return ids.masked_fill(after, pad)


@torch.no_grad()
def condition(text_encoder, text_encoder_2, ids: Tensor) -> tuple[Tensor, Tensor]:
    """``(context, pooled)`` of 77-token rows: both encoders' penultimate states concatenated on the channels, and
    ``text_encoder_2``'s projected pooled output (diffusers' ``encode_prompt``, reimplemented)."""
    first = text_encoder(input_ids=ids, output_hidden_states=True)
    second = text_encoder_2(input_ids=padded_2(ids), output_hidden_states=True)
    return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds


def train_unet_xl(data: MiniatureData, encoders, tokenizer, steps: int, seed: int, device: str):
    """``train.train_epsilon`` with SDXL's added conditioning and caption dropout by zeroing context and pooled."""
    ids = token_ids(tokenizer, data.captions)
    encoders = [e.to(device) for e in encoders]
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32, device=device)

    def condition_xl(captions: Tensor, generator: torch.Generator) -> dict[str, Any]:
        context, pooled = condition(encoders[0], encoders[1], ids[captions].to(device))
        kept = (torch.rand(len(captions), generator=generator) >= CAPTION_DROPOUT).float().to(device)
        context, pooled = context * kept[:, None, None], pooled * kept[:, None]
        added = {"text_embeds": pooled, "time_ids": time_ids.expand(len(captions), -1)}
        return {"encoder_hidden_states": context, "added_cond_kwargs": added}

    return train_epsilon(build_unet_xl, data, steps, seed, device, condition_xl)


def write_tokenizer_2(folder: Path) -> None:
    """The CLIP BPE files with SDXL's ``tokenizer_2`` special tokens (padding ``"!"``)."""
    write_tokenizer_files(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((folder / name).read_text(encoding="utf-8"))
        config["pad_token"] = PAD_2
        (folder / name).write_text(json.dumps(config, indent=2), encoding="utf-8")


def write_pipeline_xl(out: Path, unet, text_encoder, text_encoder_2) -> None:
    """UNet (fp32), text encoders (fp16), both tokenizers, the scheduler config and ``model_index.json``."""
    unet.save_pretrained(out / "unet", safe_serialization=True)
    for name, encoder in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        encoder.half().save_pretrained(out / name, safe_serialization=True)
        encoder.float()
    write_tokenizer_files(out / "tokenizer")
    write_tokenizer_2(out / "tokenizer_2")
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    write_json(out / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    entries = {
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
    }
    write_model_index(out, "StableDiffusionXLPipeline", entries)


def main_xl(args: argparse.Namespace) -> None:
    """Train and write the SDXL-shaped miniature (``args`` from ``train.parse_args``)."""
    steps = args.steps if args.steps is not None else round(args.minutes * STEPS_PER_MINUTE)
    began = time.time()
    data = build(args.seed)
    log(f"data: {data.counts}  {time.time() - began:.0f}s")
    torch.manual_seed(args.seed)
    encoders = build_text_encoders()
    unet = train_unet_xl(data, encoders, load_tokenizer(), steps, args.seed, args.device)
    out = Path(args.out or XL_MODEL_DIR)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        shutil.rmtree(out / name, ignore_errors=True)
    write_pipeline_xl(out, unet, *(e.cpu() for e in encoders))
    references, layout, mask = write_references(out, data)
    write_prompts(out, data, references, layout, mask)
    shutil.copytree(MODEL_DIR / "eval", out / "eval")
    write_json(
        out / "miniature.json",
        {
            "architecture": "sdxl",
            "pixel_space": True,
            "image_size": IMAGE_SIZE,
            "value_range": [-1.0, 1.0],
            "seed": args.seed,
            "steps": steps,
            "threads": args.threads,
            "batch_size": BATCH_SIZE,
            "caption_dropout": CAPTION_DROPOUT,
            "caption_dropout_by": "zeroing the context and the pooled vector",
            "text_encoders": "both frozen at random initialization",
            "time_ids": list(TIME_IDS),
            "fidelity_classifier": "the SD1 miniature's",
            "data": data.counts,
        },
    )
    log(f"wrote {out} in {time.time() - began:.0f}s")
