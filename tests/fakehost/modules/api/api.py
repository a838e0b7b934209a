"""Mirrors ``modules/api/api.py`` of A1111 1.10.1 for ``/sdapi/v1/txt2img``: ``script_name_to_index``,
``Api.get_selectable_script``, ``get_script``, ``init_default_script_args``, ``init_script_args`` and
``text2imgapi``, plus ``get_scripts_list`` / ``get_script_info``.

Kept: unknown ``script_name`` or ``alwayson_scripts`` name -> 422; a selectable script under ``alwayson_scripts`` ->
422; defaults start from each control's ``.value`` (``ui()`` is called twice more per script here, as in the host);
``request.script_args`` are slice-assigned into ``[args_from:args_to]`` (a list of a different length shifts the
later arguments, as in the host) and ``script_args[0] = index + 1``; ``alwayson_scripts[name]["args"]`` are copied
positionally up to the script's argument count; ``p.is_api = True``; the selected script's ``run`` or
``process_images``; the response's ``info`` is ``processed.js()`` (no comments) and ``images`` are base64 PNGs.
Not mirrored: HTTP, authentication, the task queue, ``infotext`` in requests (``apply_infotext``).
"""

from __future__ import annotations

import base64
import io
from contextlib import closing
from typing import Any

from modules import call_queue, scripts, sd_samplers, shared
from modules.api import models
from modules.processing import StableDiffusionProcessingTxt2Img, process_images


class HTTPException(Exception):
    """Stands for ``fastapi.HTTPException``."""

    def __init__(self, status_code: int, detail: str = ""):
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


def script_name_to_index(name: str, scripts_list: list) -> int:
    try:
        return [script.title().lower() for script in scripts_list].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


def validate_sampler_name(name: str) -> str:
    if sd_samplers.all_samplers_map.get(name, None) is None:
        raise HTTPException(status_code=400, detail="Sampler not found")
    return name


def encode_pil_to_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Api:
    def __init__(self, app: Any = None, queue_lock: Any = None):
        self.app = app
        self.queue_lock = queue_lock if queue_lock is not None else call_queue.queue_lock
        self.default_script_arg_txt2img: list = []
        self.default_script_arg_img2img: list = []
        txt2img_runner, img2img_runner = scripts.scripts_txt2img, scripts.scripts_img2img
        if not txt2img_runner.scripts or not img2img_runner.scripts:
            from modules import ui

            ui.create_ui()
        if not txt2img_runner.scripts:
            txt2img_runner.initialize_scripts(False)
        if not self.default_script_arg_txt2img:
            self.default_script_arg_txt2img = self.init_default_script_args(txt2img_runner)
        if not img2img_runner.scripts:
            img2img_runner.initialize_scripts(True)
        if not self.default_script_arg_img2img:
            self.default_script_arg_img2img = self.init_default_script_args(img2img_runner)

    def get_selectable_script(self, script_name, script_runner):
        if script_name is None or script_name == "":
            return None, None
        idx = script_name_to_index(script_name, script_runner.selectable_scripts)
        return script_runner.selectable_scripts[idx], idx

    def get_scripts_list(self) -> dict:
        return {
            "txt2img": [s.name for s in scripts.scripts_txt2img.scripts if s.name is not None],
            "img2img": [s.name for s in scripts.scripts_img2img.scripts if s.name is not None],
        }

    def get_script_info(self) -> list:
        return [
            s.api_info
            for runner in (scripts.scripts_txt2img, scripts.scripts_img2img)
            for s in runner.scripts
            if s.api_info is not None
        ]

    def get_script(self, script_name, script_runner):
        if script_name is None or script_name == "":
            return None, None
        return script_runner.scripts[script_name_to_index(script_name, script_runner.scripts)]

    def init_default_script_args(self, script_runner) -> list:
        last_arg_index = 1
        for script in script_runner.scripts:
            last_arg_index = max(last_arg_index, script.args_to)
        script_args: list = [None] * last_arg_index
        script_args[0] = 0
        for script in script_runner.scripts:
            if script.ui(script.is_img2img):
                script_args[script.args_from : script.args_to] = [elem.value for elem in script.ui(script.is_img2img)]
        return script_args

    def init_script_args(
        self, request, default_script_args, selectable_scripts, selectable_idx, script_runner, *, input_script_args=None
    ) -> list:
        script_args = default_script_args.copy()
        if input_script_args is not None:
            for index, value in input_script_args.items():
                script_args[index] = value
        if selectable_scripts:
            script_args[selectable_scripts.args_from : selectable_scripts.args_to] = request.script_args
            script_args[0] = selectable_idx + 1
        if request.alwayson_scripts:
            for name in request.alwayson_scripts:
                script = self.get_script(name, script_runner)
                if script is None:
                    raise HTTPException(status_code=422, detail=f"always on script {name} not found")
                if script.alwayson is False:
                    raise HTTPException(
                        status_code=422, detail="Cannot have a selectable script in the always on scripts params"
                    )
                if "args" in request.alwayson_scripts[name]:
                    given = request.alwayson_scripts[name]["args"]
                    for idx in range(min(script.args_to - script.args_from, len(given))):
                        script_args[script.args_from + idx] = given[idx]
        return script_args

    def text2imgapi(self, txt2imgreq: models.StableDiffusionTxt2ImgProcessingAPI | dict) -> models.TextToImageResponse:
        """``POST /sdapi/v1/txt2img`` without HTTP: returns the response model (raises HTTPException on 4xx)."""
        if isinstance(txt2imgreq, dict):
            txt2imgreq = models.StableDiffusionTxt2ImgProcessingAPI.from_dict(txt2imgreq)
        if txt2imgreq.infotext:
            raise NotImplementedError("'infotext' in API requests is not mirrored by the fake host")
        script_runner = scripts.scripts_txt2img
        selectable_script, selectable_idx = self.get_selectable_script(txt2imgreq.script_name, script_runner)
        sampler, scheduler = sd_samplers.get_sampler_and_scheduler(
            txt2imgreq.sampler_name or txt2imgreq.sampler_index, txt2imgreq.scheduler
        )
        populate = txt2imgreq.copy(
            update={
                "sampler_name": validate_sampler_name(sampler),
                "do_not_save_samples": not txt2imgreq.save_images,
                "do_not_save_grid": not txt2imgreq.save_images,
            }
        )
        if populate.sampler_name:
            populate.sampler_index = None
        if not populate.scheduler and scheduler != "Automatic":
            populate.scheduler = scheduler

        args = populate.dict()
        for key in ("script_name", "script_args", "alwayson_scripts", "infotext"):
            args.pop(key, None)
        script_args = self.init_script_args(
            txt2imgreq, self.default_script_arg_txt2img, selectable_script, selectable_idx, script_runner
        )
        send_images = args.pop("send_images", True)
        args.pop("save_images", None)

        with self.queue_lock, closing(StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **args)) as p:
            p.is_api = True
            p.scripts = script_runner
            p.outpath_grids = shared.opts.outdir_txt2img_grids
            p.outpath_samples = shared.opts.outdir_txt2img_samples
            try:
                shared.state.begin(job="scripts_txt2img")
                if selectable_script is not None:
                    p.script_args = script_args
                    processed = scripts.scripts_txt2img.run(p, *p.script_args)
                else:
                    p.script_args = tuple(script_args)
                    processed = process_images(p)
            finally:
                shared.state.end()
                shared.total_tqdm.clear()

        images = list(map(encode_pil_to_base64, processed.images)) if send_images else []
        return models.TextToImageResponse(images=images, parameters=txt2imgreq.dict(), info=processed.js())
