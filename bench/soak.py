"""Soak: consecutive WebUI generations through the faithful A1111 double (tests/fakehost) with memguard loaded, mixing
watch-only, flagged and mitigated (every strategy), interrupted, skipped and failing jobs, batch sizes 1 and 2, hires
fix on some (the mix: ``tests/generation_mix.py``, also run in reduced form by ``tests/test_leaks.py``).

Prints the process's resident memory after the warm-up and at the end, and what memguard left behind: its hooks on
the model's modules, the host's callbacks, live ``Run`` objects and processing objects still carrying one, live
tensors, memguard's caches. The model is the tests' tiny random SD1-shaped model unless ``--model`` names one.

    OMP_NUM_THREADS=1 .venv/bin/python bench/soak.py [--generations 200] [--warmup 10] [--steps 3] [--model DIR]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, table

sys.path.insert(0, str(ROOT / "tests"))

import fakehost
import generation_mix
from tiny_model import build_tiny_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model", type=Path, help="a diffusers model directory (default: a fresh tiny model)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    logging.getLogger("memguard").setLevel(logging.CRITICAL)  # the injected failures' tracebacks
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_tiny_model(Path(tmp))
        host = fakehost.boot(model, extension_dirs=[str(ROOT)])
        boot = generation_mix.census()
        outcomes: collections.Counter = collections.Counter()
        started = time.perf_counter()
        for k in range(args.generations):
            with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # the host's error reports
                outcomes[generation_mix.run_job(host, k, steps=args.steps)] += 1
            if k + 1 == args.warmup:
                warm, warm_rss = generation_mix.census(), generation_mix.rss_kib()
        wall = time.perf_counter() - started
        end, end_rss = generation_mix.census(), generation_mix.rss_kib()
        fakehost.uninstall()

    print(
        f"{args.generations} generations ({args.steps} steps; {dict(outcomes)}; "
        f"{len(generation_mix.KINDS)} kinds in turn) in {wall:.1f} s ({wall / args.generations:.2f} s each)"
    )
    rows = [["resident memory (MiB)", "", f"{warm_rss / 1024:.1f}", f"{end_rss / 1024:.1f}"]]
    rows += [[name, boot[name], warm[name], end[name]] for name in boot]
    table(["", "after boot", f"after {args.warmup} generations", f"after {args.generations}"], rows, "Soak")
    growth = end_rss - warm_rss
    print(f"RSS growth after the warm-up: {growth / 1024:+.1f} MiB ({growth / max(warm_rss, 1):+.2%})")


if __name__ == "__main__":
    main()
