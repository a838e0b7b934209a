"""A score histogram drawn as inline SVG: no plotting library, no network, and themed by ``style.css``.

Bars, axis and threshold line carry ``memguard-hist-*`` classes whose colours ``style.css`` sets for the light and
the dark theme. Hovering a bar shows its range and count (an SVG ``<title>``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .panel import esc, fmt

WIDTH, HEIGHT = 560, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 18, 34


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def bin_scores(
    scores: Sequence[float | None], bins: int, include: Sequence[float | None] = ()
) -> tuple[float, float, list[int]]:
    """``(low, high, counts)``: ``bins`` equal-width bins over the finite scores, the range stretched to cover the
    values of ``include`` too (a threshold); a single value gets a unit span."""
    values = _finite(scores)
    extent = values + _finite(include)
    if not extent:
        return 0.0, 1.0, [0] * bins
    low, high = min(extent), max(extent)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    counts = [0] * bins
    width = (high - low) / bins
    for v in values:
        counts[min(bins - 1, int((v - low) / width))] += 1
    return low, high, counts


def _x(value: float, low: float, high: float) -> float:
    return LEFT + (value - low) / (high - low) * (WIDTH - LEFT - RIGHT)


def _bars(low: float, high: float, counts: list[int], threshold: float | None) -> list[str]:
    peak = max(counts) or 1
    plot_h = HEIGHT - TOP - BOTTOM
    step = (high - low) / len(counts)
    out = []
    for i, count in enumerate(counts):
        lo, hi = low + i * step, low + (i + 1) * step
        x0, x1 = _x(lo, low, high), _x(hi, low, high)
        h = plot_h * count / peak
        over = threshold is not None and lo >= threshold
        cls = "memguard-hist-bar memguard-hist-over" if over else "memguard-hist-bar"
        tip = f"{fmt(lo)} to {fmt(hi)}: {count} prompt{'s' if count != 1 else ''}"
        out.append(
            f'<rect class="{cls}" x="{x0 + 0.5:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
            f'height="{h:.1f}"><title>{esc(tip)}</title></rect>'
        )
    return out


def _axes(low: float, high: float, peak: int) -> list[str]:
    base = HEIGHT - BOTTOM
    out = [
        f'<line class="memguard-hist-axis" x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}"/>',
        f'<line class="memguard-hist-axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}"/>',
        f'<text class="memguard-hist-label" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{peak}</text>',
        f'<text class="memguard-hist-label" x="{LEFT - 4}" y="{base}" text-anchor="end">0</text>',
    ]
    for k in range(5):
        value = low + (high - low) * k / 4
        x = _x(value, low, high)
        out.append(
            f'<text class="memguard-hist-label" x="{x:.1f}" y="{base + 14}" text-anchor="middle">{fmt(value, 3)}</text>'
        )
    out.append(
        f'<text class="memguard-hist-label" x="{(LEFT + WIDTH - RIGHT) / 2:.1f}" y="{HEIGHT - 4}" '
        'text-anchor="middle">first-step score</text>'
    )
    return out


def _threshold_line(threshold: float | None, low: float, high: float) -> list[str]:
    if threshold is None or not math.isfinite(threshold) or not low <= threshold <= high:
        return []
    x = _x(threshold, low, high)
    return [
        f'<line class="memguard-hist-threshold" x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}"/>',
        (
            f'<text class="memguard-hist-label memguard-hist-threshold-label" x="{x + 3:.1f}" y="{TOP - 6}">'
            f"threshold {fmt(threshold)}</text>"
        ),
    ]


def histogram_svg(
    scores: Sequence[float | None], threshold: float | None = None, bins: int = 24, title: str = ""
) -> str:
    """An SVG histogram of ``scores`` with the threshold marked (the range is widened to include it)."""
    finite = _finite(scores)
    low, high, counts = bin_scores(finite, bins, include=[threshold] if finite else [])
    label = title or f"Histogram of {len(finite)} scores"
    parts = [
        (
            f'<svg class="memguard-hist" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{esc(label)}" '
            'xmlns="http://www.w3.org/2000/svg">'
        ),
        f"<title>{esc(label)}</title>",
        *_bars(low, high, counts, threshold),
        *_axes(low, high, max(counts) if counts else 0),
        *_threshold_line(threshold, low, high),
        "</svg>",
    ]
    return "".join(parts)
