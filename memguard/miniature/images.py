"""The miniature's pictures: shapes over tinted, textured backgrounds (general), detailed many-shape images
(verbatim memorized), and trading cards with a fixed layout around a changing window (template memorized)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import (
    ATTRIBUTES,
    BACKGROUND_TINTS,
    IMAGE_SIZE,
    POSITION_CENTRES,
    SHAPE_COLOURS,
    SIZE_RADII,
    TEMPLATE_WINDOW,
    pick,
    sample_labels,
)

# float64 pixel grid: the arithmetic (and so the data and the trained weights) is then identical under NumPy 1 and
# NumPy 2 promotion rules, which otherwise differ for float32 arrays times NumPy float64 scalars.
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64) + 0.5


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
        kind = pick(rng, ATTRIBUTES["shape"])
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
