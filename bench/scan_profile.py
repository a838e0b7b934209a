"""Where a batched `scan` spends its time, and what batching the text side bought: the scan as committed against the
text side it replaced (each distinct prompt tokenized and encoded on its own), and against the scan with the initial
noise's scale read from a new scheduler per seed (``Model.noise`` before it kept one schedule per model: the row says
what keeping it bought), interleaved, by wall and CPU time.

    .venv/bin/python -u bench/scan_profile.py [--repeats 7] [--threads 2] [--profile 32]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
from contextlib import contextmanager

import torch
from common import Load, interleave, labelled, print_progress, ratio, setup, table

from memguard import pipeline
from memguard.pipeline import score_prompts


def _rows_per_prompt(model, prompts, n):
    """The text side before batching: one tokenizer call and one text-encoder call per distinct prompt."""
    texts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(texts) != n:
        raise ValueError(f"{len(texts)} prompts for {n} seeds")
    cache = {}
    for text in texts:
        if text not in cache:
            tok = model.tokenize(text)
            cache[text] = (tok, model.encode(tok))
    if len({cache[t][1].shape[1] for t in texts}) > 1:
        raise ValueError("prompts of one batch must have the same number of 75-token chunks; batch them by length")
    return [cache[t][0] for t in texts], torch.cat([cache[t][1] for t in texts])


@contextmanager
def scheduler_per_seed():
    """``Model.noise`` as it was: ``init_noise_sigma`` read from a new scheduler per seed (the same values)."""
    original = pipeline.Model.noise

    def noise(self, seed):
        gen = torch.Generator("cpu").manual_seed(int(seed))
        x = torch.randn((1, *self.latent_shape), generator=gen, dtype=torch.float32)
        return (x * self.scheduler(1).init_noise_sigma).to(self.device)

    pipeline.Model.noise = noise
    try:
        yield
    finally:
        pipeline.Model.noise = original


@contextmanager
def per_prompt_text():
    batched = pipeline._rows
    pipeline._rows = _rows_per_prompt
    try:
        yield
    finally:
        pipeline._rows = batched


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", type=int, default=32, help="batch size to profile with cProfile (0: none)")
    args = ap.parse_args()
    model = setup()
    torch.set_num_threads(args.threads)
    prompts = [r["prompt"] for r in labelled("general")][: args.prompts]

    def before(b):
        with per_prompt_text():
            score_prompts(model, prompts, [0], batch_size=b)

    def per_seed(b):
        with scheduler_per_seed():
            score_prompts(model, prompts, [0], batch_size=b)

    cases = {}
    for b in (1, 32):
        cases[f"before {b}"] = lambda b=b: before(b)
        cases[f"after {b}"] = lambda b=b: score_prompts(model, prompts, [0], batch_size=b)
        cases[f"scheduler per seed {b}"] = lambda b=b: per_seed(b)
    with Load() as load:
        times = interleave(cases, args.repeats, log=print_progress)
    rows = []
    for clock, measured in (("wall", times.wall), ("CPU", times.cpu)):
        rows.append(
            [
                clock,
                str(ratio(measured, "before 32", "before 1", invert=True)),
                str(ratio(measured, "after 32", "after 1", invert=True)),
                str(ratio(measured, "after 1", "before 1", invert=True)),
                str(ratio(measured, "after 32", "before 32", invert=True)),
                str(ratio(measured, "scheduler per seed 32", "scheduler per seed 1", invert=True)),
                str(ratio(measured, "after 32", "scheduler per seed 32", invert=True)),
            ]
        )
    table(
        [
            "clock",
            "batch 32 vs 1, before",
            "batch 32 vs 1, after",
            "after vs before, batch 1",
            "after vs before, 32",
            "32 vs 1, scheduler per seed",
            "after vs scheduler per seed, 32",
        ],
        rows,
        f"scan, {len(prompts)} prompts: text side batched (after) against per-prompt (before), median (min-max) of "
        f"{args.repeats} interleaved rounds",
    )
    print(load.line())
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        score_prompts(model, prompts, [0], batch_size=args.profile)
        profile.disable()
        print(f"\ncProfile of one scan at batch {args.profile} (cumulative, top 25):")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
