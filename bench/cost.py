"""Cost of each memguard part on an SD1.5-sized UNet (random weights, built from the standard config) on this machine.

Prints wall time as a ratio against plain DDIM + CFG sampling of the same image, the UNet evaluations each part adds
(one evaluation = one UNet forward over one image row; a backward counts as two), and peak process memory of
embedding optimization against plain sampling (each measured in its own subprocess).

    .venv/bin/python bench/cost.py [--latent 16] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memguard.miniature.train import DDIM_CONFIG
from memguard.mitigate import Attention, Embedding, Guidance
from memguard.pipeline import Model, explain_prompt, sample, score
from memguard.tokens import load_tokenizer

PROMPT = "a watercolor painting of a lighthouse on a cliff at dusk"
SCHEDULER = DDIM_CONFIG  # SD1's DDIM configuration


def sd15(latent: int) -> Model:
    """SD1.5's UNet and CLIP ViT-L/14 text encoder configurations with random weights (no download)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=768,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    )
    model = Model(
        Path("."), unet.eval().requires_grad_(False), text.eval().requires_grad_(False), load_tokenizer(), SCHEDULER
    )
    model._hash = "sd15-random"
    return model


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def memory(mode: str, latent: int, steps: int) -> None:
    """Subprocess body: report the peak RSS above the loaded model for one run of ``mode``."""
    torch.set_num_threads(2)
    model = sd15(latent)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "plain":
        sample(model, PROMPT, [0], steps=steps, watch=False)
    else:
        sample(model, PROMPT, [0], steps=steps, threshold=0.0, strategy=Embedding(max_iters=3))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"model_kib": base, "peak_kib": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent", type=int, default=16, help="latent side (16 = 128 px images)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--memory", choices=("plain", "embedding"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory:
        memory(args.memory, args.latent, args.steps)
        return
    torch.set_num_threads(2)
    model = sd15(args.latent)
    s = args.steps
    sample(model, PROMPT, [0], steps=2, watch=False)  # warm-up
    plain, _ = timed(lambda: sample(model, PROMPT, [0], steps=s, watch=False))
    rows = [("plain DDIM + CFG sampling", plain, 2 * s, "")]
    t, _ = timed(lambda: sample(model, PROMPT, [0], steps=s, threshold=1e9))
    rows.append(("watch (detect at step 1, empty negative)", t, 2 * s, "reads the CFG pair"))
    t, _ = timed(lambda: sample(model, PROMPT, [0], steps=s, threshold=1e9, negative="blurry"))
    rows.append(("watch with a negative prompt", t, 2 * s + 1, "+1 empty-prompt row at step 1"))
    t, _ = timed(lambda: score(model, PROMPT, [0], steps=s, method="asthana"))
    rows.append(("Asthana score (norm + angle), step 1 only", t, 4, "+1 CFG pass at low t"))
    t, _ = timed(lambda: explain_prompt(model, PROMPT, [0], steps=s))
    rows.append(("token significance (step 1)", t, 2 + 3, "1 CFG pass + 1 forward/backward"))
    for name, strategy in (
        ("embedding", Embedding(max_iters=10, target=0.0)),
        ("attention", Attention()),
        ("guidance", Guidance()),
    ):
        t, gens = timed(lambda st=strategy: sample(model, PROMPT, [0], steps=s, threshold=0.0, strategy=st))
        report = gens[0].mitigation
        rows.append((f"mitigate: {name}", t, 2 * s + report.unet_equivalents, "; ".join(report.notes)[:60]))
    print(f"SD1.5-sized UNet (random weights), {8 * args.latent}px, DDIM {s} steps, batch 1, CPU 2 threads, fp32")
    print(f"{'part':<45} {'wall s':>8} {'ratio':>7} {'UNet evals':>11}  note")
    for name, t, evals, note in rows:
        print(f"{name:<45} {t:8.1f} {t / plain:7.3f} {evals:11g}  {note}")
    peaks = {}
    for mode in ("plain", "embedding"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory", mode, "--latent", str(args.latent), "--steps", str(min(s, 3))],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    p, e = peaks["plain"], peaks["embedding"]
    print(
        f"peak RSS: plain {p['peak_kib'] / 2**20:.2f} GiB, embedding optimization {e['peak_kib'] / 2**20:.2f} GiB "
        f"(ratio {e['peak_kib'] / p['peak_kib']:.3f}); above the loaded model: "
        f"{(p['peak_kib'] - p['model_kib']) / 2**10:.0f} MiB vs {(e['peak_kib'] - e['model_kib']) / 2**10:.0f} MiB"
    )


if __name__ == "__main__":
    main()
