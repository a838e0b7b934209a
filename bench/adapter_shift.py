"""Does a LoRA move the benign score distribution more than the calibration's own spread?

A LoRA-style low-rank adapter (rank ``--rank`` on every attention projection ``to_q``/``to_k``/``to_v``/``to_out``
of the miniature's UNet, ``W + w * B A``, ``B`` starting at zero) is trained on a fine-tuning folder like
``bench/finetune.py``'s (general images plus a few images copied many times) for ``--steps`` steps, only ``A`` and
``B`` learning. Then memguard's 320 benign prompts (what automatic calibration uses) and the miniature's held-out
general captions are scored at the first step (seed 0, native size) with the adapter at weights 0, 0.5 and 1: the
threshold at 1% FPR for each weight, the false-positive rate of the base threshold (weight 0) under the adapter,
and the calibration's own spread (5th-95th percentile of the threshold over 500 bootstrap resamples of the base
scores). A shift beyond that spread means calibrations must be keyed by checkpoint and adapter set.

    .venv/bin/python bench/adapter_shift.py [--steps 300] [--rank 4]
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F
from calibration_cost import calibration
from common import Timer, labelled, setup, table
from finetune import folder

from memguard.calibrate import threshold_at_fpr
from memguard.miniature import train
from memguard.service import benign_prompts


class LoRALinear(torch.nn.Module):
    """``base(x) + weight * x A^T B^T`` (Hu et al. 2021): the frozen projection plus a rank-``r`` update."""

    def __init__(self, base: torch.nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        self.weight = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.weight * (x @ self.A.T @ self.B.T)


def add_lora(unet: torch.nn.Module, rank: int) -> list[LoRALinear]:
    adapters = []
    for module in list(unet.modules()):
        for name in ("to_q", "to_k", "to_v"):
            if isinstance(getattr(module, name, None), torch.nn.Linear):
                setattr(module, name, LoRALinear(getattr(module, name), rank))
                adapters.append(getattr(module, name))
        out = getattr(module, "to_out", None)
        if isinstance(out, torch.nn.ModuleList) and isinstance(out[0], torch.nn.Linear):
            out[0] = LoRALinear(out[0], rank)
            adapters.append(out[0])
    return adapters


def train_lora(model, adapters: list[LoRALinear], steps: int, seed: int) -> None:
    from diffusers import DDPMScheduler

    avoid = {r["prompt"] for r in labelled("general")}
    images, captions, *_ = folder(2000 + seed, 200, 4, 25, avoid)
    with torch.no_grad():
        table_of = {c: model.encode(model.tokenize(c))[0] for c in dict.fromkeys(captions)}
    contexts = torch.stack([table_of[c] for c in captions])
    model.unet.requires_grad_(False)
    params = [p for a in adapters for p in (a.A, a.B)]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = DDPMScheduler(**train.SCHEDULE)
    generator = torch.Generator().manual_seed(seed)
    model.unet.train()
    for _, pairs in zip(range(steps), train.batches(len(images), generator)):
        x0, context = images[pairs], contexts[pairs]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (len(pairs),), generator=generator)
        loss = F.mse_loss(model.unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=context).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.unet.eval().requires_grad_(False)


def spread(scores: list[float], fpr: float = 0.01, draws: int = 500) -> tuple[float, float]:
    rng = random.Random(0)
    values = sorted(threshold_at_fpr(rng.choices(scores, k=len(scores)), fpr) for _ in range(draws))
    return values[int(0.05 * draws)], values[int(0.95 * draws)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rank", type=int, default=4)
    args = parser.parse_args()
    model = setup()
    adapters = add_lora(model.unet, args.rank)
    with Timer() as timer:
        train_lora(model, adapters, args.steps, seed=0)
    print(f"LoRA rank {args.rank} on {len(adapters)} projections, {args.steps} steps in {timer.seconds:.0f} s")
    sets = {
        "memguard benign (320)": benign_prompts(),
        "miniature held-out general": [r["prompt"] for r in labelled("general")],
    }
    rows = []
    for name, prompts in sets.items():
        by_weight = {}
        for weight in (0.0, 0.5, 1.0):
            for a in adapters:
                a.weight = weight
            by_weight[weight] = calibration(model, prompts)
        base = threshold_at_fpr(by_weight[0.0], 0.01)
        low, high = spread(by_weight[0.0])
        for weight, scores in by_weight.items():
            tau = threshold_at_fpr(scores, 0.01)
            fpr = sum(s > base for s in scores) / len(scores)
            rows.append([name, weight, tau, (tau - base) / base, fpr, f"{low:.3f}-{high:.3f}"])
    table(
        ["prompts", "LoRA weight", "threshold @1%", "shift", "FPR of base threshold", "base spread (5-95%)"],
        rows,
        "Benign first-step scores of the miniature with a LoRA at weights 0, 0.5, 1 (seed 0, native size)",
    )


if __name__ == "__main__":
    main()
