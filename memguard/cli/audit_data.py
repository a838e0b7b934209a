"""``audit-data``: a captioned fine-tuning folder's near-duplicate images and captions and base-model scores."""

from __future__ import annotations

from pathlib import Path

from .common import load_model, progress, resolve_threshold


def cmd_audit_data(args) -> int:
    """Audit a captioned folder: near-duplicate images and captions, base-model scores; report worst first."""
    from .. import audit

    root = Path(args.data)
    if not root.is_dir():
        raise SystemExit(f"memguard: {root} is not a directory: --data takes a folder of images with .txt captions")
    entries = audit.collect(root)
    with progress(len(entries), "hash") as bar:
        audit.hash_images(entries, root, bar.update)
    audit.group_images(entries, args.hash_distance)
    audit.group_captions(entries, args.jaccard)
    threshold, source = None, "not scored (--no-score)"
    if not args.no_score:
        model = load_model(args)
        threshold, source = resolve_threshold(args, model)
        distinct = len({e.caption for e in entries if e.error is None})
        with progress(distinct * args.seeds, "score") as bar:
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
            f"    {e.file}  score {score}{' flagged' if e.flagged else ''}  similar images {e.image_group_size}  "
            f"similar captions {e.caption_group_size}  {(e.caption or '')[:60]!r}"
        )
    print(f"  report: {out}" + (f" and {args.html}" if args.html is not None else ""))
    return 0
