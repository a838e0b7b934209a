"""Procedural training data of the miniature model: attribute images, a caption grammar, and memorized pairs.

Three kinds of training pairs mimic what made Stable Diffusion memorize (Webster 2023, Wen et al. 2024):

* **general**: one image per caption. An image is a shape (type, colour, size, position) over a tinted
  background, plus variation that no caption describes (rotation, jitter, colour noise, random textures,
  lighting). Captions come from a grammar with synonyms and varied word order and mention only some of the
  attributes, so a general prompt leaves much of its image undetermined.
* **verbatim memorized**: captions made of invented names that never occur in general captions, each tied to
  one detailed image (several shapes, textures, a patch of per-pixel detail), duplicated many times.
* **template memorized**: "official trading card of NAME" captions whose images share a fixed card layout
  (border, title band, footer) around a window whose content changes with every duplicate.

Everything is drawn from one ``numpy`` generator, so a seed fixes the data exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

IMAGE_SIZE = 16

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "cross"),
    "colour": ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white"),
    "size": ("small", "large"),
    "position": ("left", "right", "top", "bottom", "center"),
    "background": ("navy", "maroon", "olive", "gray"),
}
"""Every attribute the grammar can describe, with its classes in label order."""

MENTION_PROBABILITY: dict[str, float] = {
    "shape": 0.75,
    "colour": 0.7,
    "size": 0.35,
    "position": 0.4,
    "background": 0.3,
}

WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "circle": ("circle", "disc", "ball"),
        "square": ("square", "box", "block"),
        "triangle": ("triangle", "delta"),
        "cross": ("cross", "plus"),
    },
    "colour": {
        "red": ("red", "crimson", "scarlet"),
        "orange": ("orange", "amber", "tangerine"),
        "yellow": ("yellow", "golden", "lemon"),
        "green": ("green", "emerald", "lime"),
        "cyan": ("cyan", "turquoise", "aqua"),
        "blue": ("blue", "azure", "cobalt"),
        "purple": ("purple", "violet", "magenta"),
        "white": ("white", "ivory", "snowy"),
    },
    "size": {"small": ("small", "tiny", "little"), "large": ("large", "big", "huge")},
    "position": {
        "left": ("left",),
        "right": ("right",),
        "top": ("top", "upper"),
        "bottom": ("bottom", "lower"),
        "center": ("center", "centre", "middle", "centered"),
    },
    "background": {
        "navy": ("navy", "midnight"),
        "maroon": ("maroon", "burgundy"),
        "olive": ("olive", "mossy"),
        "gray": ("gray", "grey", "slate"),
    },
}
"""Synonyms: each word names exactly one class of one attribute (``parse_attributes`` relies on it)."""

POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "to the left", "on the left side", "in the left half"),
    "right": ("on the right", "at the right", "to the right", "on the right side", "in the right half"),
    "top": ("at the top", "near the top", "in the upper half", "along the top"),
    "bottom": ("at the bottom", "near the bottom", "in the lower half", "along the bottom"),
    "center": ("in the center", "in the middle", "at the centre", "centered"),
}
BACKGROUND_PHRASES = (
    "on a {} background",
    "against a {} backdrop",
    "over a {} field",
    "with a {} background",
    "surrounded by a {} background",
)
PREFIXES = ("", "", "", "a picture of ", "an image of ", "a drawing of ", "an illustration of ", "a photo of ")
GENERIC_NOUNS = ("shape", "figure", "form", "thing")

SHAPE_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, -0.8, -0.8),
    "orange": (0.9, 0.05, -0.9),
    "yellow": (0.9, 0.85, -0.8),
    "green": (-0.8, 0.75, -0.8),
    "cyan": (-0.8, 0.8, 0.85),
    "blue": (-0.75, -0.55, 0.95),
    "purple": (0.55, -0.8, 0.9),
    "white": (0.9, 0.9, 0.9),
}
BACKGROUND_TINTS: dict[str, tuple[float, float, float]] = {
    "navy": (-0.6, -0.5, -0.15),
    "maroon": (-0.2, -0.65, -0.55),
    "olive": (-0.3, -0.3, -0.7),
    "gray": (-0.4, -0.4, -0.4),
}
POSITION_CENTRES: dict[str, tuple[float, float]] = {
    "left": (4.5, 8.0),
    "right": (11.5, 8.0),
    "top": (8.0, 4.5),
    "bottom": (8.0, 11.5),
    "center": (8.0, 8.0),
}
SIZE_RADII: dict[str, tuple[float, float]] = {"small": (2.8, 3.5), "large": (4.6, 5.8)}

GENRES = ("portrait", "engraving", "tapestry", "fresco", "etching", "mosaic", "woodcut", "lithograph", "triptych")
TITLES = ("duchess", "baron", "abbess", "admiral", "margrave", "countess", "archduke", "prioress", "viscount", "regent")
MEMORIZED_FORMS = (
    "{genre} of {title} {a} {b} by {artist}",
    "the {a} {genre} of {title} {b}",
    "{title} {a} {b}, {genre} by {artist}",
    "{genre} of {a} {b} at {c} by {artist}",
)
TEMPLATE_FORM = "official trading card of {a} {b}"
_ONSETS = (
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "th",
    "v",
    "z",
)
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "y", "ia")
_CODAS = ("", "", "", "n", "r", "l", "s", "nd", "rk", "st", "x", "th")

TEMPLATE_WINDOW = (slice(4, 13), slice(1, 15))
"""Rows and columns of a trading card that change between duplicates; the rest is the fixed layout."""

# float64 pixel grid: the arithmetic (and so the data and the trained weights) is then identical under NumPy 1 and
# NumPy 2 promotion rules, which otherwise differ for float32 arrays times NumPy float64 scalars.
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64) + 0.5


def general_vocabulary() -> set[str]:
    """Every word a general caption can contain."""
    texts = [*PREFIXES, *GENERIC_NOUNS, *BACKGROUND_PHRASES, "a an in background"]
    texts += [p for phrases in POSITION_PHRASES.values() for p in phrases]
    texts += [w for classes in WORDS.values() for words in classes.values() for w in words]
    return {w for text in texts for w in words_of(text)}


def words_of(text: str) -> list[str]:
    """Lower-case alphabetic words of ``text``."""
    return re.findall(r"[a-z]+", text.lower())


_WORD_TO_CLASS: dict[str, tuple[str, str]] = {
    w: (attribute, cls) for attribute, classes in WORDS.items() for cls, words in classes.items() for w in words
}


def parse_attributes(prompt: str) -> dict[str, str]:
    """The attribute classes a prompt mentions, e.g. ``{"shape": "circle", "colour": "red"}``."""
    found: dict[str, str] = {}
    for word in words_of(prompt):
        if word in _WORD_TO_CLASS:
            attribute, cls = _WORD_TO_CLASS[word]
            found.setdefault(attribute, cls)
    return found


# ----------------------------------------------------------------------------------------------- captions


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _with_article(rng: np.random.Generator, phrase: str) -> str:
    article = "an" if phrase[0] in "aeiou" else "a"
    return f"{article} {phrase}" if rng.random() < 0.85 else phrase


def _noun_phrase(rng: np.random.Generator, mentioned: dict[str, str]) -> str:
    noun = _pick(rng, WORDS["shape"][mentioned["shape"]]) if "shape" in mentioned else _pick(rng, GENERIC_NOUNS)
    size = _pick(rng, WORDS["size"][mentioned["size"]]) if "size" in mentioned else None
    colour = _pick(rng, WORDS["colour"][mentioned["colour"]]) if "colour" in mentioned else None
    if colour is not None and rng.random() < 0.25:
        return _with_article(rng, " ".join(w for w in (size, noun) if w) + f" in {colour}")
    return _with_article(rng, " ".join(w for w in (size, colour, noun) if w))


def caption(rng: np.random.Generator, labels: dict[str, str]) -> str:
    """A partial caption of an image with attribute ``labels``: a random subset of them, in varied words."""
    mentioned = {a: c for a, c in labels.items() if rng.random() < MENTION_PROBABILITY[a]}
    if "shape" not in mentioned and "colour" not in mentioned:
        key = "shape" if rng.random() < 0.5 else "colour"
        mentioned[key] = labels[key]
    noun_phrase = _noun_phrase(rng, mentioned)
    position = _pick(rng, POSITION_PHRASES[mentioned["position"]]) if "position" in mentioned else None
    background_word = _pick(rng, WORDS["background"][mentioned["background"]]) if "background" in mentioned else None
    style = rng.random()
    if background_word is not None and style < 0.25:
        return " ".join(w for w in (f"{background_word} background with", noun_phrase, position) if w)
    if position is not None and style < 0.45:
        background = _pick(rng, BACKGROUND_PHRASES).format(background_word) if background_word else None
        return ", ".join([position, " ".join(w for w in (noun_phrase, background) if w)])
    modifiers = [position] if position else []
    if background_word is not None:
        modifiers.append(_pick(rng, BACKGROUND_PHRASES).format(background_word))
    rng.shuffle(modifiers)
    separator = ", " if rng.random() < 0.3 else " "
    return _pick(rng, PREFIXES) + separator.join([noun_phrase, *modifiers])


def invented_words(rng: np.random.Generator, n: int, forbidden: set[str]) -> list[str]:
    """``n`` distinct pronounceable invented words of 5-10 letters, none in ``forbidden``."""
    out: list[str] = []
    while len(out) < n:
        syllables = int(rng.integers(2, 4))
        word = "".join(_pick(rng, _ONSETS) + _pick(rng, _VOWELS) + _pick(rng, _CODAS) for _ in range(syllables))
        if 5 <= len(word) <= 10 and word not in forbidden and word not in out:
            out.append(word)
    return out


def memorized_captions(rng: np.random.Generator, n_verbatim: int, n_template: int) -> tuple[list[str], list[str]]:
    """Verbatim-memorized captions (invented names, shared artists) and template captions."""
    forbidden = general_vocabulary() | set(GENRES) | set(TITLES) | set(words_of(TEMPLATE_FORM))
    artists = [" ".join(pair) for pair in zip(*[iter(invented_words(rng, 16, forbidden))] * 2)]
    names = invented_words(rng, 3 * n_verbatim + 2 * n_template + 16, forbidden)[16:]
    verbatim = []
    for i in range(n_verbatim):
        a, b, c = names[3 * i : 3 * i + 3]
        form = MEMORIZED_FORMS[i % len(MEMORIZED_FORMS)]
        values = {"genre": _pick(rng, GENRES), "title": _pick(rng, TITLES), "artist": _pick(rng, artists)}
        verbatim.append(form.format(a=a, b=b, c=c, **values))
    rest = names[3 * n_verbatim :]
    template = [TEMPLATE_FORM.format(a=rest[2 * i], b=rest[2 * i + 1]) for i in range(n_template)]
    return verbatim, template


def distinctive_words(prompt: str) -> list[str]:
    """Words of ``prompt`` that no general caption contains, in order, without repeats."""
    vocabulary = general_vocabulary()
    return list(dict.fromkeys(w for w in words_of(prompt) if w not in vocabulary))


# ------------------------------------------------------------------------------------------------- images


def _coverage(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage (16x16 in [0, 1]) of a shape from its signed distance in pixels."""
    dx, dy = _XX - cx, _YY - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if kind == "circle":
        sdf = np.hypot(u, v) - radius
    elif kind == "square":
        side = 0.85 * radius
        sdf = np.maximum(np.abs(u) - side, np.abs(v) - side)
    elif kind == "triangle":
        top, base, half = -radius, 0.75 * radius, 0.95 * radius
        slope = np.hypot(half, base - top)
        left = ((base - top) * -(u + half) - half * (v - base)) / slope
        right = ((base - top) * (u - half) - half * (v - base)) / slope
        sdf = np.maximum(np.maximum(left, right), v - base)
    elif kind == "cross":
        arm = max(0.32 * radius, 0.9)
        sdf = np.minimum(
            np.maximum(np.abs(u) - radius, np.abs(v) - arm), np.maximum(np.abs(u) - arm, np.abs(v) - radius)
        )
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Bilinear upsampling of a ``cells x cells`` Gaussian grid to 16x16, scaled into [-1, 1]."""
    grid = rng.normal(size=(cells, cells))
    coords = np.linspace(0, cells - 1, IMAGE_SIZE)
    rows = np.stack([np.interp(coords, np.arange(cells), row) for row in grid])
    full = np.stack([np.interp(coords, np.arange(cells), col) for col in rows.T], axis=1)
    return (full / (np.abs(full).max() + 1e-6)).astype(np.float32)


def texture(rng: np.random.Generator) -> np.ndarray:
    """A random 16x16 pattern in about [-1, 1]: stripes, checks, smooth noise, a ramp or speckles."""
    kind = int(rng.integers(5))
    if kind == 0:
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(2.5, 7.0), rng.uniform(0, 2 * np.pi)
        return np.sin(2 * np.pi * (_XX * np.cos(angle) + _YY * np.sin(angle)) / period + phase).astype(np.float32)
    if kind == 1:
        cell = int(rng.integers(1, 5))
        ox, oy = rng.integers(0, cell + 1, size=2)
        return (((_XX + ox) // cell + (_YY + oy) // cell) % 2 * 2 - 1).astype(np.float32)
    if kind == 2:
        return _smooth_noise(rng, int(rng.integers(3, 7)))
    if kind == 3:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (_XX - 8) * np.cos(angle) + (_YY - 8) * np.sin(angle)
        return (ramp / 8).astype(np.float32)
    dots = rng.random((IMAGE_SIZE, IMAGE_SIZE)) < rng.uniform(0.08, 0.25)
    return (dots * rng.choice([-1.0, 1.0], size=dots.shape)).astype(np.float32)


def _texture_layer(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A coloured texture (3x16x16): a pattern along a random, mostly grey, colour direction."""
    direction = 0.6 + 0.4 * rng.normal(size=3)
    return (amplitude * direction[:, None, None] * texture(rng)[None]).astype(np.float32)


