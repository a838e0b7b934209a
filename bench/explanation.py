"""Explanation on the miniature: does the most significant word fall on the words that make a caption memorized?

For every verbatim-memorized caption, the words that never occur in general captions are its distinctive words.
We report how often the top-1 word (and any of the top-3) is distinctive, against chance (a uniformly random word,
and three random words).

    .venv/bin/python bench/explanation.py [--model DIR]
"""

from __future__ import annotations

import argparse
from math import comb
from pathlib import Path

from common import labelled, setup, table

from memguard.pipeline import explain_prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="a miniature-like model directory (default: the SD1 one)")
    model = setup(ap.parse_args().model)
    rows = labelled("memorized") + labelled("template")
    hits1 = hits3 = chance1 = chance3 = 0.0
    examples = []
    for row in rows:
        expl = explain_prompt(model, row["prompt"], [0, 1, 2, 3])
        words = expl.words()
        distinctive = {w.lower() for w in row["distinctive"]}
        is_d = [w.text.lower().strip(",.") in distinctive for w in words]
        ranked = sorted(range(len(words)), key=lambda i: -words[i].value)
        hits1 += is_d[ranked[0]]
        hits3 += any(is_d[i] for i in ranked[:3])
        n, k = len(words), sum(is_d)
        chance1 += k / n
        chance3 += 1 - comb(n - k, min(3, n)) / comb(n, min(3, n))
        if len(examples) < 4:
            examples.append(" ".join(f"{w.text}({w.normalized:.2f})" for w in words))
    m = len(rows)
    table(
        ["measure", "memguard", "chance"],
        [
            ["top-1 word is distinctive", hits1 / m, chance1 / m],
            ["a top-3 word is distinctive", hits3 / m, chance3 / m],
        ],
        f"Token significance on {m} memorized captions (step 1, 4 seeds)",
    )
    print("\nexamples (normalized significance per word):")
    for e in examples:
        print("  " + e)


if __name__ == "__main__":
    main()
