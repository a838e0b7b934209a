"""Training-time mitigation on the miniature: fine-tune on a folder with duplicated images, without and with the filter.

The fine-tune data are drawn like the miniature's own (:mod:`memguard.miniature.data`, another seed): ``--general``
general images with their captions plus ``--duplicated`` new detailed images (drawn like the miniature's memorized
ones, but new), each with an ordinary caption from the general grammar and repeated ``--copies`` times (what a small
captioned folder with repeats looks like). Both runs start from the shipped miniature weights and see the same
batches, noise and timesteps (same seed, same steps); a filtered run drops, at each step, the samples with
``d >= threshold`` at their training timestep (:mod:`memguard.training`).

The threshold is calibrated the way a user can, without knowing which images are duplicated: ``d`` of the base
model on every distinct (image, caption) pair of the folder at ``--draws`` random training timesteps each, the
``--quantile`` (one filtered run per value given) per tenth of the timestep range.

* replication: share of generations of the duplicated captions (``--seeds`` each) whose RMS pixel distance to their
  training image is below ``tau``, the 1st percentile of the base model's general generations' distance to the
  nearest duplicated image (as bench/mitigation.py);
* fidelity: attribute accuracy on the miniature's held-out general prompts (``fidelity.attribute_accuracy``);
* training time: wall time of each training loop, and the filtered / unfiltered ratio from short interleaved runs
  (median and min-max over rounds, CPU and wall time, the load), which a shared machine disturbs less; the samples the
  filter dropped over training;
* where the filter acts: the share of duplicated and general pairs over the first threshold per tenth of the
  timestep range, for the model of the unfiltered fine-tune.

* ``--strikes N ...``: also memguard's per-sample variant (:class:`memguard.training.FlaggedSamples`, samples keyed
  by caption): a caption the filter has dropped ``N`` times is left out for the rest of training.

    OMP_NUM_THREADS=2 .venv/bin/python bench/finetune.py [--steps 400] [--seeds 8] [--quantile 0.99 0.9] [--strikes 1 2]

* ``--model DIR``: another miniature-like model, e.g. the SDXL miniature (``memguard/miniature/model_xl``): its UNet
  calls then carry each caption's pooled vector and the size/crop numbers, captions are dropped by zeroing the context
  and the pooled vector (as SDXL was trained), and the filter's reference is zeros
  (:func:`memguard.training.zero_reference`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import Load, Timer, generate, interleave, labelled, ratio, setup, table

from memguard.miniature import train
from memguard.miniature.data import caption, sample_labels
from memguard.miniature.fidelity import attribute_accuracy, copy_distance
from memguard.miniature.images import render_general, render_memorized
from memguard.training import (
    FlaggedSamples,
    TimestepThreshold,
    memorization_filter,
    training_magnitudes,
    zero_reference,
)

LEARNING_RATE = 5e-4


def folder(seed: int, n_general: int, n_duplicated: int, copies: int, avoid: set[str]):
    """Images, captions and a duplicated flag per training pair, plus the duplicated images and their captions."""
    rng = np.random.default_rng(seed)
    labels = [sample_labels(rng) for _ in range(n_general)]
    images = [render_general(rng, lab) for lab in labels]
    captions = [caption(rng, lab) for lab in labels]
    names: list[str] = []
    while len(names) < n_duplicated:
        text = caption(rng, sample_labels(rng))
        if text not in avoid and text not in captions and text not in names:
            names.append(text)
    originals = [render_memorized(rng) for _ in names]
    images += [image for image in originals for _ in range(copies)]
    captions += [name for name in names for _ in range(copies)]
    duplicated = torch.tensor([False] * n_general + [True] * (n_duplicated * copies))
    return torch.from_numpy(np.stack(images)), captions, duplicated, names, originals


@dataclass
class Text:
    """The training pairs' text conditioning, indexed like a tensor: the cross-attention context and, on SDXL, the
    pooled vector (None on SD1)."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    def __getitem__(self, rows) -> Text:
        return Text(self.context[rows], None if self.pooled is None else self.pooled[rows])

    def kwargs(self, model) -> dict:
        """The UNet call's extra keyword arguments: SDXL's ``added_cond_kwargs`` (pooled vector, size/crop numbers)."""
        if self.pooled is None:
            return {}
        return {"added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": model.time_ids(len(self.pooled))}}

    def reference(self, model) -> tuple[torch.Tensor, dict | None]:
        """The filter's empty reference and its keyword arguments (SDXL: zeros, the samples' sizes)."""
        return zero_reference(self.context, self.kwargs(model)) if self.pooled is not None else (model.empty(), None)


