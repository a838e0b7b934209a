"""The data audit: perceptual hashes, duplicate grouping, caption checks and the ``audit-data`` command."""

from __future__ import annotations

import csv
import html
import io
import itertools
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from memguard import cli
from memguard.audit import components, normalize_caption, similar_pairs
from memguard.perceptual_hash import dhash, hamming, near_duplicate_pairs, phash
from memguard.pipeline import score_prompts


def picture(seed: int, size: int = 96) -> Image.Image:
    """A smooth random colour field: structure at several scales, like a photo shrunk down."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))


def perturbed(image: Image.Image, seed: int) -> Image.Image:
    """Noise, a resize and a JPEG round trip: what a re-saved copy of the same picture looks like."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image).astype(float) + rng.normal(0, 8, np.asarray(image).shape)
    noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize((80, 80))
    buffer = io.BytesIO()
    noisy.save(buffer, "JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue()))


# ------------------------------------------------------------------------------------------ perceptual hashes


def test_dhash_reads_horizontal_gradients():
    ramp = np.tile(np.linspace(0, 255, 64), (64, 1)).astype(np.uint8)
    assert dhash(Image.fromarray(ramp)) == 0  # brightness rises left to right: no pixel brighter than its right
    assert dhash(Image.fromarray(ramp[:, ::-1].copy())) == 2**64 - 1


def test_hashes_survive_noise_resize_and_jpeg_but_tell_pictures_apart():
    images = [picture(seed) for seed in range(12)]
    for k, image in enumerate(images):
        copy = perturbed(image, k)
        assert hamming(dhash(image), dhash(copy)) <= 6
        assert hamming(phash(image), phash(copy)) <= 8
    for a, b in itertools.combinations(images, 2):
        assert max(hamming(dhash(a), dhash(b)), hamming(phash(a), phash(b))) > 10


def test_phash_handles_transparency_and_palettes():
    rgba = picture(1).convert("RGBA")
    assert phash(rgba) == phash(rgba.convert("RGB"))  # opaque: flattening on white changes nothing
    assert isinstance(phash(picture(2).convert("P")), int)


def test_near_duplicate_pairs_need_both_hashes_close():
    assert near_duplicate_pairs([0, 1, 2**64 - 1], [0, 3, 0], max_distance=2) == [(0, 1)]
    assert near_duplicate_pairs([0, 0], [0, 2**8 - 1], max_distance=7) == []


# ----------------------------------------------------------------------------------------- captions, groups


def test_normalize_caption():
    assert normalize_caption("  A Cat,   sitting_on the MAT!! ") == "a cat sitting on the mat"
    assert normalize_caption("Straße") == normalize_caption("STRASSE")  # case folding, not lower()


def test_components_are_transitive():
    assert components(5, [(0, 2), (2, 4)]) == [0, 1, 0, 3, 0]


def test_similar_pairs_match_brute_force():
    rng = random.Random(0)
    words = ["a", "cat", "dog", "on", "the", "mat", "red", "blue", "big", "small"]
    texts = [" ".join(rng.sample(words, rng.randint(1, 6))) for _ in range(120)]
    for threshold in (0.5, 0.8, 1.0):
        brute = set()
        for i, j in itertools.combinations(range(len(texts)), 2):
            a, b = set(texts[i].split()), set(texts[j].split())
            if len(a & b) / len(a | b) >= threshold:
                brute.add((i, j))
        assert set(similar_pairs(texts, threshold)) == brute


# ------------------------------------------------------------------------------------------- the command


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)

    def pair(name: str, image: Image.Image | bytes | None, caption: str | bytes | None) -> None:
        if isinstance(image, Image.Image):
            image.save(root / name)
        elif image is not None:
            (root / name).write_bytes(image)
        if caption is not None:
            target = (root / name).with_suffix(".txt")
            target.write_bytes(caption if isinstance(caption, bytes) else caption.encode("utf-8"))

    cat = picture(1)
    pair("cat.png", cat, "a cat on a mat")
    pair("cat_copy.png", cat, "A cat,  on a MAT!")
    pair("sub/cat_resaved.jpg", perturbed(cat, 7), "a cat on the mat")
    pair("dog.png", picture(2), "a dog in the park")
    pair("sub/tree.png", picture(3), "<script>alert(1)</script> a tree")
    pair("corrupt.png", b"\x89PNG\r\n\x1a\n not really", "a broken file")
    pair("no_caption.png", picture(4), None)
    pair("empty.png", picture(5), "  \n")
    pair("latin.png", picture(6), "un café noir".encode("latin-1"))
    pair("orphan", None, "a caption without its image")
    return root


