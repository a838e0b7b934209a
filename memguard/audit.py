"""Audit a captioned image folder before fine-tuning: duplicated images and captions, and the base model's score.

The folder layout is the one kohya's sd-scripts and diffusers' DreamBooth/LoRA scripts read: image files with a
same-name ``.txt`` caption beside them (``cat.png`` + ``cat.txt``), subfolders allowed. Duplicates are what makes a
fine-tune memorize (Webster 2023; Wen et al. 2024 fine-tune with 200 copies per image), so the audit reports:

* near-duplicate image groups: images whose 64-bit dHash and pHash both lie within ``max_distance`` bits
  (:mod:`memguard.perceptual_hash`), joined transitively (union-find);
* duplicate captions (the same text after case folding and dropping punctuation and extra spaces) and
  near-duplicate captions (word-set Jaccard similarity >= ``jaccard``, default 0.8), joined transitively;
* each caption's first-step memorization score under the base model (:func:`memguard.pipeline.score_prompts`) and
  whether it is above the model's threshold: what the base model already reproduces.

A file that cannot be used (an unreadable image, a missing, empty or non-UTF-8 caption, a caption without an image)
becomes a report row with an ``error`` and is left out of everything else; the audit never stops on one.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .perceptual_hash import dhash, near_duplicate_pairs, phash
from .ui.files import spreadsheet_cell

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_SUFFIX = ".txt"


@dataclass
class Entry:
    """One report row: an image and its caption, or a file that could not be used (``error``)."""

    file: str
    caption: str | None = None
    score: float | None = None
    flagged: bool = False
    image_group: int | None = None
    image_group_size: int = 0
    caption_copies: int = 0
    caption_group: int | None = None
    caption_group_size: int = 0
    error: str | None = None
    dhash: str | None = None
    phash: str | None = None

    @property
    def duplication(self) -> int:
        """Copies of this sample the folder holds, counting near-duplicate images or captions."""
        return max(self.image_group_size, self.caption_group_size)


COLUMNS = [f.name for f in fields(Entry)]


def _present(value: str | None) -> str:
    """A field every usable entry (``error is None``) has: its caption, and its hashes once :func:`hash_images` ran."""
    assert value is not None
    return value


def read_caption(path: Path) -> tuple[str | None, str | None]:
    """``(caption, None)`` or ``(None, "kind: detail")``: missing, unreadable, not UTF-8 (reported and skipped, not
    guessed), or empty. A UTF-8 byte-order mark is accepted; surrounding whitespace is dropped."""
    if not path.is_file():
        return None, f"missing caption: no {path.name}"
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, f"unreadable caption: {err.strerror or err}"
    try:
        text = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError as err:
        return None, f"non-UTF-8 caption: invalid byte at {err.start}; re-save it as UTF-8"
    if not text:
        return None, "empty caption"
    return text, None


def collect(root: Path) -> list[Entry]:
    """Every image of ``root`` (recursively, in path order) as an entry with its caption or an error; captions
    without an image become error entries too."""
    entries = []
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stems = {p.with_suffix("") for p in files if p.suffix.lower() in IMAGE_SUFFIXES}
    for path in files:
        name = path.relative_to(root).as_posix()
        if path.suffix.lower() in IMAGE_SUFFIXES:
            text, error = read_caption(path.with_suffix(CAPTION_SUFFIX))
            entries.append(Entry(name, caption=text, error=error))
        elif path.suffix.lower() == CAPTION_SUFFIX and path.with_suffix("") not in stems:
            entries.append(Entry(name, error="caption without image"))
    return entries


def hash_images(entries: list[Entry], root: Path, progress: Callable[[int], None] = lambda n: None) -> None:
    """dHash and pHash (hex) of every usable entry's image; a file PIL cannot decode gets an error instead."""
    from PIL import Image

    for entry in entries:
        if entry.error is None:
            try:
                with Image.open(root / entry.file) as image:
                    image.load()
                    entry.dhash, entry.phash = f"{dhash(image):016x}", f"{phash(image):016x}"
            except Exception as err:  # any decoder failure is a per-file problem, never fatal
                entry.error = f"unreadable image: {type(err).__name__}: {err}"
        progress(1)


