"""Mirrors ``modules/txt2img.py`` of A1111 1.10.1 (``txt2img_create_processing`` and ``txt2img``) without gradio.

``txt2img_create_processing(*args, **fields)`` builds the processing object the UI builds (``outpath_*`` from the
options, ``p.scripts = scripts_txt2img``, ``p.script_args = args`` where ``args`` are the script inputs: ``args[0]``
is the dropdown index). ``txt2img(p)`` is the rest of the host's ``txt2img``: inside ``closing(p)`` run the
dropdown script (``scripts_txt2img.run(p, *p.script_args)``) or, when it returns None, ``process_images(p)``; the
``call_queue.queue_lock`` and ``state.begin()`` / ``state.end()`` around it stand for
``call_queue.wrap_gradio_gpu_call``. Returns the same 4-tuple as the host: images, ``processed.js()``, info html,
comments html.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

from modules import call_queue, processing, scripts, shared
from modules.shared import opts
from modules.ui_common import plaintext_to_html


def txt2img_create_processing(*args: Any, **fields: Any) -> processing.StableDiffusionProcessingTxt2Img:
    # in the UI the built-in Sampler script's setup() sets p.scheduler from its dropdown, "Automatic" by default
    fields.setdefault("scheduler", "Automatic")
    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=shared.sd_model,
        outpath_samples=opts.outdir_samples or opts.outdir_txt2img_samples,
        outpath_grids=opts.outdir_grids or opts.outdir_txt2img_grids,
        **fields,
    )
    p.scripts = scripts.scripts_txt2img
    p.script_args = args
    p.user = None
    return p


def txt2img(p: processing.StableDiffusionProcessingTxt2Img) -> tuple[list, str, str, str]:
    with call_queue.queue_lock:
        shared.state.begin(job="txt2img")
        try:
            with closing(p):
                processed = scripts.scripts_txt2img.run(p, *p.script_args)
                if processed is None:
                    processed = processing.process_images(p)
        finally:
            shared.state.end()
    shared.total_tqdm.clear()
    generation_info_js = processed.js()
    if opts.do_not_show_images:
        processed.images = []
    return (
        processed.images,
        generation_info_js,
        plaintext_to_html(processed.info),
        plaintext_to_html(processed.comments, classname="comments"),
    )


def run(p: processing.StableDiffusionProcessingTxt2Img) -> processing.Processed:
    """Test helper (not in the host): :func:`txt2img` but returning the ``Processed`` object itself."""
    with call_queue.queue_lock:
        shared.state.begin(job="txt2img")
        try:
            with closing(p):
                processed = scripts.scripts_txt2img.run(p, *p.script_args)
                if processed is None:
                    processed = processing.process_images(p)
        finally:
            shared.state.end()
    shared.total_tqdm.clear()
    return processed
