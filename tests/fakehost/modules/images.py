"""Mirrors ``modules/images.py`` of A1111 1.10.1: ``image_grid`` and ``save_image``.

``image_grid`` lays images out as the host does (``opts.n_rows``, ``on_image_grid`` callbacks). ``save_image``
builds ``ImageSaveParams(image, p, filename, pnginfo)``, runs ``on_before_image_saved``, writes the PNG with the
infotext under ``pnginfo['parameters']`` into the double's temporary data directory, and runs ``on_image_saved``.
Simplification: filenames are ``<counter>-<seed><suffix>.png`` (no filename patterns, no sub-directories).
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any

from modules import script_callbacks
from modules.shared import opts
from PIL import Image, ImageColor, PngImagePlugin

_counter = itertools.count()


def image_grid(imgs: list, batch_size: int = 1, rows: int | None = None) -> Image.Image:
    if rows is None:
        if opts.n_rows > 0:
            rows = opts.n_rows
        elif opts.n_rows == 0:
            rows = batch_size
        elif opts.grid_prevent_empty_spots:
            rows = math.floor(math.sqrt(len(imgs)))
            while len(imgs) % rows != 0:
                rows -= 1
        else:
            rows = round(math.sqrt(len(imgs)))
    rows = min(rows, len(imgs))
    cols = math.ceil(len(imgs) / rows)
    params = script_callbacks.ImageGridLoopParams(imgs, cols, rows)
    script_callbacks.image_grid_callback(params)
    w, h = map(max, zip(*(img.size for img in imgs)))
    grid = Image.new(
        "RGB", size=(params.cols * w, params.rows * h), color=ImageColor.getcolor(opts.grid_background_color, "RGB")
    )
    for i, img in enumerate(params.imgs):
        iw, ih = img.size
        grid.paste(img, box=(i % params.cols * w + (w - iw) // 2, i // params.cols * h + (h - ih) // 2))
    return grid


def save_image(
    image,
    path,
    basename,
    seed=None,
    prompt=None,
    extension="png",
    info=None,
    short_filename=False,
    no_prompt=False,
    grid=False,
    pnginfo_section_name="parameters",
    p=None,
    existing_info=None,
    forced_filename=None,
    suffix="",
    save_to_dirs=None,
) -> tuple[str, Any]:
    os.makedirs(path, exist_ok=True)
    name = forced_filename or f"{next(_counter):05}-{'grid' if grid else seed}{suffix}"
    fullfn = os.path.join(path, f"{name}.{extension}")
    pnginfo = existing_info or {}
    if info is not None:
        pnginfo[pnginfo_section_name] = info
    params = script_callbacks.ImageSaveParams(image, p, fullfn, pnginfo)
    script_callbacks.before_image_saved_callback(params)
    image, fullfn = params.image, params.filename
    data = None
    if opts.enable_pnginfo:
        data = PngImagePlugin.PngInfo()
        for k, v in params.pnginfo.items():
            data.add_text(k, str(v))
    image.save(fullfn, format="PNG", pnginfo=data)
    image.already_saved_as = fullfn
    script_callbacks.image_saved_callback(params)
    return fullfn, None
