"""Mirrors ``modules/script_callbacks.py`` of A1111 1.10.1.

Kept from the host:

* the parameter objects (``CFGDenoiserParams``, ``CFGDenoisedParams``, ``AfterCFGCallbackParams``,
  ``ImageSaveParams``, ``ExtraNoiseParams``, ``ImageGridLoopParams``, ``UiTrainTabParams``,
  ``BeforeTokenCounterParams``) with the same constructor signatures and attribute names;
* ``on_<event>(callback, *, name=None)`` registration through ``add_callback``, which records the registering file
  (first stack frame outside this file) and names the entry ``"<extension or base>/<file>/<category>[/<name>]"``
  with ``-1``, ``-2`` ... suffixes on collisions;
* ``ordered_callbacks``: sorted lists cached per category and rebuilt only when the category's length changes;
  user ordering from ``opts.prioritized_callbacks_<category>``;
* every dispatcher calls each callback inside ``try/except Exception`` and reports the exception through
  ``errors.report`` (see ``errors.reported``) so generation continues; ``script_unloaded`` and ``before_ui`` run in
  reverse order;
* ``remove_current_script_callbacks``, ``remove_callbacks_for_function``, ``clear_callbacks``.

Not mirrored: ``metadata.ini`` ``Before=``/``After=`` ordering (no extension metadata in the double), the startup
timer. Added for tests: :func:`count_callbacks`.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from typing import Any

from modules import errors, extensions, shared


def report_exception(c: ScriptCallback, job: str) -> None:
    """Mirrors ``report_exception``: log the exception being handled and carry on."""
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


class ImageSaveParams:
    """Passed to ``on_before_image_saved`` / ``on_image_saved``; mutable before saving."""

    def __init__(self, image: Any, p: Any, filename: str, pnginfo: dict):
        self.image = image
        self.p = p
        self.filename = filename
        self.pnginfo = pnginfo


class ExtraNoiseParams:
    def __init__(self, noise: Any, x: Any, xi: Any):
        self.noise = noise
        self.x = x
        self.xi = xi


class CFGDenoiserParams:
    """Passed to ``on_cfg_denoiser`` before the UNet call; ``x``, ``image_cond``, ``sigma``, ``text_cond`` and
    ``text_uncond`` are read back by ``CFGDenoiser.forward`` afterwards."""

    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    """Passed to ``on_cfg_denoised`` after the UNet call(s); not read back (edit ``x`` in place)."""

    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    """Passed to ``on_cfg_after_cfg`` with the guided result; ``x`` is read back."""

    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


class UiTrainTabParams:
    def __init__(self, txt2img_preview_params: Any):
        self.txt2img_preview_params = txt2img_preview_params


class ImageGridLoopParams:
    def __init__(self, imgs: list, cols: int, rows: int):
        self.imgs = imgs
        self.cols = cols
        self.rows = rows


@dataclasses.dataclass
class BeforeTokenCounterParams:
    prompt: str
    steps: int
    styles: list
    is_positive: bool = True


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


def _caller_file() -> str:
    here = os.path.normcase(os.path.abspath(__file__))
    for frame in inspect.stack():
        if os.path.normcase(os.path.abspath(frame.filename)) != here:
            return frame.filename
    return "unknown file"


def add_callback(
    callbacks: list, fun: Callable, *, name: str | None = None, category: str = "unknown", filename: str | None = None
) -> None:
    """Mirrors ``add_callback``: append a uniquely named ``ScriptCallback`` for ``fun`` to ``callbacks``."""
    if filename is None:
        filename = _caller_file()
    ext = extensions.find_extension(filename)
    prefix = ext.canonical_name if ext else "base"
    base_name = f"{prefix}/{os.path.basename(filename)}/{category}" + (f"/{name}" if name is not None else "")
    unique = base_name
    taken = {x.name for x in callbacks}
    for index in range(1000):
        if unique not in taken:
            break
        unique = f"{base_name}-{index + 1}"
    callbacks.append(ScriptCallback(filename, fun, unique))


def sort_callbacks(category: str, unordered_callbacks: list, *, enable_user_sort: bool = True) -> list:
    """Mirrors ``sort_callbacks`` without metadata.ini instructions: registration order, then user priorities."""
    callbacks = list(unordered_callbacks)
    if enable_user_sort:
        for wanted in reversed(getattr(shared.opts, "prioritized_callbacks_" + category, [])):
            index = next((i for i, c in enumerate(callbacks) if c.name == wanted), None)
            if index is not None:
                callbacks.insert(0, callbacks.pop(index))
    return callbacks


def ordered_callbacks(category: str, unordered_callbacks: list | None = None, *, enable_user_sort: bool = True) -> list:
    """Mirrors ``ordered_callbacks``: cached sorted list, rebuilt only when the category's length changed."""
    if unordered_callbacks is None:
        unordered_callbacks = callback_map.get("callbacks_" + category, [])
    if not enable_user_sort:
        return sort_callbacks(category, unordered_callbacks, enable_user_sort=False)
    cached = ordered_callbacks_map.get(category)
    if cached is not None and len(cached) == len(unordered_callbacks):
        return cached
    cached = sort_callbacks(category, unordered_callbacks)
    ordered_callbacks_map[category] = cached
    return cached


