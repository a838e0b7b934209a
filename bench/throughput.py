"""Throughput of `scan` on the miniature: prompts per second batched against one prompt at a time, next to the
ceiling batching can reach, the UNet's own speed-up (the same step-1 UNet calls, 2 rows per prompt, alone).

Every configuration runs once per round, interleaved (the order reversed every other round; one untimed warm-up
round); speed-ups are per-round ratios to batch 1, reported as the median with min-max, with the machine's load.

    .venv/bin/python -u bench/throughput.py [--repeats 7] [--prompts 128] [--batches 8 32 64]
"""

from __future__ import annotations

import argparse

import torch
from common import Load, interleave, median, print_progress, ratio, setup, table

from memguard.pipeline import _rows, score_prompts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="*", default=[8, 32, 64])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model = setup()
    torch.set_num_threads(args.threads)  # after setup(), which sets 2
    from common import labelled

    prompts = [r["prompt"] for r in labelled("general")][: args.prompts]
    n = len(prompts)
    batches = [1, *args.batches]

    # the UNet alone on the scan's own inputs: each prompt's x_T (seed 0) twice, its conditioning and the empty one
    _, cond = _rows(model, prompts, n)
    x = model.noise(0).expand(n, -1, -1, -1)
    t = model.scheduler(50).timesteps[0]
    empty = model.empty()

    @torch.no_grad()
    def unet(b: int) -> None:
        for i in range(0, n, b):
            c = cond[i : i + b]
            xx = x[i : i + b]
            model.unet(torch.cat([xx, xx]), t, encoder_hidden_states=torch.cat([c, empty.expand(len(c), -1, -1)]))

    cases = {}
    for b in batches:
        cases[f"scan {b}"] = lambda b=b: score_prompts(model, prompts, [0], batch_size=b)
        cases[f"unet {b}"] = lambda b=b: unet(b)

    with Load() as load:
        times = interleave(cases, args.repeats, log=print_progress)
    for clock, measured in (("wall", times.wall), ("CPU", times.cpu)):
        rows = []
        for b in batches:
            scan = ratio(measured, f"scan {b}", "scan 1", invert=True)
            ceiling = ratio(measured, f"unet {b}", "unet 1", invert=True)
            share = [s / c for s, c in zip(scan.values, ceiling.values)]
            rows.append(
                [
                    b,
                    f"{n / median(measured[f'scan {b}']):.1f}",
                    f"{scan.median:.2f}x ({scan.spread[0]:.2f}-{scan.spread[1]:.2f})",
                    f"{ceiling.median:.2f}x ({ceiling.spread[0]:.2f}-{ceiling.spread[1]:.2f})",
                    f"{median(share):.2f}",
                ]
            )
        table(
            ["batch size", f"prompts per {clock} s", "scan vs one at a time", "UNet alone vs batch 1", "scan / UNet"],
            rows,
            f"scan throughput by {clock} time, {n} prompts, step-1 score, miniature, CPU; median (min-max) of "
            f"{args.repeats} interleaved rounds",
        )
    print(load.line())


if __name__ == "__main__":
    main()
