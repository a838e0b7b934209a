"""Overhead of memguard watching a WebUI generation, measured on the faithful A1111 double (tests/fakehost) with the
miniature model: the same txt2img jobs with memguard's watch setting off and on, interleaved, same seeds.

Prints wall-time ratios (watch / off) with an empty and with a non-empty negative prompt, and the UNet rows each
adds (the non-empty negative prompt adds one batch of empty-prompt rows at step 1).

    .venv/bin/python bench/watch_overhead.py [--repeats 5] [--steps 20] [--batch 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from common import MODEL_DIR, ROOT, table

sys.path.insert(0, str(ROOT / "tests"))

import fakehost


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    host = fakehost.boot(MODEL_DIR, extension_dirs=[str(ROOT)])
    from modules import shared

    side = int(shared.sd_model.model.diffusion_model.config.sample_size)
    shared.opts.memguard_explain = False

    def job(negative: str) -> float:
        p = host.txt2img_processing(
            prompt="a red circle on the left",
            negative_prompt=negative,
            steps=args.steps,
            batch_size=args.batch,
            width=side,
            height=side,
            seed=3,
            sampler_name="Euler",
        )
        start = time.perf_counter()
        host.run_txt2img(p)
        return time.perf_counter() - start

    rows = []
    for negative, label in (("", "empty negative prompt"), ("blurry", "negative prompt 'blurry'")):
        times = {False: [], True: []}
        job(negative)  # warm-up
        for _ in range(args.repeats):
            for watch in (False, True):
                shared.opts.memguard_watch = watch
                times[watch].append(job(negative))
        off, on = statistics.median(times[False]), statistics.median(times[True])
        extra = 0 if not negative else args.batch
        rows.append([label, f"{off:.3f}", f"{on:.3f}", f"{on / off:.3f}", f"+{extra} rows at step 1"])
    table(
        ["generation", "off s", "watch s", "ratio", "extra UNet rows"],
        rows,
        f"Watch overhead, fake A1111 + miniature, txt2img Euler {args.steps} steps, batch {args.batch}, "
        f"median of {args.repeats}",
    )
    fakehost.uninstall()


if __name__ == "__main__":
    main()
