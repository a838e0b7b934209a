"""Which empty reference Wen's ``d`` uses on SDXL: zeros or the encoding of ``""``, for the cross-attention context
and the pooled vector (issue 13).

SDXL dropped captions in training by zeroing the text embedders' outputs (sgm's ``GeneralConditioner``), A1111
encodes an empty negative prompt as zeros (``force_zero_embeddings``) and diffusers does too by default
(``force_zeros_for_empty_prompt``); Wen et al. defined ``d`` against the encoding of ``""`` on SD1, where the two are
the same thing. On the SDXL miniature (trained with caption dropout by zeroing, as SDXL), ``d`` at the first step
against each of the four references (context x pooled vector, zeros or the encoding of ``""``; size/crop numbers
the generation's): AUC and TPR at 1% FPR of the 44 memorized against the 200 held-out general prompts, with 1 and
4 generations, and over every (prompt, seed) draw of seeds 0-3 on its own (finer resolution: 176 vs 800).

    MEMGUARD_BENCH_THREADS=1 .venv/bin/python bench/sdxl_reference.py [--model memguard/miniature/model_xl]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from common import labelled, setup, table

from memguard.calibrate import roc_auc, tpr_at_fpr
from memguard.detect import wen_norm
from memguard.miniature import XL_MODEL_DIR


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=XL_MODEL_DIR)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps of the schedule (first step t = 981 at 50)")
    args = ap.parse_args()
    model = setup(args.model)
    if not model.is_xl:
        raise SystemExit(f"{args.model} is not an SDXL layout")
    memorized = [r["prompt"] for r in labelled("memorized") + labelled("template")]
    general = [r["prompt"] for r in labelled("general")]
    t = model.scheduler(args.steps).timesteps[0]
    empty = model.tokenize("")
    encoded, pooled = model.encode(empty), model.pooled(empty)
    zeros, zero_pooled = torch.zeros_like(encoded), torch.zeros_like(pooled)
    references = {
        "zeros (context and pooled)": (zeros, zero_pooled),
        'encoding of "" (context and pooled)': (encoded, pooled),
        'zero context, pooled of ""': (zeros, pooled),
        'context of "", zero pooled': (encoded, zero_pooled),
    }
    seeds = [0, 1, 2, 3]
    x = torch.cat([model.noise(s) for s in seeds])
    sizes = model.time_ids(len(seeds))
    eps_ref = {
        name: model.eps(
            x, t, c.expand(len(seeds), -1, -1), {"text_embeds": p.expand(len(seeds), -1), "time_ids": sizes}
        )
        for name, (c, p) in references.items()
    }
    d: dict[str, dict[str, list[list[float]]]] = {name: {"memorized": [], "general": []} for name in references}
    for label, prompts in (("memorized", memorized), ("general", general)):
        for prompt in prompts:
            tok = model.tokenize(prompt)
            cond = model.encode(tok).expand(len(seeds), -1, -1)
            eps_c = model.eps(x, t, cond, model.added([tok] * len(seeds)))
            for name in references:
                d[name][label].append(wen_norm(eps_c - eps_ref[name]).tolist())
    rows = []
    for name in references:
        line: list = [name]
        for n in (1, 4):
            pos = [statistics.fmean(v[:n]) for v in d[name]["memorized"]]
            neg = [statistics.fmean(v[:n]) for v in d[name]["general"]]
            line += [roc_auc(pos, neg), tpr_at_fpr(pos, neg, 0.01)]
        pos1 = [x for v in d[name]["memorized"] for x in v]  # every (prompt, seed) draw on its own
        neg1 = [x for v in d[name]["general"] for x in v]
        line += [roc_auc(pos1, neg1), tpr_at_fpr(pos1, neg1, 0.01)]
        line += [statistics.median(neg1), statistics.median(pos1)]
        rows.append(line)
    gap = wen_norm(eps_ref['encoding of "" (context and pooled)'] - eps_ref["zeros (context and pooled)"])
    print(f'||eps(x_T, "") - eps(x_T, zeros)|| per seed: {", ".join(f"{v:.3f}" for v in gap.tolist())}')
    table(
        [
            "reference",
            "AUC n=1",
            "TPR@1% n=1",
            "AUC n=4",
            "TPR@1% n=4",
            "AUC draws",
            "TPR@1% draws",
            "median d general",
            "median d memorized",
        ],
        rows,
        f"SDXL miniature, first step (t = {int(t)}): {len(memorized)} memorized vs {len(general)} held-out general "
        "prompts, d against each empty reference (size/crop numbers the generation's); n=1: seed 0, n=4: mean over "
        f"seeds 0-3, draws: every (prompt, seed) on its own ({4 * len(memorized)} vs {4 * len(general)})",
    )


if __name__ == "__main__":
    main()