def enumerate_callbacks():
    for category, callbacks in callback_map.items():
        yield (category[len("callbacks_") :] if category.startswith("callbacks_") else category), callbacks


callback_map: dict[str, list[ScriptCallback]] = {
    f"callbacks_{name}": []
    for name in (
        "app_started",
        "model_loaded",
        "ui_tabs",
        "ui_train_tabs",
        "ui_settings",
        "before_image_saved",
        "image_saved",
        "extra_noise",
        "cfg_denoiser",
        "cfg_denoised",
        "cfg_after_cfg",
        "before_component",
        "after_component",
        "image_grid",
        "infotext_pasted",
        "script_unloaded",
        "before_ui",
        "on_reload",
        "list_optimizers",
        "list_unets",
        "before_token_counter",
    )
}
ordered_callbacks_map: dict[str, list[ScriptCallback]] = {}


def clear_callbacks() -> None:
    """Mirrors ``clear_callbacks`` (called by ``scripts.load_scripts`` on every (re)load)."""
    for callbacks in callback_map.values():
        callbacks.clear()
    ordered_callbacks_map.clear()


def count_callbacks(category: str | None = None) -> dict[str, int] | int:
    """Test helper (not in the host): registered callbacks of one category, or a count per category."""
    if category is not None:
        return len(callback_map["callbacks_" + category])
    return {name: len(cbs) for name, cbs in enumerate_callbacks()}


def _dispatch(category: str, job: str, *args: Any, reverse: bool = False, **kwargs: Any) -> None:
    # like the host, iterate the cached list itself: a callback removing callbacks mid-dispatch affects this loop
    callbacks = ordered_callbacks(category)
    for c in reversed(callbacks) if reverse else callbacks:
        try:
            c.callback(*args, **kwargs)
        except Exception:
            report_exception(c, job)


def app_started_callback(demo: Any, app: Any) -> None:
    _dispatch("app_started", "app_started_callback", demo, app)


def app_reload_callback() -> None:
    _dispatch("on_reload", "callbacks_on_reload")


def model_loaded_callback(sd_model: Any) -> None:
    _dispatch("model_loaded", "model_loaded_callback", sd_model)


def ui_tabs_callback() -> list:
    """Mirrors ``ui_tabs_callback``: concatenates what callbacks return (None counts as nothing)."""
    res: list = []
    for c in ordered_callbacks("ui_tabs"):
        try:
            res += c.callback() or []
        except Exception:
            report_exception(c, "ui_tabs_callback")
    return res


def ui_train_tabs_callback(params: UiTrainTabParams) -> None:
    _dispatch("ui_train_tabs", "callbacks_ui_train_tabs", params)


def ui_settings_callback() -> None:
    _dispatch("ui_settings", "ui_settings_callback")


