"""Throughput of `scan` on the miniature: prompts per second batched against one prompt at a time.

.venv/bin/python bench/throughput.py
"""

from __future__ import annotations

from common import Timer, labelled, setup, table

from memguard.pipeline import score_prompts


def main() -> None:
    model = setup()
    prompts = [r["prompt"] for r in labelled("general")][:128]
    score_prompts(model, prompts[:8], [0], batch_size=8)  # warm-up
    rows = []
    base = None
    for batch in (1, 8, 32, 64):
        with Timer() as t:
            score_prompts(model, prompts, [0], batch_size=batch)
        rate = len(prompts) / t.seconds
        base = base or rate
        rows.append([batch, f"{rate:.1f}", f"{rate / base:.2f}x"])
    table(
        ["batch size", "prompts/s", "vs one at a time"],
        rows,
        f"scan throughput, {len(prompts)} prompts, step-1 score, CPU 2 threads",
    )


if __name__ == "__main__":
    main()