def components(n: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Connected components of ``n`` items joined by ``pairs`` (union-find); each item's label is its smallest
    member's index."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


def _label(entries: list[Entry], labels: list[int]) -> tuple[list[int], list[int]]:
    """Group numbers 1, 2, ... in order of first appearance for groups of two or more, and group sizes."""
    sizes = Counter(labels)
    numbers: dict[int, int] = {}
    for label in labels:
        if sizes[label] > 1 and label not in numbers:
            numbers[label] = len(numbers) + 1
    return [numbers.get(label, 0) for label in labels], [sizes[label] for label in labels]


def group_images(entries: list[Entry], max_distance: int = 10) -> None:
    """Set ``image_group`` (None when unique) and ``image_group_size`` from near-duplicate hash pairs."""
    usable = [e for e in entries if e.error is None]
    dhashes = [int(_present(e.dhash), 16) for e in usable]
    pairs = near_duplicate_pairs(dhashes, [int(_present(e.phash), 16) for e in usable], max_distance)
    numbers, sizes = _label(usable, components(len(usable), pairs))
    for entry, number, size in zip(usable, numbers, sizes):
        entry.image_group, entry.image_group_size = number or None, size


def normalize_caption(text: str) -> str:
    """Case-folded words, punctuation and repeated whitespace dropped: ``"A cat, sitting."`` -> ``"a cat sitting"``."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


def similar_pairs(texts: list[str], jaccard: float) -> list[tuple[int, int]]:
    """Pairs of texts whose word sets have Jaccard similarity >= ``jaccard`` (0 < jaccard <= 1).

    Prefix filtering (Chaudhuri et al. 2006; Xiao et al. 2008): with words ordered rarest first, two sets of
    similarity >= t share a word among the first ``|x| - ceil(t |x|) + 1`` of each, so only texts sharing such a
    word are compared.
    """
    sets = [set(t.split()) for t in texts]
    frequency = Counter(w for s in sets for w in s)
    index: dict[str, list[int]] = {}
    pairs = []
    for i, words in enumerate(sets):
        if not words:
            continue
        ordered = sorted(words, key=lambda w: (frequency[w], w))
        prefix = ordered[: len(ordered) - math.ceil(jaccard * len(ordered) - 1e-9) + 1]
        candidates = {j for w in prefix for j in index.get(w, ())}
        pairs += [(j, i) for j in sorted(candidates) if len(words & sets[j]) / len(words | sets[j]) >= jaccard]
        for w in prefix:
            index.setdefault(w, []).append(i)
    return pairs


def group_captions(entries: list[Entry], jaccard: float = 0.8) -> None:
    """Set ``caption_copies`` (same normalized text) and ``caption_group``/``caption_group_size`` (near-duplicates)."""
    usable = [e for e in entries if e.error is None]
    normalized = [normalize_caption(_present(e.caption)) for e in usable]
    copies = Counter(normalized)
    distinct = list(dict.fromkeys(normalized))
    position = {text: k for k, text in enumerate(distinct)}
    of_text = components(len(distinct), similar_pairs(distinct, jaccard))
    numbers, sizes = _label(usable, [of_text[position[text]] for text in normalized])
    for entry, text, number, size in zip(usable, normalized, numbers, sizes):
        entry.caption_copies, entry.caption_group, entry.caption_group_size = copies[text], number or None, size


def score_captions(model, entries: list[Entry], seeds: Sequence[int], threshold: float | None, **kwargs) -> None:
    """Mean first-step score over ``seeds`` of each distinct caption (scored once), flagged above ``threshold``."""
    from .pipeline import score_prompts

    usable = [e for e in entries if e.error is None]
    captions = list(dict.fromkeys(_present(e.caption) for e in usable))
    per_caption = score_prompts(model, captions, seeds, threshold=threshold, **kwargs)
    means = {}
    for text, detections in zip(captions, per_caption):
        finite = [d.score for d in detections if d.score is not None and math.isfinite(d.score)]
        means[text] = sum(finite) / len(finite) if finite else None
    for entry in usable:
        entry.score = means[_present(entry.caption)]
        entry.flagged = bool(entry.score is not None and threshold is not None and entry.score > threshold)


def ranked(entries: list[Entry]) -> list[Entry]:
    """Worst offenders first: flagged captions (the base model already reproduces them), then the most duplicated
    samples (what a fine-tune will memorize), then by score; files with an error last, in path order."""
    good = [e for e in entries if e.error is None]
    bad = [e for e in entries if e.error is not None]
    good.sort(key=lambda e: (not e.flagged, -e.duplication, -(e.score if e.score is not None else -math.inf), e.file))
    return good + sorted(bad, key=lambda e: e.file)


def summarize(entries: list[Entry]) -> dict:
    """Counts for the printed summary and the report header."""
    good = [e for e in entries if e.error is None]
    image_groups = Counter(e.image_group for e in good if e.image_group)
    caption_groups = Counter(e.caption_group for e in good if e.caption_group)
    exact = Counter(normalize_caption(_present(e.caption)) for e in good)
    return {
        "files": len(entries),
        "usable": len(good),
        "problems": dict(Counter(e.error.split(":")[0] for e in entries if e.error)),
        "near_duplicate_image_groups": len(image_groups),
        "images_in_groups": sum(image_groups.values()),
        "largest_image_group": max(image_groups.values(), default=0),
        "duplicate_caption_texts": sum(1 for n in exact.values() if n > 1),
        "near_duplicate_caption_groups": len(caption_groups),
        "captions_in_groups": sum(caption_groups.values()),
        "largest_caption_group": max(caption_groups.values(), default=0),
        "scored": sum(e.score is not None for e in good),
        "flagged": sum(e.flagged for e in good),
    }


def counts(problems: dict[str, int]) -> str:
    """``"1 empty caption, 2 unreadable image"``, or ``"none"``."""
    return ", ".join(f"{n} {kind}" for kind, n in sorted(problems.items())) or "none"


def write_csv(entries: list[Entry], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for entry in entries:  # text a spreadsheet would evaluate (a caption "=..."), neutralized as the tab's CSV does
            writer.writerow({k: spreadsheet_cell(v) if isinstance(v, str) else v for k, v in asdict(entry).items()})


def write_jsonl(entries: list[Entry], path: Path) -> None:
    path.write_text("".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")


def write_html(entries: list[Entry], summary: dict, path: Path, title: str) -> None:
    """A standalone page: the summary, then one table row per entry (flagged rows tinted); every string escaped."""

    def cell(value) -> str:
        if value is None:
            return "<td></td>"
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return f"<td>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "\n".join(
        f'<tr class="{"flagged" if e.flagged else "error" if e.error else ""}">'
        + "".join(cell(getattr(e, c)) for c in COLUMNS)
        + "</tr>"
        for e in entries
    )

    def shown(value) -> str:
        if isinstance(value, dict):
            return counts(value)
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    items = "".join(f"<li>{html.escape(k.replace('_', ' '))}: {html.escape(shown(v))}</li>" for k, v in summary.items())
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}
tr.flagged{{background:#fdd}}tr.error{{color:#777}}</style></head>
<body><h1>{html.escape(title)}</h1><ul>{items}</ul>
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table></body></html>
"""
    path.write_text(page, encoding="utf-8")