def before_image_saved_callback(params: ImageSaveParams) -> None:
    _dispatch("before_image_saved", "before_image_saved_callback", params)


def image_saved_callback(params: ImageSaveParams) -> None:
    _dispatch("image_saved", "image_saved_callback", params)


def extra_noise_callback(params: ExtraNoiseParams) -> None:
    _dispatch("extra_noise", "callbacks_extra_noise", params)


def cfg_denoiser_callback(params: CFGDenoiserParams) -> None:
    _dispatch("cfg_denoiser", "cfg_denoiser_callback", params)


def cfg_denoised_callback(params: CFGDenoisedParams) -> None:
    _dispatch("cfg_denoised", "cfg_denoised_callback", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams) -> None:
    _dispatch("cfg_after_cfg", "cfg_after_cfg_callback", params)


def before_component_callback(component: Any, **kwargs: Any) -> None:
    _dispatch("before_component", "before_component_callback", component, **kwargs)


def after_component_callback(component: Any, **kwargs: Any) -> None:
    _dispatch("after_component", "after_component_callback", component, **kwargs)


def image_grid_callback(params: ImageGridLoopParams) -> None:
    _dispatch("image_grid", "image_grid", params)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]) -> None:
    _dispatch("infotext_pasted", "infotext_pasted", infotext, params)


def script_unloaded_callback() -> None:
    _dispatch("script_unloaded", "script_unloaded", reverse=True)


def before_ui_callback() -> None:
    _dispatch("before_ui", "before_ui", reverse=True)


def list_optimizers_callback() -> list:
    res: list = []
    _dispatch("list_optimizers", "list_optimizers", res)
    return res


def list_unets_callback() -> list:
    res: list = []
    _dispatch("list_unets", "list_unets", res)
    return res


def before_token_counter_callback(params: BeforeTokenCounterParams) -> None:
    _dispatch("before_token_counter", "before_token_counter", params)


def remove_current_script_callbacks() -> None:
    """Mirrors ``remove_current_script_callbacks``: drop every callback registered from the caller's file."""
    filename = _caller_file()
    if filename == "unknown file":
        return
    for lists in (callback_map.values(), ordered_callbacks_map.values()):
        for callbacks in lists:
            for cb in [cb for cb in callbacks if cb.script == filename]:
                callbacks.remove(cb)


def remove_callbacks_for_function(callback_func: Callable) -> None:
    """Mirrors ``remove_callbacks_for_function``: drop entries whose callback ``==`` ``callback_func``."""
    for lists in (callback_map.values(), ordered_callbacks_map.values()):
        for callbacks in lists:
            for cb in [cb for cb in callbacks if cb.callback == callback_func]:
                callbacks.remove(cb)


def _register(category: str, map_key: str | None = None):
    key = map_key or f"callbacks_{category}"

    def on(callback: Callable, *, name: str | None = None) -> None:
        add_callback(callback_map[key], callback, name=name, category=category)

    on.__name__ = f"on_{category}"
    on.__doc__ = f"Register ``callback`` for the ``{category}`` event (mirrors ``script_callbacks.on_{category}``)."
    return on


on_app_started = _register("app_started")
on_before_reload = _register("on_reload")
on_model_loaded = _register("model_loaded")
on_ui_tabs = _register("ui_tabs")
on_ui_train_tabs = _register("ui_train_tabs")
on_ui_settings = _register("ui_settings")
on_before_image_saved = _register("before_image_saved")
on_image_saved = _register("image_saved")
on_extra_noise = _register("extra_noise")
on_cfg_denoiser = _register("cfg_denoiser")
on_cfg_denoised = _register("cfg_denoised")
on_cfg_after_cfg = _register("cfg_after_cfg")
on_before_component = _register("before_component")
on_after_component = _register("after_component")
on_image_grid = _register("image_grid")
on_infotext_pasted = _register("infotext_pasted")
on_script_unloaded = _register("script_unloaded")
on_before_ui = _register("before_ui")
on_list_optimizers = _register("list_optimizers")
on_list_unets = _register("list_unets")
on_before_token_counter = _register("before_token_counter")
