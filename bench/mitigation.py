"""Mitigation on the miniature: replication of memorized prompts against fidelity on general prompts.

* replication: share of generations of verbatim-memorized captions whose RMS pixel distance to their training image
  is below the copy threshold ``tau`` (chosen from the distance distributions printed first: the 1st percentile of
  the distance between general generations and their nearest memorized training image, so a "copy" is closer to
  its training image than 99% of unrelated generations get to any of them);
* fidelity: share of the attributes a held-out general prompt mentions that the miniature's attribute classifier
  reads back from the generation;
* cost: wall time per image relative to plain sampling, and UNet evaluations per image (a backward = 2).

Each strategy is swept over its main knob with mitigation forced on every image (its trade-off curve); ``auto`` is
gated by the detector (only flagged images are touched), as in use.

    .venv/bin/python bench/mitigation.py [--seeds 4] [--general 64] [--model DIR] [--only STRATEGY ...]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import common
import torch
from common import Timer, labelled, reference, setup, table

from memguard.calibrate import threshold_at_fpr
from memguard.miniature.fidelity import attribute_accuracy, copy_distance
from memguard.mitigate import Attention, Auto, Embedding, Guidance
from memguard.pipeline import score_prompts

STEPS = 50  # --steps overrides


def generate(model, prompts, seeds, strategy=None, threshold=None, force=False):
    return common.generate(model, prompts, seeds, STEPS, threshold=threshold, strategy=strategy, force=force)


def evaluate(model, name, knob, strategy, mem, refs, general, seeds, tau, threshold, force, plain_seconds):
    with Timer() as t_mem:
        gens = generate(model, [r["prompt"] for r in mem], seeds, strategy, threshold, force)
    copies = [copy_distance(g.image, refs[g.prompt]) < tau for g in gens]
    with Timer() as t_gen:
        ggens = generate(model, general, [0], strategy, threshold, force)
    fid = attribute_accuracy(torch.stack([g.image for g in ggens]), [g.prompt for g in ggens])
    touched = [g for g in gens + ggens if g.mitigation is not None]
    evals = statistics.fmean([2 * STEPS + g.mitigation.unet_equivalents for g in touched]) if touched else 2 * STEPS
    per_image = (t_mem.seconds + t_gen.seconds) / (len(gens) + len(ggens))
    share = len([g for g in ggens if g.mitigation is not None]) / len(ggens)
    return [name, knob, sum(copies) / len(copies), fid, share, per_image / plain_seconds, evals / (2 * STEPS)]


def main() -> None:
    global STEPS
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--general", type=int, default=64)
    ap.add_argument("--steps", type=int, default=STEPS, help="DDIM steps (default 50)")
    ap.add_argument("--auto-only", action="store_true", help="only the unmitigated and the gated auto rows")
    ap.add_argument(
        "--only",
        action="append",
        choices=["embedding", "attention", "guidance", "guidance static", "auto"],
        help="only the unmitigated row and these strategies' rows (repeatable)",
    )
    ap.add_argument("--model", type=Path, default=None, help="a miniature-like model directory (default: the SD1 one)")
    args = ap.parse_args()
    STEPS = args.steps
    model = setup(args.model)
    mem = labelled("memorized")
    refs = {r["prompt"]: reference(r) for r in mem}
    general = [r["prompt"] for r in labelled("general")][: args.general]
    seeds = list(range(args.seeds))
    train = (model.path / "prompts" / "general_train.txt").read_text(encoding="utf-8").splitlines()
    threshold = threshold_at_fpr([d[0].score for d in score_prompts(model, train, [0], batch_size=64)], 0.01)

    with Timer() as t:
        plain = generate(model, [r["prompt"] for r in mem], seeds)
        gplain = generate(model, general, [0])
    plain_seconds = t.seconds / (len(plain) + len(gplain))
    d_mem = [copy_distance(g.image, refs[g.prompt]) for g in plain]
    d_gen = [min(copy_distance(g.image, ref) for ref in refs.values()) for g in gplain]
    tau = statistics.quantiles(d_gen, n=100)[0]
    for name, values in (("memorized -> own training image", d_mem), ("general -> nearest training image", d_gen)):
        q = statistics.quantiles(values, n=100)
        print(
            f"RMS distance, {name}: min {min(values):.3f}, 1% {q[0]:.3f}, median {statistics.median(values):.3f}, "
            f"99% {q[-1]:.3f}, max {max(values):.3f}"
        )
    print(f"copy threshold tau = {tau:.3f}; detection threshold (1% FPR on training captions) = {threshold:.3f}")

    rows = [evaluate(model, "none", "-", None, mem, refs, general, seeds, tau, threshold, False, plain_seconds)]
    sweeps = [
        ("embedding", "target x", [(r, Embedding(max_iters=10, target_ratio=r)) for r in (1.0, 0.5, 0.25)]),
        ("embedding", "iters (target x0.5)", [(n, Embedding(max_iters=n, target_ratio=0.5)) for n in (20, 40)]),
        ("attention", "C (BOS)", [(c, Attention(c_bos=c)) for c in (1.25, 2.0, 4.0)]),
        ("guidance", "scale before", [(b, Guidance(before=b)) for b in (1.0, 0.0, -2.0)]),
        (
            "guidance static",
            "t switch (OG -2)",
            [(t, Guidance(mode="static", before=-2.0, switch_t=t)) for t in (500, 700)],
        ),
    ]
    for name, knob, variants in [] if args.auto_only else sweeps:
        if args.only and name not in args.only:
            continue
        for value, strategy in variants:
            rows.append(
                evaluate(
                    model,
                    name,
                    f"{knob} {value}",
                    strategy,
                    mem,
                    refs,
                    general,
                    seeds,
                    tau,
                    threshold,
                    True,
                    plain_seconds,
                )
            )
    if not args.only or "auto" in args.only:
        rows.append(
            evaluate(
                model, "auto (gated)", "-", Auto(), mem, refs, general, seeds, tau, threshold, False, plain_seconds
            )
        )
    table(
        ["strategy", "knob", "replication", "fidelity", "general touched", "time ratio", "UNet evals ratio"],
        rows,
        f"Mitigation on the miniature: {len(mem)} memorized captions x {len(seeds)} seeds, {len(general)} general "
        f"prompts, DDIM {STEPS}, guidance 7.5 (forced on every image except the gated row)",
    )


if __name__ == "__main__":
    main()
