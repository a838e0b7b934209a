"""Detection on the miniature: memorized (verbatim + template) vs held-out general prompts.

AUC and TPR at 1% FPR (strict rule: largest TPR with FPR < 1%, Wen's notebook) for Wen's first-step magnitude and
for Asthana & Belagiannis' norm + angle score, at step 1 with n = 1 and n = 4 generations, and Wen's score averaged
over the first 5 and 10 steps. Also the threshold calibrated at 1% FPR on *training* general captions and the
rates it gives on the held-out sets.

    .venv/bin/python bench/detection.py [--model DIR]   (DIR: the SDXL miniature, memguard/miniature/model_xl)
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import labelled, setup, table

from memguard.calibrate import roc_auc, threshold_at_fpr, tpr_at_fpr
from memguard.pipeline import score_prompts


def mean_scores(model, prompts, seeds, **kw) -> list[float]:
    per_prompt = score_prompts(model, prompts, seeds, batch_size=64, **kw)
    return [statistics.fmean(d.score for d in dets) for dets in per_prompt]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="a miniature-like model directory (default: the SD1 one)")
    model = setup(ap.parse_args().model)
    memorized = [r["prompt"] for r in labelled("memorized") + labelled("template")]
    general = [r["prompt"] for r in labelled("general")]
    settings = [
        ("step 1, n=1", [0], 1, True),
        ("step 1, n=4", [0, 1, 2, 3], 1, True),
        ("first 5 steps, n=1", [0], 5, False),
        ("first 10 steps, n=1", [0], 10, False),
    ]
    rows = []
    for name, seeds, k, both in settings:
        line = [name]
        for method in ("wen", "asthana") if both else ("wen",):
            pos = mean_scores(model, memorized, seeds, score_steps=k, method=method)
            neg = mean_scores(model, general, seeds, score_steps=k, method=method)
            line += [roc_auc(pos, neg), tpr_at_fpr(pos, neg, 0.01), tpr_at_fpr(pos, neg, 0.01, strict=False)]
        rows.append(line + ["-"] * (7 - len(line)))
    table(
        ["setting", "Wen AUC", "Wen TPR@1%", "Wen TPR@~1%", "Asthana AUC", "Asthana TPR@1%", "Asthana TPR@~1%"],
        rows,
        f"Detection on the miniature: {len(memorized)} memorized vs {len(general)} held-out general prompts "
        "(TPR@1% strict rule; TPR@~1% closest-FPR rule)",
    )
    train = (model.path / "prompts" / "general_train.txt").read_text(encoding="utf-8").splitlines()
    tau = threshold_at_fpr(mean_scores(model, train, [0]), 0.01)
    pos, neg = mean_scores(model, memorized, [0]), mean_scores(model, general, [0])
    print(
        f"\nthreshold at 1% FPR calibrated on {len(train)} training general captions: {tau:.3f}; on held-out sets: "
        f"TPR {sum(s > tau for s in pos) / len(pos):.3f}, FPR {sum(s > tau for s in neg) / len(neg):.3f}"
    )
    for name, values in (("memorized", pos), ("general", neg)):
        q = statistics.quantiles(values, n=20)
        print(
            f"d at step 1 ({name}): min {min(values):.3f}, 5% {q[0]:.3f}, median {statistics.median(values):.3f}, "
            f"95% {q[-1]:.3f}, max {max(values):.3f}"
        )


if __name__ == "__main__":
    main()
