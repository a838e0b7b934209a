"""Command line: audit prompts and captioned training folders, calibrate a model, generate with mitigation.

``python -m memguard --help`` lists the commands; every command works on a local diffusers-format model directory
(the bundled miniature by default) and downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from . import strategies
from .calibrate import Calibration, CalibrationStore, CalibrationStoreError, default_store
from .miniature import MODEL_DIR
from .service import benign_prompts


def read_prompts(path: Path) -> list[tuple[int, str]]:
    """``(line index, prompt)`` from a text file (one per line) or JSON lines with a ``prompt`` or ``caption`` field."""
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SystemExit(f"memguard: cannot read prompts from {path}: {err}") from err
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"memguard: {path}:{index + 1} is not valid JSON: {err}") from err
            text = row.get("prompt", row.get("caption")) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise SystemExit(f"memguard: {path}:{index + 1} has no 'prompt' or 'caption' string")
            out.append((index, text))
        else:
            out.append((index, line))
    return out


def resolve_threshold(args, model) -> tuple[float | None, str]:
    """``--threshold``, else the calibration store's entry for this model, else the model's shipped calibration,
    else a calibration made now on memguard's benign prompts and stored (unless ``--no-calibrate``)."""
    if args.threshold is not None:
        return args.threshold, "--threshold"
    store = CalibrationStore(args.store)
    try:
        stored = store.get(model.model_hash)
    except CalibrationStoreError as err:
        print(f"memguard: {err}", file=sys.stderr)
        stored = None
    if stored is not None:
        return stored.threshold, f"{model.model_hash} {stored.describe()}"
    shipped = model.shipped_threshold()
    if shipped is not None:
        return shipped, "shipped with the model"
    if args.no_calibrate:
        print("memguard: this model is not calibrated and --no-calibrate is set: nothing is judged", file=sys.stderr)
        return None, "none"
    print(
        f"memguard: model {model.model_hash} is not calibrated: calibrating it on memguard's benign prompts "
        "(once; --no-calibrate skips this)",
        file=sys.stderr,
    )
    calibration = calibrate_model(model, benign_prompts(), args, fpr=0.01, origin="automatic", name="memguard benign")
    try:
        store.put(model.model_hash, calibration)
    except (CalibrationStoreError, OSError) as err:
        print(f"memguard: the calibration is used for this run but not stored: {err}", file=sys.stderr)
    print(f"memguard: threshold {calibration.threshold:.4g} at FPR 0.01 (stored in {args.store})", file=sys.stderr)
    return calibration.threshold, f"{model.model_hash} {calibration.describe()}"


def calibrate_model(model, prompts: list[str], args, fpr: float, origin: str, name: str) -> Calibration:
    """The model's threshold at ``fpr`` from first-step scores of benign ``prompts`` (seed ``--seed``, batched)."""
    from .pipeline import score_prompts

    with _progress(len(prompts), "calibrate") as bar:
        per_prompt = score_prompts(
            model,
            prompts,
            [args.seed],
            batch_size=args.batch_size,
            progress=bar.update,
            steps=args.steps,
            guidance=args.guidance,
        )
    scores = [d.score for dets in per_prompt for d in dets if d.score is not None]
    return Calibration.from_scores(scores, fpr, prompts=name, steps=1, origin=origin)


def load_model(args):
    from .pipeline import Model, ModelError

    try:
        return Model.load(args.model, device=args.device)
    except ModelError as err:
        raise SystemExit(f"memguard: {err}") from err


def build_strategy(name: str):
    """``--mitigation``: a strategy of the registry, or None for ``none``."""
    return None if name == "none" else strategies.build(name)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None, file=sys.stderr)


def scan_prompts(model, items, seeds, args, threshold) -> list[dict]:
    """Score every prompt over ``seeds`` (batched) and return one result dict per prompt, in input order."""
    from .pipeline import explain_prompt, score_prompts

    with _progress(len(items) * len(seeds), "scan") as bar:
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


def highlight(explanation_words: list[dict], prompt: str, color: bool) -> str:
    """The prompt with its most significant words marked: ANSI colour on a terminal, ``[word]`` otherwise."""
    out, cursor = [], 0
    for w in sorted(explanation_words, key=lambda w: w["start"]):
        out.append(prompt[cursor : w["start"]])
        text = prompt[w["start"] : w["end"]]
        if w["normalized"] >= 0.5:
            level = 196 if w["normalized"] >= 0.8 else 208
            text = f"\033[1;38;5;{level}m{text}\033[0m" if color else f"[{text}]"
        out.append(text)
        cursor = w["end"]
    out.append(prompt[cursor:])
    return "".join(out)


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
        from .pipeline import CALIBRATION_FILE

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


