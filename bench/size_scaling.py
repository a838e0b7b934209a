"""How Wen's first-step ``d`` scales with the image's size and aspect ratio, and whether one threshold holds.

``d`` is a plain L2 norm over the whole latent, so for a convolutional UNet whose per-position eps difference has the
same spread everywhere it grows like ``sqrt(h * w)``. This measures it:

1. the miniature (pixel space, native 16x16) at sizes 8..32 and aspect ratios 1:2 and 2:1: median ``d`` of held-out
   general and memorized prompts, the log-log slope of ``d`` against the area, AUC and TPR at 1% FPR per size, and
   the false-positive rate of the threshold calibrated at the native size (1% FPR on the training general captions)
   when applied unchanged to Wen's plain ``d`` and to the size-normalized score
   ``d * sqrt(h0 * w0 / (h * w))`` (``memguard.detect.size_normalized``);
2. an SD1.5-sized UNet with random weights (``bench/cost.py``'s) at latents 16..48 with random text conditioning:
   the slope of the median ``d`` against the area (the scaling law on SD1.5's architecture).

    .venv/bin/python bench/size_scaling.py [--sd15-sizes 16 24 32 48] [--sd15-seeds 4]
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from common import labelled, setup, table

from memguard.calibrate import roc_auc, threshold_at_fpr, tpr_at_fpr
from memguard.detect import size_normalized, wen_norm

SIZES = [(8, 8), (12, 12), (16, 16), (24, 24), (32, 32), (16, 32), (32, 16), (12, 24)]


@torch.no_grad()
def scores(model, prompts: list[str], size: tuple[int, int], seed: int = 0, batch: int = 64) -> list[float]:
    """Plain ``d`` at the first DDIM step for each prompt, on one noise image of ``size`` (the same for all)."""
    h, w = size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, model.latent_shape[0], h, w), generator=generator) * model.scheduler(1).init_noise_sigma
    t = model.scheduler(50).timesteps[0]
    eps_e = model.eps(x, t, model.empty())
    out = []
    for i in range(0, len(prompts), batch):
        part = prompts[i : i + batch]
        cond = torch.cat([model.encode(model.tokenize(p)) for p in part])
        eps_c = model.eps(x.expand(len(part), -1, -1, -1), t, cond)
        out += wen_norm(eps_c - eps_e).tolist()
    return out


def slope(areas: list[float], values: list[float]) -> float:
    """Least-squares slope of ``log value`` against ``log area``."""
    lx, ly = [math.log(a) for a in areas], [math.log(v) for v in values]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def miniature() -> None:
    model = setup()
    native = model.latent_shape[1:]
    memorized = [r["prompt"] for r in labelled("memorized") + labelled("template")]
    general = [r["prompt"] for r in labelled("general")]
    train = (model.path / "prompts" / "general_train.txt").read_text(encoding="utf-8").splitlines()
    tau = threshold_at_fpr(scores(model, train, native), 0.01)
    rows, areas, medians = [], [], {"general": [], "memorized": []}
    for size in SIZES:
        pos, neg = scores(model, memorized, size), scores(model, general, size)
        norm_pos = [size_normalized(d, size, native) for d in pos]
        norm_neg = [size_normalized(d, size, native) for d in neg]
        areas.append(size[0] * size[1])
        medians["general"].append(statistics.median(neg))
        medians["memorized"].append(statistics.median(pos))
        rows.append(
            [
                f"{size[0]}x{size[1]}",
                statistics.median(neg),
                statistics.median(pos),
                roc_auc(pos, neg),
                tpr_at_fpr(pos, neg, 0.01),
                sum(d > tau for d in neg) / len(neg),
                sum(d > tau for d in norm_neg) / len(norm_neg),
                sum(d > tau for d in norm_pos) / len(norm_pos),
            ]
        )
    table(
        [
            "size",
            "median d general",
            "median d memorized",
            "AUC",
            "TPR@1%",
            "FPR plain d",
            "FPR normalized",
            "TPR normalized",
        ],
        rows,
        f"Miniature (native {native[0]}x{native[1]}): {len(memorized)} memorized vs {len(general)} held-out general "
        f"prompts, seed 0; threshold {tau:.3f} calibrated at the native size (1% FPR on {len(train)} training "
        "general captions) and applied unchanged at every size",
    )
    print(
        f"\nlog-log slope of median d against area: general {slope(areas, medians['general']):.3f}, "
        f"memorized {slope(areas, medians['memorized']):.3f} (0.5 = grows like sqrt(area))"
    )


@torch.no_grad()
def sd15(sizes: list[int], seeds: int) -> None:
    from cost import sd15 as build

    model = build(sizes[0])
    generator = torch.Generator().manual_seed(0)
    conds = torch.randn((seeds, 77, 768), generator=generator)
    empty = torch.randn((1, 77, 768), generator=generator)
    rows, areas, medians = [], [], []
    for side in sizes:
        x = torch.randn((seeds, 4, side, side), generator=generator)
        t = torch.full((seeds,), 999)
        d = wen_norm(
            model.unet(x, t, encoder_hidden_states=conds).sample
            - model.unet(x, t, encoder_hidden_states=empty.expand(seeds, -1, -1)).sample
        )
        median = statistics.median(d.tolist())
        areas.append(side * side)
        medians.append(median)
        rows.append([f"{side}x{side} ({side * 8} px)", median, median * math.sqrt(64 * 64 / (side * side))])
    table(
        ["latent", "median d", "d normalized to 64x64"],
        rows,
        f"SD1.5-sized UNet, random weights, random text conditioning, {seeds} draws per size, t = 999",
    )
    print(f"\nlog-log slope of median d against area: {slope(areas, medians):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15-sizes", type=int, nargs="*", default=[16, 24, 32, 48])
    parser.add_argument("--sd15-seeds", type=int, default=4)
    args = parser.parse_args()
    miniature()
    if args.sd15_sizes:
        sd15(args.sd15_sizes, args.sd15_seeds)


if __name__ == "__main__":
    main()
