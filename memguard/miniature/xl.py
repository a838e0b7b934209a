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

import torch
import torch.nn.functional as F
from torch import Tensor

from ..tokens import CONTEXT, VOCAB_SIZE, load_tokenizer, write_tokenizer_files
from . import MODEL_DIR, XL_MODEL_DIR
from .data import IMAGE_SIZE
from .dataset import MiniatureData, build
from .train import (
    BATCH_SIZE,
    CAPTION_DROPOUT,
    LEARNING_RATE,
    POSITION_SCALE,
    SCHEDULE,
    STEPS_PER_MINUTE,
    TOKEN_SCALE,
    batches,
    learning_rate,
    log,
    position_embedding,
    token_ids,
    write_json,
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
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        cross_attention_dim=sum(TEXT_WIDTHS),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=POOLED_DIM + len(TIME_IDS) * TIME_EMBED_DIM,
    )


def _random_clip(with_projection: bool, width: int):
    """A tiny CLIP text model at random init (unit-scale token embeddings, see ``train.build_text_encoder``),
    rounded to fp16, frozen."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=2 * width,
        projection_dim=POOLED_DIM,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        hidden_act="gelu" if with_projection else "quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0 if with_projection else 49407,
    )
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval().requires_grad_(False)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, TOKEN_SCALE)
        position_embedding(model).weight.normal_(0.0, POSITION_SCALE)
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    return model


def build_text_encoders():
    """``(text_encoder, text_encoder_2)``, drawn in that order from torch's global generator."""
    return _random_clip(False, TEXT_WIDTHS[0]), _random_clip(True, TEXT_WIDTHS[1])


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
    """``train.train_unet`` with SDXL's added conditioning and caption dropout by zeroing context and pooled."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    unet = build_unet_xl().to(device).train()
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.99), weight_decay=0.0)
    images = torch.from_numpy(data.images)
    image_index, caption_index = torch.from_numpy(data.image_index), torch.from_numpy(data.caption_index)
    ids = token_ids(tokenizer, data.captions)
    generator = torch.Generator().manual_seed(seed + 1)
    encoders = [e.to(device) for e in encoders]
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32, device=device)
    start, running = time.time(), 0.0
    for step, pairs in zip(range(steps), batches(len(image_index), generator)):
        x0 = images[image_index[pairs]]
        context, pooled = condition(encoders[0], encoders[1], ids[caption_index[pairs]].to(device))
        kept = (torch.rand(len(pairs), generator=generator) >= CAPTION_DROPOUT).float().to(device)
        context, pooled = context * kept[:, None, None], pooled * kept[:, None]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(pairs),), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        added = {"text_embeds": pooled, "time_ids": time_ids.expand(len(pairs), -1)}
        prediction = unet(noisy.to(device), t.to(device), context, added_cond_kwargs=added).sample
        loss = F.mse_loss(prediction, noise.to(device))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"unet step {step + 1}/{steps}  loss {running / ((step % 100) + 1):.4f}  {time.time() - start:.0f}s")
            running = 0.0
    return unet.eval().cpu()


def write_tokenizer_2(folder: Path) -> None:
    """The CLIP BPE files with SDXL's ``tokenizer_2`` special tokens (padding ``"!"``)."""
    write_tokenizer_files(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((folder / name).read_text(encoding="utf-8"))
        config["pad_token"] = PAD_2
        (folder / name).write_text(json.dumps(config, indent=2), encoding="utf-8")


def write_pipeline_xl(out: Path, unet, text_encoder, text_encoder_2) -> None:
    """UNet (fp32), text encoders (fp16), both tokenizers, the scheduler config and ``model_index.json``."""
    import diffusers

    unet.save_pretrained(out / "unet", safe_serialization=True)
    for name, encoder in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        encoder.half().save_pretrained(out / name, safe_serialization=True)
        encoder.float()
    write_tokenizer_files(out / "tokenizer")
    write_tokenizer_2(out / "tokenizer_2")
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    write_json(out / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [None, None],
    }
    write_json(out / "model_index.json", index)


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
