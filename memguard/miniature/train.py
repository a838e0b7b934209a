"""Train the miniature memorizing model from scratch and write it in diffusers layout.

    python -m memguard.miniature.train [--arch sd1|sdxl] [--out DIR] [--seed 0] [--minutes 10]

The data are drawn by :mod:`memguard.miniature.data`; the text encoder is a tiny CLIP text model frozen at its
random initialization (as SD1 froze CLIP; it lets training skip the encoder's backward pass and keeps the empty
prompt's embedding fixed); the UNet learns epsilon with SD1's noise schedule and 10% caption dropout to "".
``--minutes`` is a nominal budget turned into a fixed number of steps (``STEPS_PER_MINUTE`` at batch 32 on two
CPU cores), never read from a clock, so a seed gives the same model on any machine, however fast.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..tokens import CONTEXT, VOCAB_SIZE, load_tokenizer, write_tokenizer_files
from . import MODEL_DIR
from .data import ATTRIBUTES, IMAGE_SIZE, distinctive_words
from .dataset import MiniatureData, build
from .fidelity import CLASSIFIER_CONFIG, CLASSIFIER_WEIGHTS, AttributeClassifier

STEPS_PER_MINUTE = 260
BATCH_SIZE = 32
LEARNING_RATE = 2e-3
WARMUP_STEPS = 100
CAPTION_DROPOUT = 0.1
TEXT_WIDTH = 64
TOKEN_SCALE = 1.0
POSITION_SCALE = 0.3
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
}
DDIM_CONFIG = {
    **SCHEDULE,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "timestep_spacing": "leading",
}
OUTPUTS = ("unet", "text_encoder", "tokenizer", "scheduler", "prompts", "references", "eval")


def log(message: str) -> None:
    """Progress to stderr."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- models


def build_unet(cross_attention_dim: int = TEXT_WIDTH, **extra: Any):
    """The tiny pixel-space SD1-shaped UNet (3x16x16, cross-attention on 64-wide text states); ``extra``: more
    ``UNet2DConditionModel`` arguments (the SDXL miniature's added conditioning)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        cross_attention_dim=cross_attention_dim,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def build_text_encoder():
    """A tiny CLIP text model at random init, its weights rounded to fp16 (the dtype it is shipped in)."""
    from transformers import CLIPTextModel

    return random_text_encoder(CLIPTextModel, TEXT_WIDTH, layers=2, projection_dim=TEXT_WIDTH)


def random_text_encoder(
    model_class, width: int, layers: int, projection_dim: int, hidden_act: str = "quick_gelu", pad_token_id: int = 49407
):
    """A tiny frozen ``model_class`` (a transformers CLIP text model) at random init, ``width`` wide, 4 heads, CLIP's
    vocabulary, 77 positions; its weights rounded to fp16 (the dtype it is shipped in).

    Token embeddings are drawn at unit scale (positions at 0.3) instead of CLIP's 0.02: at 0.02 the random
    attention layers swamp them and every position becomes a near-identical average of the words before it, so the
    states carry almost no word identity; at unit scale each position keeps its token (as a trained CLIP does) and
    the EOS padding positions summarize the caption.
    """
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=2 * width,
        projection_dim=projection_dim,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        hidden_act=hidden_act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
    )
    model = model_class(config).eval().requires_grad_(False)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, TOKEN_SCALE)
        position_embedding(model).weight.normal_(0.0, POSITION_SCALE)
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    return model


def position_embedding(model) -> torch.nn.Embedding:
    """The CLIP text model's position embedding table, wherever the transformers version nests it."""
    return next(m for name, m in model.named_modules() if name.endswith("position_embedding"))