def save_image(image, path: Path, upscale: int = 1) -> None:
    import numpy as np
    from PIL import Image

    pixels = ((image.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    if upscale > 1:
        picture = picture.resize((picture.width * upscale, picture.height * upscale), Image.NEAREST)
    picture.save(path)


def cmd_generate(args) -> int:
    import numpy as np

    from .pipeline import sample

    model = load_model(args)
    threshold, _ = resolve_threshold(args, model)
    items = [(0, args.prompt)] if args.prompt is not None else read_prompts(args.prompts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    strategy = build_strategy(args.mitigation)
    with _progress(len(items) * args.images, "generate") as bar:
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
                if args.output_type == "latent":
                    np.save(stem.with_suffix(".npy"), gen.latent.detach().cpu().float().numpy())
                else:
                    save_image(gen.image, stem.with_suffix(".png"), args.upscale)
                sidecar = {"line": index, **gen.to_dict(), "mitigation_requested": args.mitigation}
                stem.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
                bar.update(1)
    print(f"memguard: wrote {len(items) * args.images} images to {out}", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """Scan the bundled memorized and general prompts, highlight the words that drive each flag, mitigate one."""
    from .pipeline import sample

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
    from .pipeline import explain_prompt

    for kind, r in zip(["memorized"] * len(memorized) + ["general"] * len(general), results):
        verdict = "FLAGGED" if r["flagged"] else "ok"
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
        print(
            f"mitigated {first['prompt']!r}: score {report.score_before:.3f} -> {report.score_after:.3f} "
            f"({report.strategy}, {report.unet_equivalents:g} UNet evaluations); images in {out}/copy.png and "
            f"{out}/mitigated.png"
        )
    return 0


def cmd_audit_data(args) -> int:
    """Audit a captioned folder: near-duplicate images and captions, base-model scores; report worst first."""
    from . import audit

    root = Path(args.data)
    if not root.is_dir():
        raise SystemExit(f"memguard: {root} is not a directory: --data takes a folder of images with .txt captions")
    entries = audit.collect(root)
    with _progress(len(entries), "hash") as bar:
        audit.hash_images(entries, root, bar.update)
    audit.group_images(entries, args.hash_distance)
    audit.group_captions(entries, args.jaccard)
    threshold, source = None, "not scored (--no-score)"
    if not args.no_score:
        model = load_model(args)
        threshold, source = resolve_threshold(args, model)
        distinct = len({e.caption for e in entries if e.error is None})
        with _progress(distinct * args.seeds, "score") as bar:
            audit.score_captions(
                model,
                entries,
                [args.seed + j for j in range(args.seeds)],
                threshold,
                batch_size=args.batch_size,
                progress=bar.update,
                steps=args.steps,
                guidance=args.guidance,
            )
    ordered = audit.ranked(entries)
    summary = {**audit.summarize(entries), "threshold": threshold, "threshold_source": source}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix in (".html", ".htm"):
        audit.write_html(ordered, summary, out, f"memguard audit of {root}")
    elif suffix in (".jsonl", ".json"):
        audit.write_jsonl(ordered, out)
    else:
        audit.write_csv(ordered, out)
    if args.html is not None:
        audit.write_html(ordered, summary, args.html, f"memguard audit of {root}")
    problems = audit.counts(summary["problems"])
    print(f"memguard audit-data: {summary['files']} files in {root}, {summary['usable']} usable image-caption pairs")
    print(f"  problems (reported, skipped): {problems}")
    print(
        f"  near-duplicate image groups: {summary['near_duplicate_image_groups']}, holding "
        f"{summary['images_in_groups']} images (largest {summary['largest_image_group']})"
    )
    print(
        f"  captions used more than once: {summary['duplicate_caption_texts']}; near-duplicate caption groups: "
        f"{summary['near_duplicate_caption_groups']}, holding {summary['captions_in_groups']} captions "
        f"(largest {summary['largest_caption_group']})"
    )
    if not args.no_score:
        limit = f"threshold {threshold:.4g} from {source}" if threshold is not None else "no threshold: not calibrated"
        print(f"  base model: {summary['flagged']} of {summary['scored']} pairs flagged ({limit})")
    worst = [e for e in ordered if e.error is None and (e.flagged or e.duplication > 1)][: args.top]
    if worst:
        print("  worst offenders:")
    for e in worst:
        score = f"{e.score:.3f}" if e.score is not None else "-"
        print(
            f"    {e.file}  score {score}{' FLAGGED' if e.flagged else ''}  similar images {e.image_group_size}  "
            f"similar captions {e.caption_group_size}  {e.caption[:60]!r}"
        )
    print(f"  report: {out}" + (f" and {args.html}" if args.html is not None else ""))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m memguard",
        description="Detect, explain and mitigate training-data memorization in text-to-image diffusion models "
        "(Wen et al., ICLR 2024). Works on local diffusers-format model directories; downloads nothing.",
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", type=Path, default=MODEL_DIR, help="diffusers model directory (default: the miniature)"
        )
        p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
        p.add_argument("--steps", type=int, default=50, help="DDIM steps of the schedule (default: 50)")
        p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default: 7.5)")
        p.add_argument("--seed", type=int, default=0, help="first seed; generation j uses seed + j (default: 0)")
        p.add_argument("--threshold", type=float, help="flag scores above this (default: the model's calibration)")
        p.add_argument("--store", type=Path, default=default_store(), help="calibration file (default: %(default)s)")
        p.add_argument("--batch-size", type=int, default=16, help="images per UNet batch (default: 16)")
        p.add_argument(
            "--no-calibrate",
            action="store_true",
            help="do not calibrate an uncalibrated model first (then nothing is judged)",
        )

    p = sub.add_parser("scan", help="score prompts; one JSON line per prompt")
    common(p)
    p.add_argument("--prompts", type=Path, required=True, help="text file (one prompt per line) or JSON lines")
    p.add_argument("--seeds", type=int, default=1, help="generations per prompt, averaged (default: 1)")
    p.add_argument("--score-steps", type=int, default=1, help="average d over the first k steps (default: 1)")
    p.add_argument("--method", choices=("wen", "asthana"), default="wen", help="score (default: wen)")
    p.add_argument("--explain", action="store_true", help="add per-token significance with character spans")
    p.add_argument("--out", type=Path, help="write JSON lines here instead of standard output")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("generate", help="generate images, mitigating flagged ones; PNG/NPY plus a JSON sidecar each")
    common(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="one prompt")
    what.add_argument("--prompts", type=Path, help="prompt file (text or JSON lines)")
    p.add_argument("--images", type=int, default=1, help="images per prompt (default: 1)")
    p.add_argument("--negative", default="", help="negative prompt (the score still uses the empty prompt)")
    p.add_argument(
        "--mitigation",
        choices=("none", *strategies.NAMES),
        default=strategies.DEFAULT,
        help="strategy for flagged images",
    )
    p.add_argument("--force", action="store_true", help="mitigate every image, flagged or not")
    p.add_argument("--output-type", choices=("png", "latent"), default="png", help="PNG images or .npy samples")
    p.add_argument("--upscale", type=int, default=1, help="nearest-neighbour upscale of saved PNGs (default: 1)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("calibrate", help="store this model's threshold at a false-positive rate on benign prompts")
    common(p)
    p.add_argument("--prompts", type=Path, help="benign prompts, text or JSON lines (default: memguard's 320)")
    p.add_argument("--fpr", type=float, default=0.01, help="false-positive rate (default: 0.01)")
    p.add_argument("--ship", action="store_true", help="also write it beside the model's weights, for its users")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("demo", help="scan the miniature's memorized and general prompts, explain and mitigate")
    common(p)
    p.add_argument("--n", type=int, default=8, help="prompts of each kind (default: 8)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where to write the images (default: out/demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "audit-data", help="audit a captioned image folder before fine-tuning: duplicates and base-model scores"
    )
    common(p)
    p.add_argument("--data", type=Path, required=True, help="folder of images with same-name .txt captions")
    p.add_argument("--out", type=Path, required=True, help="report: .csv, .html or .jsonl (worst offenders first)")
    p.add_argument("--html", type=Path, help="also write an HTML report here")
    p.add_argument("--seeds", type=int, default=1, help="seeds per caption, averaged (default: 1)")
    p.add_argument(
        "--hash-distance", type=int, default=10, help="near-duplicate images: dHash and pHash within this many bits"
    )
    p.add_argument("--jaccard", type=float, default=0.8, help="near-duplicate captions: word-set Jaccard >= this")
    p.add_argument("--no-score", action="store_true", help="only the duplicate checks, no model")
    p.add_argument("--top", type=int, default=10, help="worst offenders printed (default: 10)")
    p.set_defaults(func=cmd_audit_data)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"memguard: --{name.replace('_', '-')} must be at least 1")
    return args.func(args)