def test_audit_data_reports_groups_scores_and_bad_files(folder, tmp_path, tiny, tiny_dir, capsys):
    captions = ["a cat on a mat", "A cat,  on a MAT!", "a cat on the mat", "a dog in the park"]
    captions.append("<script>alert(1)</script> a tree")
    scores = {c: d[0].score for c, d in zip(captions, score_prompts(tiny, captions, [0]))}
    threshold = float(np.median(list(scores.values())))
    out, page = tmp_path / "report.csv", tmp_path / "report.html"
    argv = ["audit-data", "--model", str(tiny_dir), "--data", str(folder), "--out", str(out), "--html", str(page)]
    assert cli.main([*argv, "--threshold", str(threshold)]) == 0

    with open(out, newline="", encoding="utf-8") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 10
    errors = {name: row["error"].split(":")[0] for name, row in rows.items() if row["error"]}
    assert errors == {
        "corrupt.png": "unreadable image",
        "no_caption.png": "missing caption",
        "empty.png": "empty caption",
        "latin.png": "non-UTF-8 caption",
        "orphan.txt": "caption without image",
    }
    cats = ["cat.png", "cat_copy.png", "sub/cat_resaved.jpg"]
    assert {rows[n]["image_group"] for n in cats} == {"1"} and rows["cat.png"]["image_group_size"] == "3"
    assert rows["dog.png"]["image_group"] == "" and rows["sub/tree.png"]["image_group"] == ""
    assert rows["cat.png"]["caption_copies"] == "2" and rows["sub/cat_resaved.jpg"]["caption_copies"] == "1"
    assert {rows[n]["caption_group_size"] for n in cats} == {"3"}  # "the mat": Jaccard 4/5 with "a mat"
    assert rows["dog.png"]["caption_group_size"] == "1"
    for name in ["dog.png", "sub/tree.png", *cats]:
        caption = rows[name]["caption"]
        assert float(rows[name]["score"]) == pytest.approx(scores[caption], rel=1e-4)
        assert rows[name]["flagged"] == str(scores[caption] > threshold)
    order = list(rows)
    assert order[-5:] == sorted(errors)  # problems last, in path order
    flagged_first = [rows[n]["flagged"] == "True" for n in order[:5]]
    assert flagged_first == sorted(flagged_first, reverse=True)

    printed = capsys.readouterr().out
    assert "10 files" in printed and "5 usable" in printed
    assert "1 empty caption" in printed and "1 non-UTF-8 caption" in printed and "1 unreadable image" in printed
    assert "near-duplicate image groups: 1, holding 3 images" in printed

    text = page.read_text(encoding="utf-8")
    assert "<script>" not in text and html.escape("<script>alert(1)</script>") in text


def test_audit_data_without_model_and_missing_folder(folder, tmp_path, capsys):
    out = tmp_path / "report.jsonl"
    assert cli.main(["audit-data", "--data", str(folder), "--out", str(out), "--no-score"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 10
    assert "base model" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a directory"):
        cli.main(["audit-data", "--data", str(tmp_path / "nowhere"), "--out", str(out), "--no-score"])


def test_csv_report_neutralizes_spreadsheet_formulas(tmp_path):
    """A caption (or file name) a spreadsheet would evaluate is written with a leading ``'``, as the tab's CSV does."""
    root = tmp_path / "data"
    root.mkdir()
    picture(1).save(root / "=cmd.png")
    (root / "=cmd.txt").write_text('=HYPERLINK("http://example.invalid","click")', encoding="utf-8")
    out = tmp_path / "report.csv"
    assert cli.main(["audit-data", "--data", str(root), "--out", str(out), "--no-score"]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["caption"] == '\'=HYPERLINK("http://example.invalid","click")' and row["file"] == "'=cmd.png"
