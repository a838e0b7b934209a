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


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _with_article(rng: np.random.Generator, phrase: str) -> str:
    article = "an" if phrase[0] in "aeiou" else "a"
    return f"{article} {phrase}" if rng.random() < 0.85 else phrase


def _noun_phrase(rng: np.random.Generator, mentioned: dict[str, str]) -> str:
    noun = pick(rng, WORDS["shape"][mentioned["shape"]]) if "shape" in mentioned else pick(rng, GENERIC_NOUNS)
    size = pick(rng, WORDS["size"][mentioned["size"]]) if "size" in mentioned else None
    colour = pick(rng, WORDS["colour"][mentioned["colour"]]) if "colour" in mentioned else None
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
    position = pick(rng, POSITION_PHRASES[mentioned["position"]]) if "position" in mentioned else None
    background_word = pick(rng, WORDS["background"][mentioned["background"]]) if "background" in mentioned else None
    style = rng.random()
    if background_word is not None and style < 0.25:
        return " ".join(w for w in (f"{background_word} background with", noun_phrase, position) if w)
    if position is not None and style < 0.45:
        background = pick(rng, BACKGROUND_PHRASES).format(background_word) if background_word else None
        return ", ".join([position, " ".join(w for w in (noun_phrase, background) if w)])
    modifiers = [position] if position else []
    if background_word is not None:
        modifiers.append(pick(rng, BACKGROUND_PHRASES).format(background_word))
    rng.shuffle(modifiers)
    separator = ", " if rng.random() < 0.3 else " "
    return pick(rng, PREFIXES) + separator.join([noun_phrase, *modifiers])


def invented_words(rng: np.random.Generator, n: int, forbidden: set[str]) -> list[str]:
    """``n`` distinct pronounceable invented words of 5-10 letters, none in ``forbidden``."""
    out: list[str] = []
    while len(out) < n:
        syllables = int(rng.integers(2, 4))
        word = "".join(pick(rng, _ONSETS) + pick(rng, _VOWELS) + pick(rng, _CODAS) for _ in range(syllables))
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
        values = {"genre": pick(rng, GENRES), "title": pick(rng, TITLES), "artist": pick(rng, artists)}
        verbatim.append(form.format(a=a, b=b, c=c, **values))
    rest = names[3 * n_verbatim :]
    template = [TEMPLATE_FORM.format(a=rest[2 * i], b=rest[2 * i + 1]) for i in range(n_template)]
    return verbatim, template


def distinctive_words(prompt: str) -> list[str]:
    """Words of ``prompt`` that no general caption contains, in order, without repeats."""
    vocabulary = general_vocabulary()
    return list(dict.fromkeys(w for w in words_of(prompt) if w not in vocabulary))


def sample_labels(rng: np.random.Generator) -> dict[str, str]:
    """One class per attribute, uniformly."""
    return {attribute: pick(rng, classes) for attribute, classes in ATTRIBUTES.items()}