def magnitudes(model, images, contexts: Text, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, t)`` of the base model on the distinct pairs of the folder, ``draws`` timesteps each (no labels used)."""
    from diffusers import DDPMScheduler

    generator = torch.Generator().manual_seed(seed)
    scheduler = DDPMScheduler(**train.SCHEDULE)
    d, t = [], []
    for _ in range(draws):
        for rows in torch.arange(len(images)).split(64):
            text = contexts[rows]
            empty, empty_kwargs = text.reference(model)
            dd, tt = training_magnitudes(
                model.unet,
                images[rows],
                text.context,
                empty,
                scheduler,
                generator,
                cond_kwargs=text.kwargs(model) or None,
                empty_kwargs=empty_kwargs,
            )
            d.append(dd)
            t.append(tt)
    return torch.cat(d), torch.cat(t)


def finetune(
    model,
    images,
    contexts: Text,
    duplicated,
    steps: int,
    seed: int,
    threshold: TimestepThreshold | None,
    flagged: FlaggedSamples | None = None,
    keys: list | None = None,
):
    """The training loop of docs/fine-tuning.md's example: epsilon loss, caption dropout, the filter when
    ``threshold``, per sample (``flagged``, samples keyed by ``keys``) when given."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    unet = copy.deepcopy(model.unet).train().requires_grad_(True)
    scheduler = DDPMScheduler(**train.SCHEDULE)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed + 1)
    empty = model.empty()
    dropped = {"duplicated": 0, "general": 0, "skipped steps": 0}
    for _, pairs in zip(range(steps), train.batches(len(images), generator)):
        x0, text = images[pairs], contexts[pairs]
        text = Text(text.context.clone(), None if text.pooled is None else text.pooled.clone())
        drop = torch.rand(len(pairs), generator=generator) < train.CAPTION_DROPOUT
        text.context[drop] = empty  # SD1: the encoding of ""; SDXL: zeros (Model.empty), the pooled vector too
        if text.pooled is not None:
            text.pooled[drop] = 0
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(pairs),), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        kwargs = text.kwargs(model)
        model_pred = unet(noisy, t, encoder_hidden_states=text.context, **kwargs).sample
        keep = torch.ones(len(pairs), dtype=torch.bool)
        if threshold is not None:
            reference, reference_kwargs = text.reference(model)
            kept = memorization_filter(
                unet,
                noisy,
                t,
                text.context,
                reference,
                threshold,
                model_pred=model_pred,
                cond_kwargs=kwargs or None,
                empty_kwargs=reference_kwargs,
            )
            if flagged is not None:
                kept = flagged.update([keys[i] for i in pairs.tolist()], kept)
            keep = kept.keep
            dropped["duplicated"] += int((~keep & duplicated[pairs]).sum())
            dropped["general"] += int((~keep & ~duplicated[pairs]).sum())
            if kept.skip:
                dropped["skipped steps"] += 1
                continue
        loss = F.mse_loss(model_pred[keep], noise[keep])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
    return dataclasses.replace(model, unet=unet.eval().requires_grad_(False)), dropped


