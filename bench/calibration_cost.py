"""The one-time cost of calibrating a checkpoint on first use, against one ordinary 20-step generation.

UNet rows: the WebUI's automatic calibration (``A1111Service.benign_scores``) evaluates each of memguard's 320 benign
prompts once at the first step, 8 per call, against one empty-prompt row made once; a 20-step CFG generation of one
image evaluates 2 rows per step. Wall clock: the same work on an SD1.5-sized UNet with random weights
(``bench/cost.py``'s) at a small latent on this machine's CPU, interleaved (calibration, generation, calibration,
...; medians and spread over ``--repeats``; one warm-up of each excluded), with the machine's load average.

    .venv/bin/python bench/calibration_cost.py [--latent 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from cost import PROMPT, sd15

from memguard.detect import wen_norm
from memguard.hosts.a1111.service import CALIBRATION_BATCH
from memguard.pipeline import sample
from memguard.service import benign_prompts

STEPS = 20


@torch.no_grad()
def calibration(model, prompts: list[str]) -> list[float]:
    """What ``benign_scores`` computes, on the pipeline's model: one noise image, one empty-prompt row, batches."""
    x = model.noise(0)
    t = model.scheduler(STEPS).timesteps[0]
    eps_e = model.eps(x, t, model.empty())
    scores = []
    for i in range(0, len(prompts), CALIBRATION_BATCH):
        part = prompts[i : i + CALIBRATION_BATCH]
        cond = torch.cat([model.encode(model.tokenize(p)) for p in part])
        scores += wen_norm(model.eps(x.expand(len(part), -1, -1, -1), t, cond) - eps_e).tolist()
    return scores


def generation(model) -> None:
    sample(model, PROMPT, [0], steps=STEPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = sd15(args.latent)
    prompts = benign_prompts()
    rows_calibration = len(prompts) + 1
    rows_generation = 2 * STEPS
    print(
        f"UNet rows: calibration {rows_calibration} ({-(-len(prompts) // CALIBRATION_BATCH)} calls of "
        f"{CALIBRATION_BATCH} + 1), one {STEPS}-step generation {rows_generation}: "
        f"x{rows_calibration / rows_generation:.1f}"
    )
    times: dict[str, list[float]] = {"calibration": [], "generation": []}
    for repeat in range(args.repeats + 1):
        for name, run in (
            ("calibration", lambda: calibration(model, prompts)),
            ("generation", lambda: generation(model)),
        ):
            start = time.perf_counter()
            run()
            if repeat:  # the first round is the warm-up
                times[name].append(time.perf_counter() - start)
    ratios = [c / g for c, g in zip(times["calibration"], times["generation"])]
    print(
        f"latent {args.latent}x{args.latent} ({args.latent * 8} px), CPU, {args.repeats} interleaved repeats, "
        f"load average {os.getloadavg()[0]:.2f}: calibration {statistics.median(times['calibration']):.1f} s, "
        f"generation {statistics.median(times['generation']):.1f} s, ratio median {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
