"""The WebUI start-up order of A1111 1.10.1 (``modules/initialize.py``, ``webui.py: webui`` / ``api_only``) as
far as extensions can observe it:

1. ``scripts.load_scripts()`` (clears callbacks; module-level ``on_*`` registrations of the extension's scripts);
2. the model is loaded (``on_model_loaded`` fires, then the empty-prompt cond is computed);
3. with the UI: ``on_before_ui``, ``ui.create_ui()`` (``on_ui_settings``, scripts' ``ui()`` for txt2img then
   img2img, ``on_ui_tabs``), then ``Api(app)`` when ``--api`` (``ui()`` twice more per script for the default
   arguments), then ``on_app_started(demo, app)``;
   with ``--nowebui``: ``Api(app)`` (which runs ``create_ui`` itself), ``on_before_ui``, ``on_app_started(None, app)``.

:class:`Host` bundles the result for tests. ``api`` (``--api``) is off by default, as on a plain ``launch.py``;
``nowebui`` implies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules import call_queue, processing, script_callbacks, scripts, sd_models, shared, txt2img, ui


class FakeApp:
    """Stands for the FastAPI app handed to ``on_app_started``: records ``add_api_route`` / decorators."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Any] = {}

    def add_api_route(self, path: str, endpoint: Any, methods: list[str] | None = None, **kwargs: Any) -> None:
        for method in methods or ["GET"]:
            self.routes[(method.upper(), path)] = endpoint

    def _decorator(self, method: str, path: str):
        def register(fn):
            self.routes[(method, path)] = fn
            return fn

        return register

    def get(self, path: str, **kwargs: Any):
        return self._decorator("GET", path)

    def post(self, path: str, **kwargs: Any):
        return self._decorator("POST", path)


@dataclass
class Host:
    sd_model: Any
    demo: Any
    app: FakeApp
    api: Any

    def txt2img_processing(
        self, script_title: str | None = None, script_args: dict[int, Any] | None = None, **fields: Any
    ):
        """A txt2img processing object as the UI submits it: script inputs at their defaults, the dropdown at
        ``script_title``, ``script_args`` overriding inputs by absolute index."""
        args = scripts.scripts_txt2img.default_script_args(script_title)
        for index, value in (script_args or {}).items():
            args[index] = value
        return txt2img.txt2img_create_processing(*args, **fields)

    def run_txt2img(self, p: processing.StableDiffusionProcessingTxt2Img) -> processing.Processed:
        return txt2img.run(p)


def start(
    model_dir: str | Path,
    *,
    extension_dirs: list[str] = (),
    script_classes: list[type] = (),
    api: bool = False,
    nowebui: bool = False,
    builtin_scripts: bool = True,
) -> Host:
    from modules.api.api import Api

    shared.cmd_opts.api = api or nowebui
    shared.cmd_opts.nowebui = nowebui
    scripts.load_scripts(
        extension_dirs=list(extension_dirs), script_classes=list(script_classes), builtin_scripts=builtin_scripts
    )
    sd_model = sd_models.load_model(model_dir)
    app = FakeApp()
    if nowebui:
        api_obj = Api(app, call_queue.queue_lock)
        script_callbacks.before_ui_callback()
        script_callbacks.app_started_callback(None, app)
        return Host(sd_model, None, app, api_obj)
    script_callbacks.before_ui_callback()
    demo = ui.create_ui()
    shared.demo = demo
    api_obj = Api(app, call_queue.queue_lock) if api else None
    script_callbacks.app_started_callback(demo, app)
    return Host(sd_model, demo, app, api_obj)