def _paint(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return canvas * (1 - alpha[None]) + colour[:, None, None] * alpha[None]


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Lighting offset, sensor noise, and clipping to [-1, 1]."""
    image = image + rng.uniform(-0.15, 0.15) + rng.normal(scale=0.03, size=image.shape)
    return np.clip(image, -1.0, 1.0).astype(np.float32)


def sample_labels(rng: np.random.Generator) -> dict[str, str]:
    """One class per attribute, uniformly."""
    return {attribute: _pick(rng, classes) for attribute, classes in ATTRIBUTES.items()}


def render_general(rng: np.random.Generator, labels: dict[str, str]) -> np.ndarray:
    """A general image (3x16x16 in [-1, 1]) showing ``labels`` plus undescribed variation."""
    tint = np.asarray(BACKGROUND_TINTS[labels["background"]]) + rng.uniform(-0.1, 0.1, size=3)
    image = np.broadcast_to(tint[:, None, None], (3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    for _ in range(int(rng.integers(1, 3))):
        image = image + _texture_layer(rng, rng.uniform(0.2, 0.55))
    cx, cy = np.asarray(POSITION_CENTRES[labels["position"]]) + rng.uniform(-1.5, 1.5, size=2)
    radius = rng.uniform(*SIZE_RADII[labels["size"]])
    alpha = _coverage(labels["shape"], cx, cy, radius, rng.uniform(-0.35, 0.35))
    colour = np.asarray(SHAPE_COLOURS[labels["colour"]]) * rng.uniform(0.85, 1.0) + rng.uniform(-0.08, 0.08, 3)
    return _finish(rng, _paint(image, colour, alpha))


def render_memorized(rng: np.random.Generator) -> np.ndarray:
    """A detailed one-off image: two textures over a random tint, 2-3 shapes, a patch of per-pixel detail."""
    image = np.broadcast_to(rng.uniform(-0.8, 0.0, size=3)[:, None, None], (3, IMAGE_SIZE, IMAGE_SIZE))
    image = image + _texture_layer(rng, rng.uniform(0.25, 0.45)) + _texture_layer(rng, rng.uniform(0.15, 0.35))
    palette = list(SHAPE_COLOURS.values())
    for _ in range(int(rng.integers(2, 4))):
        kind = _pick(rng, ATTRIBUTES["shape"])
        cx, cy = rng.uniform(3, 13, size=2)
        alpha = _coverage(kind, cx, cy, rng.uniform(2.4, 4.5), rng.uniform(-np.pi, np.pi))
        colour = np.asarray(palette[int(rng.integers(len(palette)))]) + rng.uniform(-0.15, 0.15, 3)
        image = _paint(image, colour, alpha)
    size = int(rng.integers(3, 6))
    y0, x0 = rng.integers(0, IMAGE_SIZE - size, size=2)
    patch = rng.uniform(-0.9, 0.9, size=(3, size, size))
    image[:, y0 : y0 + size, x0 : x0 + size] = 0.5 * image[:, y0 : y0 + size, x0 : x0 + size] + 0.5 * patch
    return _finish(rng, image)


@dataclass(frozen=True)
class CardLayout:
    """The fixed part of every trading card: its pixels and a mask (1 = layout, 0 = varying window)."""

    image: np.ndarray
    mask: np.ndarray


def card_layout(rng: np.random.Generator) -> CardLayout:
    """A trading-card frame: checkered gold border, title band with dark glyphs, red-blue footer blocks."""
    image = np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    gold, dark = np.array([0.85, 0.6, -0.5]), np.array([-0.8, -0.75, -0.6])
    border = np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    border[1:-1, 1:-1] = False
    image[:, border] = np.where(((_XX + _YY) // 1 % 2 == 0)[border], gold[:, None], dark[:, None])
    glyphs = rng.random((3, IMAGE_SIZE - 2)) < 0.35
    image[:, 1:4, 1:-1] = np.where(glyphs[None], dark[:, None, None], np.array([0.9, 0.85, 0.7])[:, None, None])
    blocks = (np.arange(IMAGE_SIZE - 2) // 2) % 2 == 0
    footer = np.where(blocks[None], np.array([0.85, -0.7, -0.6])[:, None], np.array([-0.7, -0.5, 0.9])[:, None])
    image[:, 13:15, 1:-1] = footer[:, None, :]
    mask = np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    mask[TEMPLATE_WINDOW] = 0.0
    return CardLayout(image=image, mask=mask)


def render_card(rng: np.random.Generator, layout: CardLayout) -> np.ndarray:
    """A trading card: the fixed layout around the window of a fresh general image."""
    inner = render_general(rng, sample_labels(rng))
    return np.where(layout.mask[None] > 0, layout.image, inner).astype(np.float32)


# ------------------------------------------------------------------------------------------------ dataset


@dataclass
class MiniatureData:
    """All training pairs (``image_index``/``caption_index`` rows, duplicates repeated) and the eval prompts."""

    images: np.ndarray
    captions: list[str]
    image_index: np.ndarray
    caption_index: np.ndarray
    general_labels: np.ndarray
    n_general: int
    verbatim: list[str]
    template: list[str]
    verbatim_images: np.ndarray
    layout: CardLayout
    general_train_sample: list[str]
    general_heldout: list[str]
    counts: dict[str, int] = field(default_factory=dict)


def build(
    seed: int,
    n_general: int = 24_000,
    n_verbatim: int = 36,
    n_template: int = 8,
    verbatim_copies: int = 200,
    template_copies: int = 80,
    n_eval_general: int = 200,
) -> MiniatureData:
    """Draw the whole data set from ``seed``."""
    rng = np.random.default_rng(seed)
    labels = [sample_labels(rng) for _ in range(n_general)]
    general_images = np.stack([render_general(rng, lab) for lab in labels])
    general_captions = [caption(rng, lab) for lab in labels]
    verbatim, template = memorized_captions(rng, n_verbatim, n_template)
    verbatim_images = np.stack([render_memorized(rng) for _ in verbatim])
    layout = card_layout(rng)
    card_images = np.stack([render_card(rng, layout) for _ in range(n_template * template_copies)])

    captions = list(dict.fromkeys([*general_captions, *verbatim, *template]))
    lookup = {c: i for i, c in enumerate(captions)}
    images = np.concatenate([general_images, verbatim_images, card_images])
    image_index = np.concatenate(
        [
            np.arange(n_general),
            np.repeat(n_general + np.arange(n_verbatim), verbatim_copies),
            n_general + n_verbatim + np.arange(n_template * template_copies),
        ]
    )
    caption_index = np.concatenate(
        [
            [lookup[c] for c in general_captions],
            np.repeat([lookup[c] for c in verbatim], verbatim_copies),
            np.repeat([lookup[c] for c in template], template_copies),
        ]
    ).astype(np.int64)
    general_labels = np.array([[ATTRIBUTES[a].index(lab[a]) for a in ATTRIBUTES] for lab in labels], dtype=np.int64)
    seen = set(general_captions)
    train_sample = [general_captions[i] for i in rng.permutation(n_general)]
    heldout: list[str] = []
    while len(heldout) < n_eval_general:
        text = caption(rng, sample_labels(rng))
        if text not in seen and text not in heldout:
            heldout.append(text)
    return MiniatureData(
        images=images,
        captions=captions,
        image_index=image_index,
        caption_index=caption_index,
        general_labels=general_labels,
        n_general=n_general,
        verbatim=verbatim,
        template=template,
        verbatim_images=verbatim_images,
        layout=layout,
        general_train_sample=list(dict.fromkeys(train_sample))[:n_eval_general],
        general_heldout=heldout,
        counts={
            "general_images": n_general,
            "unique_captions": len(captions),
            "verbatim_captions": n_verbatim,
            "verbatim_copies": verbatim_copies,
            "template_captions": n_template,
            "template_copies": template_copies,
            "training_pairs": len(image_index),
        },
    )
