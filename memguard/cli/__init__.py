"""Command line: audit prompts and captioned training folders, calibrate a model, generate with mitigation.

``python -m memguard --help`` lists the commands; every command works on a local diffusers-format model directory
(the bundled miniature by default) and downloads nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import strategies
from ..calibrate import default_store
from ..miniature import MODEL_DIR
from .audit_data import cmd_audit_data
from .commands import cmd_calibrate, cmd_demo, cmd_generate, cmd_scan


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="memguard" if Path(sys.argv[0]).name == "memguard" else "python -m memguard",
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
