"""Peak memory of a forced embedding-optimization iteration inside the WebUI, on the faithful A1111 double
(tests/fakehost) with the miniature: one 1-step txt2img job per fresh process, plain (memguard off) against the guard's
embedding strategy (one iteration, target 0) with the UNet's layers recomputed in the backward pass (the blocks the
seam hands over, ``first_step.case_for``) and with every activation stored (no blocks handed over, as before).

Each process boots the double, runs its job once at the model's native size (imports, caches), then measures the job
at ``--side`` pixels with ``bench/common.py``'s ``peak_memory``: the peak resident set above what it holds after the
warm-up, and the whole-process peak, under glibc's malloc with its mmap threshold fixed (the resident set follows the
live tensors) and as it comes.

    .venv/bin/python -u bench/webui_memory.py [--side 128] [--batch 2] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from common import FIXED_MMAP, MODEL_DIR, ROOT, Load, in_subprocess, median_spread, peak_memory, table

sys.path.insert(0, str(ROOT / "tests"))

import fakehost

MODES = {
    "plain": "plain first step (memguard off)",
    "layers": "embedding, 1 iteration, recompute layers (the blocks handed over)",
    "none": "embedding, 1 iteration, every activation stored (no blocks, as before)",
}
ALLOCATORS = {"fixed": FIXED_MMAP, "default": {}}


def measure(mode: str, side: int, batch: int, threads: int) -> dict:
    """Subprocess body: boot the double, warm up at the native size, then the peak of one job at ``side`` pixels."""
    import torch

    torch.set_num_threads(threads)
    host = fakehost.boot(MODEL_DIR, extension_dirs=[str(ROOT)])
    from modules import shared
    from webui_helpers import GUARD, guard_index

    from memguard import mitigate
    from memguard.hosts.a1111 import first_step

    mitigate.Embedding = partial(mitigate.Embedding, max_iters=1, target=0.0)  # one iteration, always
    if mode == "none":
        first_step.unet_blocks = lambda network: []
    shared.opts.memguard_watch = mode != "plain"
    shared.opts.memguard_explain = False
    shared.opts.memguard_threshold = 1e-6  # every image flagged

    def job(pixels: int) -> None:
        title, args = (None, None) if mode == "plain" else (GUARD, {guard_index(): "embedding"})
        fields = dict(prompt="a red circle on the left", steps=1, batch_size=batch, seed=3, sampler_name="Euler")
        p = host.txt2img_processing(title, script_args=args, width=pixels, height=pixels, **fields)
        host.run_txt2img(p)

    job(int(shared.sd_model.model.diffusion_model.config.sample_size))
    return peak_memory(lambda: job(side))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=128, help="image side in pixels (the miniature samples pixels)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per configuration and allocator")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory", choices=list(MODES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory:
        print(json.dumps(measure(args.memory, args.side, args.batch, args.threads)))
        return
    results = {}
    with Load() as load:
        for r in range(args.repeats):
            for alloc, env in ALLOCATORS.items():
                for mode in MODES:
                    argv = ["--memory", mode, "--side", str(args.side), "--batch", str(args.batch)]
                    results[alloc, mode, r] = in_subprocess(__file__, *argv, "--threads", str(args.threads), env=env)
                    print(f"  {alloc} malloc, {mode}: {json.dumps(results[alloc, mode, r])}", flush=True)
    rows = []
    for mode, label in MODES.items():
        cells = [label]
        for alloc in ALLOCATORS:
            runs = [results[alloc, mode, r] for r in range(args.repeats)]
            plain = [results[alloc, "plain", r] for r in range(args.repeats)]
            cells += [
                median_spread([run["above_kib"] / 2**10 for run in runs], "{:.1f}"),
                median_spread([run["above_kib"] / p["above_kib"] for run, p in zip(runs, plain)], "{:.2f}x"),
                median_spread([run["peak_kib"] / p["peak_kib"] for run, p in zip(runs, plain)], "{:.3f}x"),
            ]
        rows.append(cells)
    header = ["run"]
    for alloc in ALLOCATORS:
        header += [f"{alloc}: above warm-up MiB", f"{alloc}: vs plain", f"{alloc}: whole process vs plain"]
    table(
        header,
        rows,
        f"Peak memory inside the A1111 double, miniature, {args.side}x{args.side} px, batch {args.batch}, 1 step, "
        f"one fresh process per run, {args.repeats} run(s) each (median, min-max)",
    )
    print(load.line())


if __name__ == "__main__":
    main()
