"""What the commands share: prompt files, the model, its threshold (calibrating on first use), strategies, progress
bars, highlighted words, saved images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import strategies
from ..calibrate import Calibration, CalibrationStore, CalibrationStoreError
from ..service import benign_prompts


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
    from ..pipeline import score_prompts

    with progress(len(prompts), "calibrate") as bar:
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
    from ..pipeline import Model, ModelError

    try:
        return Model.load(args.model, device=args.device)
    except ModelError as err:
        raise SystemExit(f"memguard: {err}") from err


def build_strategy(name: str):
    """``--mitigation``: a strategy of the registry, or None for ``none``."""
    return None if name == "none" else strategies.build(name)


def progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None, file=sys.stderr)


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


def save_image(image, path: Path, upscale: int = 1) -> None:
    import numpy as np
    from PIL import Image

    pixels = ((image.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    if upscale > 1:
        picture = picture.resize((picture.width * upscale, picture.height * upscale), Image.Resampling.NEAREST)
    picture.save(path)
