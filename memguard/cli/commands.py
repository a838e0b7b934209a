"""``scan``, ``calibrate``, ``generate`` and ``demo``."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..calibrate import CalibrationStore, CalibrationStoreError
from ..result import FLAGGED, OK
from ..service import benign_prompts
from .common import (
    build_strategy,
    calibrate_model,
    highlight,
    load_model,
    progress,
    read_prompts,
    resolve_threshold,
    save_image,
)


def scan_prompts(model, items, seeds, args, threshold) -> list[dict]:
    """Score every prompt over ``seeds`` (batched) and return one result dict per prompt, in input order."""
    from ..pipeline import explain_prompt, score_prompts

    with progress(len(items) * len(seeds), "scan") as bar:
        per_prompt = score_prompts(
            model,
            [p for _, p in items],
            seeds,
            batch_size=args.batch_size,
            progress=bar.update,
            steps=args.steps,
            guidance=args.guidance,
            score_steps=args.score_steps,
            threshold=threshold,
            method=args.method,
        )
    results = []
    for (index, prompt), dets in zip(items, per_prompt):
        scores = [d.score for d in dets]
        finite = [s for s in scores if s is not None]
        mean = sum(finite) / len(finite) if finite else None
        entry = {
            "line": index,
            "prompt": prompt,
            "score": mean,
            "scores": scores,
            "seeds": list(seeds),
            "flagged": bool(mean is not None and threshold is not None and mean > threshold),
            "threshold": threshold,
            "method": args.method,
        }
        reasons = sorted({d.reason for d in dets if d.reason})
        if reasons:
            entry["error"] = "; ".join(reasons)
        if args.explain:
            entry.update(explain_prompt(model, prompt, seeds, steps=args.steps, guidance=args.guidance).to_dict())
        results.append(entry)
    return results


def cmd_scan(args) -> int:
    model = load_model(args)
    threshold, source = resolve_threshold(args, model)
    items = read_prompts(args.prompts)
    seeds = [args.seed + j for j in range(args.seeds)]
    results = scan_prompts(model, items, seeds, args, threshold)
    sink = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        for r in results:
            sink.write(json.dumps(r, ensure_ascii=False) + "\n")
    finally:
        if args.out:
            sink.close()
    flagged = sum(r["flagged"] for r in results)
    print(
        f"memguard: {flagged} of {len(results)} prompts flagged (threshold {threshold} from {source})", file=sys.stderr
    )
    return 0


def cmd_calibrate(args) -> int:
    model = load_model(args)
    if args.prompts is not None:
        prompts, name = [p for _, p in read_prompts(args.prompts)], Path(args.prompts).name
    else:
        prompts, name = benign_prompts(), "memguard benign"
    try:
        CalibrationStore(args.store).check_writable()  # before scoring: a long run's result must not be lost
    except CalibrationStoreError as err:
        raise SystemExit(f"memguard: could not store the calibration: {err}") from err
    calibration = calibrate_model(model, prompts, args, args.fpr, origin="user", name=name)
    if args.ship:
        from ..pipeline import CALIBRATION_FILE

        target = Path(args.model) / CALIBRATION_FILE
        target.write_text(json.dumps(asdict(calibration), indent=2) + "\n", encoding="utf-8")
        print(f"memguard: wrote {target}")
    try:
        CalibrationStore(args.store).put(model.model_hash, calibration)
    except (CalibrationStoreError, OSError) as err:
        raise SystemExit(f"memguard: could not store the calibration: {err}") from err
    print(
        f"memguard: model {model.model_hash}: threshold {calibration.threshold:.4g} at FPR {args.fpr:g} "
        f"from {calibration.n_prompts} benign prompts (median {calibration.median:.4g}); stored in {args.store}"
    )
    return 0


def cmd_generate(args) -> int:
    import numpy as np

    from ..pipeline import sample

    model = load_model(args)
    threshold, _ = resolve_threshold(args, model)
    items = [(0, args.prompt)] if args.prompt is not None else read_prompts(args.prompts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    strategy = build_strategy(args.mitigation)
    with progress(len(items) * args.images, "generate") as bar:
        for index, prompt in items:
            seeds = [args.seed + j for j in range(args.images)]
            gens = sample(
                model,
                prompt,
                seeds,
                steps=args.steps,
                guidance=args.guidance,
                negative=args.negative,
                threshold=threshold,
                strategy=strategy,
                force=args.force,
            )
            for gen in gens:
                stem = out / f"{index:05d}-{gen.seed}"
                if args.output_type == "latent" and gen.latent is not None:
                    np.save(stem.with_suffix(".npy"), gen.latent.detach().cpu().float().numpy())
                elif gen.image is not None:
                    save_image(gen.image, stem.with_suffix(".png"), args.upscale)
                sidecar = {"line": index, **gen.to_dict(), "mitigation_requested": args.mitigation}
                stem.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
                bar.update(1)
    print(f"memguard: wrote {len(items) * args.images} images to {out}", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """Scan the bundled memorized and general prompts, highlight the words that drive each flag, mitigate one."""
    from ..pipeline import sample

    model = load_model(args)
    threshold, source = resolve_threshold(args, model)
    prompts_dir = Path(args.model) / "prompts"
    memorized = [p for _, p in read_prompts(prompts_dir / "memorized.txt")][: args.n]
    general = [p for _, p in read_prompts(prompts_dir / "general_heldout.txt")][: args.n]
    items = list(enumerate(memorized + general))
    args.explain, args.score_steps, args.method = False, 1, "wen"
    results = scan_prompts(model, items, [args.seed], args, threshold)
    color = sys.stdout.isatty()
    print(f"\nmemguard demo on {args.model} (threshold {threshold:.3g}, {source})\n")
    print(f"{'kind':<10} {'score':>7}  verdict   prompt")
    from ..pipeline import explain_prompt

    for kind, r in zip(["memorized"] * len(memorized) + ["general"] * len(general), results):
        verdict = FLAGGED if r["flagged"] else OK
        text = r["prompt"]
        if r["flagged"]:
            words = explain_prompt(model, text, [args.seed], steps=args.steps).to_dict()["words"]
            text = highlight(words, text, color)
        print(f"{kind:<10} {r['score']:7.3f}  {verdict:<8}  {text}")
    flagged_mem = sum(r["flagged"] for r in results[: len(memorized)])
    flagged_gen = sum(r["flagged"] for r in results[len(memorized) :])
    print(f"\nflagged {flagged_mem}/{len(memorized)} memorized and {flagged_gen}/{len(general)} general prompts")
    first = next((r for r in results if r["flagged"]), None)
    if first is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plain = sample(model, first["prompt"], [args.seed], steps=args.steps, threshold=threshold)[0]
        fixed = sample(
            model, first["prompt"], [args.seed], steps=args.steps, threshold=threshold, strategy=build_strategy("auto")
        )[0]
        save_image(plain.image, out / "copy.png", 8)
        save_image(fixed.image, out / "mitigated.png", 8)
        report = fixed.mitigation
        if report is None:
            raise SystemExit(f"memguard: {first['prompt']!r} was flagged but not mitigated")
        print(
            f"mitigated {first['prompt']!r}: score {report.score_before:.3f} -> {report.score_after:.3f} "
            f"({report.strategy}, {report.unet_equivalents:g} UNet evaluations); images in {out}/copy.png and "
            f"{out}/mitigated.png"
        )
    return 0