def overhead(model, images, contexts, duplicated, threshold, rounds: int = 7, steps: int = 10) -> str:
    """Filtered / unfiltered training time of short runs interleaved (plain, filtered, filtered, plain, ...; one
    warm-up round): the median per-round ratio and its min-max, by CPU and wall time, with the machine's load (the
    machine is shared, so the whole runs' wall times also measure the neighbours)."""
    cases = {
        name: (lambda t=t: finetune(model, images, contexts, duplicated, steps, 0, t))
        for name, t in (("plain", None), ("filtered", threshold))
    }
    with Load() as load:
        times = interleave(cases, rounds)
    return (
        f"{ratio(times.cpu, 'filtered', 'plain')} by CPU time, {ratio(times.wall, 'filtered', 'plain')} by wall time, "
        f"{rounds} interleaved rounds of {steps} steps; {load.line()}"
    )


def dropped_by_timestep(model, images, contexts, duplicated, distinct, threshold) -> str:
    """Share of duplicated / general pairs the filter would drop, per tenth of the timestep range, for ``model``."""
    dup = torch.tensor([i for i in distinct if duplicated[i]])
    gen = torch.tensor([i for i in distinct if not duplicated[i]][:100])
    lines = []
    for name, rows in (("duplicated", dup.repeat(400 // len(dup))), ("general", gen.repeat(4))):
        d, t = magnitudes(model, images[rows], contexts[rows], 1, 5)
        over, bucket = d >= threshold(t), t * len(threshold.values) // threshold.num_train_timesteps
        lines.append(f"{name}: " + " ".join(f"{over[bucket == k].float().mean():.2f}" for k in range(10)))
    return "; ".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400, help="fine-tuning steps at batch 32 (default 400)")
    ap.add_argument("--seeds", type=int, default=8, help="generations per duplicated caption (default 8)")
    ap.add_argument("--general", type=int, default=400, help="general images in the folder (default 400)")
    ap.add_argument("--duplicated", type=int, default=4, help="duplicated images (default 4)")
    ap.add_argument("--copies", type=int, default=50, help="copies of each duplicated image (default 50)")
    ap.add_argument("--quantile", type=float, nargs="+", default=[0.99], help="calibration quantiles (default 0.99)")
    ap.add_argument("--draws", type=int, default=4, help="timesteps drawn per calibration pair (default 4)")
    ap.add_argument("--prompts", type=int, default=64, help="held-out general prompts for fidelity (default 64)")
    ap.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the generations (default 25)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--strikes",
        type=int,
        nargs="*",
        default=[2],
        help="also run the per-sample filter (FlaggedSamples keyed by caption) with these strike counts (default 2)",
    )
    ap.add_argument("--model", type=Path, default=None, help="a miniature-like model directory (default: the SD1 one)")
    ap.add_argument(
        "--overhead-only", action="store_true", help="only the filter's training-time overhead (after calibrating)"
    )
    args = ap.parse_args()
    base = setup(args.model)
    general = [r["prompt"] for r in labelled("general")][: args.prompts]
    avoid = set(general)
    images, captions, duplicated, names, originals = folder(
        1000 + args.seed, args.general, args.duplicated, args.copies, avoid
    )
    distinct = sorted({c: i for i, c in enumerate(captions)}.values())
    with torch.no_grad():
        toks = {c: base.tokenize(c) for c in dict.fromkeys(captions)}
        table_of = {c: base.encode(tok)[0] for c, tok in toks.items()}
        pooled = torch.cat([base.pooled(toks[c]) for c in captions]) if base.is_xl else None
    contexts = Text(torch.stack([table_of[c] for c in captions]), pooled)
    d, t = magnitudes(base, images[distinct], contexts[distinct], args.draws, args.seed)
    thresholds = {q: TimestepThreshold.calibrate(d, t, quantile=q) for q in args.quantile}
    for q, threshold in thresholds.items():
        print(f"training threshold (q {q}) per tenth of [0, 1000): {', '.join(f'{v:.2f}' for v in threshold.values)}")
    first = next(iter(thresholds.values()))
    if args.overhead_only:
        print(f"training time with / without the filter: {overhead(base, images, contexts, duplicated, first)}")
        return

    seeds = list(range(args.seeds))
    refs = {name: torch.from_numpy(image) for name, image in zip(names, originals)}
    base_general = generate(base, general, [0], args.sample_steps)
    distances = [min(copy_distance(g.image, ref) for ref in refs.values()) for g in base_general]
    tau = statistics.quantiles(distances, n=100)[0]
    print(f"copy threshold tau = {tau:.3f} (1st percentile of base general generations -> nearest duplicated image)")

    def evaluate(name, model, seconds, dropped):
        gens = generate(model, names, seeds, args.sample_steps)
        copies = [copy_distance(g.image, refs[g.prompt]) < tau for g in gens]
        median = statistics.median(copy_distance(g.image, refs[g.prompt]) for g in gens)
        ggens = base_general if model is base else generate(model, general, [0], args.sample_steps)
        fidelity = attribute_accuracy(torch.stack([g.image for g in ggens]), general)
        return [name, sum(copies) / len(copies), median, fidelity, seconds, dropped]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows = [evaluate("base (shipped miniature)", base, "-", "-")]
    log("fine-tuning without the filter")
    with Timer() as plain_time:
        plain, _ = finetune(base, images, contexts, duplicated, args.steps, args.seed, None)
    log(f"  {plain_time.seconds:.0f} s; evaluating")
    print(
        f"share of pairs over the q {first.quantile} threshold after the unfiltered fine-tune, per tenth of the "
        f"timestep range: {dropped_by_timestep(plain, images, contexts, duplicated, distinct, first)}"
    )
    rows.append(evaluate("fine-tuned", plain, f"{plain_time.seconds:.0f} s", "-"))

    def filtered_row(label: str, threshold: TimestepThreshold, memory: FlaggedSamples | None) -> list:
        log(f"fine-tuning with the {label}")
        with Timer() as clock:
            model, dropped = finetune(
                base, images, contexts, duplicated, args.steps, args.seed, threshold, memory, captions
            )
        log(f"  {clock.seconds:.0f} s; evaluating")
        summary = (
            f"{dropped['duplicated']} duplicated + {dropped['general']} general of "
            f"{args.steps * train.BATCH_SIZE} ({dropped['skipped steps']} steps skipped)"
        )
        if memory is not None:
            excluded = memory.excluded
            summary += (
                f"; captions left out: {len(excluded & set(names))} of {len(names)} duplicated, "
                f"{len(excluded - set(names))} general"
            )
        time = f"{clock.seconds:.0f} s (x{clock.seconds / plain_time.seconds:.2f})"
        return evaluate(f"+ {label}", model, time, summary)

    for q, threshold in thresholds.items():
        rows.append(filtered_row(f"Wen's filter (q {q})", threshold, None))
        for strikes in args.strikes:
            label = f"per-sample filter (q {q}, {strikes} strikes)"
            rows.append(filtered_row(label, threshold, FlaggedSamples(strikes)))
    n_dup = int(duplicated.float().mean().item() * args.steps * train.BATCH_SIZE)
    log("timing the overhead")
    print(f"training time with / without the filter: {overhead(base, images, contexts, duplicated, first)}")
    table(
        ["model", "replication", "median copy distance", "fidelity", "training time", "samples dropped"],
        rows,
        f"Fine-tuning the miniature {args.steps} steps x {train.BATCH_SIZE} on {args.general} general images + "
        f"{args.duplicated} images x {args.copies} copies (about {n_dup} duplicated samples seen); replication of "
        f"the duplicated captions over {len(seeds)} seeds, fidelity on {len(general)} held-out general prompts, "
        f"DDIM {args.sample_steps}",
    )


if __name__ == "__main__":
    main()
