"""What the benchmarks share: the miniature model, its labelled prompts, and table printing."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memguard.miniature import MODEL_DIR  # noqa: E402
from memguard.pipeline import Model  # noqa: E402

MODEL_PATH = MODEL_DIR  # the model of this run: setup(path) sets it (--model; the SDXL miniature, say)


def setup(path: Path | None = None) -> Model:
    """Load the miniature (or ``path``: a miniature-like directory with ``prompts/``, ``references/``, ``eval/``)
    with 2 torch threads (``MEMGUARD_BENCH_THREADS`` overrides: 1 is faster on a machine other jobs load)."""
    global MODEL_PATH
    torch.set_num_threads(int(os.environ.get("MEMGUARD_BENCH_THREADS", "2")))
    MODEL_PATH = Path(path) if path is not None else MODEL_DIR
    return Model.load(MODEL_PATH)


def labelled(label: str) -> list[dict]:
    """Rows of the model's ``prompts/labels.jsonl`` with this label (memorized, template, general)."""
    lines = (MODEL_PATH / "prompts" / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    return [row for row in map(json.loads, lines) if row["label"] == label]


def reference(row: dict) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.load(MODEL_PATH / row["reference"])).float()


def table(header: list[str], rows: list[list], title: str) -> None:
    """Print a fixed-width table (also valid Markdown) under a title line."""
    cells = [[str(c) if not isinstance(c, float) else f"{c:.3f}" for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def generate(model: Model, prompts: list[str], seeds: list[int], steps: int = 50, batch: int = 32, **kwargs) -> list:
    """Every (prompt, seed) generation, ``batch`` rows per ``pipeline.sample`` call (keyword arguments go to it)."""
    from memguard.pipeline import sample

    rows = [(p, s) for p in prompts for s in seeds]
    gens = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        gens += sample(model, [p for p, _ in chunk], [s for _, s in chunk], steps=steps, **kwargs)
    return gens


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