def token_ids(tokenizer, texts: list[str]) -> Tensor:
    """SD1 framing: BOS, tokens, EOS, EOS padding to 77, truncated."""
    return tokenizer(texts, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt").input_ids


# ----------------------------------------------------------------------------------------------- training


def batches(n_pairs: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless shuffled epochs over the training pairs, ``BATCH_SIZE`` at a time."""
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while buffer.numel() < BATCH_SIZE:
            buffer = torch.cat([buffer, torch.randperm(n_pairs, generator=generator)])
        yield buffer[:BATCH_SIZE]
        buffer = buffer[BATCH_SIZE:]


def learning_rate(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return LEARNING_RATE * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train_epsilon(
    build: Callable[[], Any],
    data: MiniatureData,
    steps: int,
    seed: int,
    device: str,
    condition: Callable[[Tensor, torch.Generator], dict[str, Any]],
):
    """The UNet training both miniatures share: ``build()``'s UNet, drawn after seeding torch with ``seed``, learns
    epsilon with DDPM noise, uniform timesteps, AdamW and ``learning_rate``'s schedule.

    ``condition(captions, generator)`` gives the UNet's conditioning keyword arguments for a batch's caption indices;
    it draws the caption dropout from ``generator`` (before the batch's noise and timesteps)."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    unet = build().to(device).train()
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.99), weight_decay=0.0)
    images = torch.from_numpy(data.images)
    image_index, caption_index = torch.from_numpy(data.image_index), torch.from_numpy(data.caption_index)
    generator = torch.Generator().manual_seed(seed + 1)
    start, running = time.time(), 0.0
    for step, pairs in zip(range(steps), batches(len(image_index), generator)):
        x0 = images[image_index[pairs]]
        conditioning = condition(caption_index[pairs], generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(pairs),), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        prediction = unet(noisy.to(device), t.to(device), **conditioning).sample
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


def train_unet(data: MiniatureData, text_encoder, tokenizer, steps: int, seed: int, device: str):
    """``train_epsilon`` of ``build_unet``'s UNet on the text encoder's last hidden states, caption dropout to ""."""
    ids = token_ids(tokenizer, data.captions)
    empty = token_ids(tokenizer, [""])[0]
    text_encoder = text_encoder.to(device)

    def condition(captions: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        batch_ids = ids[captions].clone()
        batch_ids[torch.rand(len(captions), generator=generator) < CAPTION_DROPOUT] = empty
        with torch.no_grad():
            return {"encoder_hidden_states": text_encoder(batch_ids.to(device)).last_hidden_state}

    return train_epsilon(build_unet, data, steps, seed, device, condition)


def _augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Contrast and brightness changes, noise and clipping, so generated (often saturated) images read well."""
    n = images.shape[0]
    contrast = 0.8 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)
    shift = 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    noise = 0.05 * torch.randn(images.shape, generator=generator)
    return (images * contrast + shift + noise).clamp(-1.0, 1.0)


def train_classifier(data: MiniatureData, seed: int, epochs: int = 5, held_out: int = 2000):
    """The attribute CNN used by ``fidelity.attribute_accuracy``, on the general images; returns it and val accuracy."""
    torch.manual_seed(seed + 2)
    classes = {attribute: list(names) for attribute, names in ATTRIBUTES.items()}
    model = AttributeClassifier(classes)
    images = torch.from_numpy(data.images[: data.n_general])
    labels = torch.from_numpy(data.general_labels)
    train_x, train_y, val_x, val_y = images[held_out:], labels[held_out:], images[:held_out], labels[:held_out]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed + 3)
    for _ in range(epochs):
        for pairs in torch.randperm(len(train_x), generator=generator).split(256):
            logits = model(_augment(train_x[pairs], generator))
            loss = cast(Tensor, sum(F.cross_entropy(logits[a], train_y[pairs, k]) for k, a in enumerate(classes)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(val_x)
    accuracy = {a: (logits[a].argmax(1) == val_y[:, k]).float().mean().item() for k, a in enumerate(classes)}
    return model, accuracy


# -------------------------------------------------------------------------------------------------- files


def _clear(out: Path) -> None:
    """Remove what an earlier run wrote in ``out`` (only the names this script writes)."""
    for name in OUTPUTS:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("model_index.json", "miniature.json"):
        (out / name).unlink(missing_ok=True)


def write_pipeline(out: Path, unet, text_encoder) -> None:
    """UNet (fp32), text encoder (fp16), tokenizer, DDIM scheduler config and ``model_index.json``."""
    from diffusers import DDIMScheduler

    unet.save_pretrained(out / "unet", safe_serialization=True)
    text_encoder.half().save_pretrained(out / "text_encoder", safe_serialization=True)
    text_encoder.float()
    write_tokenizer_files(out / "tokenizer")
    DDIMScheduler(**DDIM_CONFIG).save_pretrained(out / "scheduler")
    entries = {
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
    }
    write_model_index(out, "StableDiffusionPipeline", entries)


def write_model_index(out: Path, pipeline: str, entries: dict[str, Any]) -> None:
    """``model_index.json`` of a diffusers ``pipeline`` in pixel space: ``entries`` plus the UNet, the tokenizer and
    no VAE, feature extractor or image encoder, in sorted order (as diffusers writes it)."""
    import diffusers

    entries = {
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [None, None],
        **entries,
    }
    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__, **dict(sorted(entries.items()))}
    write_json(out / "model_index.json", index)


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_references(out: Path, data: MiniatureData) -> tuple[list[str], str, str]:
    """Memorized images and the card layout as ``.npy`` plus a contact sheet; returns their relative paths."""
    folder = out / "references"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(data.verbatim_images):
        names.append(f"references/memorized_{i:02d}.npy")
        np.save(out / names[-1], image.astype(np.float32))
    layout = (data.layout.image * data.layout.mask[None]).astype(np.float32)
    np.save(folder / "template_layout.npy", layout)
    np.save(folder / "template_mask.npy", data.layout.mask.astype(np.float32))
    contact_sheet(folder / "references.png", [*data.verbatim_images, layout])
    return names, "references/template_layout.npy", "references/template_mask.npy"


def contact_sheet(path: Path, images: list[np.ndarray], columns: int = 8, scale: int = 8, gap: int = 4) -> None:
    """A PNG grid of 3x16x16 images in [-1, 1], upscaled ``scale`` times with nearest-neighbour pixels."""
    from PIL import Image

    rows = -(-len(images) // columns)
    cell = IMAGE_SIZE * scale + gap
    sheet = np.full((rows * cell + gap, columns * cell + gap, 3), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        pixels = ((np.clip(image, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
        big = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
        y, x = gap + (k // columns) * cell, gap + (k % columns) * cell
        sheet[y : y + IMAGE_SIZE * scale, x : x + IMAGE_SIZE * scale] = big
    Image.fromarray(sheet).save(path)


def write_prompts(out: Path, data: MiniatureData, references: list[str], layout: str, mask: str) -> None:
    """Prompt lists and ``labels.jsonl``, whose eval prompts are the memorized, template and held-out general ones."""
    folder = out / "prompts"
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "memorized.txt", data.verbatim)
    _write_lines(folder / "template.txt", data.template)
    _write_lines(folder / "general_train.txt", data.general_train_sample)
    _write_lines(folder / "general_heldout.txt", data.general_heldout)
    rows: list[dict[str, Any]] = [
        {"prompt": p, "label": "memorized", "distinctive": distinctive_words(p), "reference": r}
        for p, r in zip(data.verbatim, references)
    ]
    rows += [
        {"prompt": p, "label": "template", "distinctive": distinctive_words(p), "reference": layout, "mask": mask}
        for p in data.template
    ]
    rows += [{"prompt": p, "label": "general", "distinctive": [], "reference": None} for p in data.general_heldout]
    (folder / "labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_classifier(out: Path, model: AttributeClassifier, accuracy: dict[str, float]) -> None:
    """``eval/classifier.safetensors`` and its JSON description (classes, sizes, held-out accuracy)."""
    from safetensors.torch import save_file

    folder = out / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / CLASSIFIER_WEIGHTS))
    description = {**model.config(), "input": "3x16x16 in [-1, 1]", "validation_accuracy": accuracy}
    write_json(folder / CLASSIFIER_CONFIG, description)


def write_metadata(out: Path, data: MiniatureData, seed: int, steps: int) -> None:
    """``miniature.json``: how the model was made (no timings, so the folder is reproducible)."""
    write_json(
        out / "miniature.json",
        {
            "pixel_space": True,
            "image_size": IMAGE_SIZE,
            "value_range": [-1.0, 1.0],
            "seed": seed,
            "steps": steps,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "caption_dropout": CAPTION_DROPOUT,
            "text_encoder": "frozen at random initialization",
            "data": data.counts,
        },
    )


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", choices=("sd1", "sdxl"), default="sd1", help="SD1- or SDXL-shaped (memguard.miniature.xl)"
    )
    parser.add_argument("--out", type=Path, default=None, help="model directory to write (default: the bundled one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=10.0, help="nominal UNet training budget on 2 CPU cores")
    parser.add_argument("--steps", type=int, default=None, help="exact UNet steps (overrides --minutes)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 is faster on a busy machine)")
    parser.add_argument("--device", default="cpu", help="torch device; results are bit-reproducible on CPU only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.arch == "sdxl":
        from .xl import main_xl

        return main_xl(args)
    steps = args.steps if args.steps is not None else round(args.minutes * STEPS_PER_MINUTE)
    began = time.time()
    data = build(args.seed)
    log(f"data: {data.counts}  {time.time() - began:.0f}s")
    classifier, accuracy = train_classifier(data, args.seed)
    log(f"classifier validation accuracy {accuracy}  {time.time() - began:.0f}s")
    torch.manual_seed(args.seed)
    text_encoder = build_text_encoder()
    tokenizer = load_tokenizer()
    unet = train_unet(data, text_encoder, tokenizer, steps, args.seed, args.device)
    out = Path(args.out or MODEL_DIR)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    write_pipeline(out, unet, text_encoder.cpu())
    references, layout, mask = write_references(out, data)
    write_prompts(out, data, references, layout, mask)
    write_classifier(out, classifier, accuracy)
    write_metadata(out, data, args.seed, steps)
    log(f"wrote {out} in {time.time() - began:.0f}s")


if __name__ == "__main__":
    main()
