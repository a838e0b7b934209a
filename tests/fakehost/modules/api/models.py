"""Mirrors the request/response models of ``modules/api/models.py`` (A1111 1.10.1) as plain dataclasses.

``StableDiffusionTxt2ImgProcessingAPI`` has every init field of ``StableDiffusionProcessingTxt2Img`` (same
defaults, minus the host's ``API_NOT_ALLOWED`` list) plus ``sampler_index`` ("Euler"), ``script_name``,
``script_args``, ``send_images``, ``save_images``, ``alwayson_scripts``, ``force_task_id`` and ``infotext``.
Construct it from a request dict with :meth:`StableDiffusionTxt2ImgProcessingAPI.from_dict`. Difference: the
host's pydantic model ignores unknown keys; the double raises TypeError so that typos in tests surface.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

API_NOT_ALLOWED = [
    "self",
    "kwargs",
    "sd_model",
    "outpath_samples",
    "outpath_grids",
    "sampler_index",
    "extra_generation_params",
    "overlay_images",
    "do_not_reload_embeddings",
    "seed_enable_extras",
    "prompt_for_display",
    "sampler_noise_scheduler_override",
    "ddim_discretize",
]


@dataclass
class ScriptArg:
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list | None = None


@dataclass
class ScriptInfo:
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg] = field(default_factory=list)


@dataclass
class TextToImageResponse:
    images: list[str] | None
    parameters: dict
    info: str


class StableDiffusionTxt2ImgProcessingAPI:
    """A txt2img request: attribute per field, defaults from the processing class' ``__init__`` signature."""

    extra_fields = {
        "sampler_index": "Euler",
        "script_name": None,
        "script_args": [],
        "send_images": True,
        "save_images": False,
        "alwayson_scripts": {},
        "force_task_id": None,
        "infotext": None,
    }

    def __init__(self, **values: Any):
        defaults = self.field_defaults()
        unknown = set(values) - set(defaults)
        if unknown:
            raise TypeError(f"unknown txt2img request fields: {sorted(unknown)}")
        self.fields_set = set(values)
        for name, default in defaults.items():
            value = values.get(name, default)
            setattr(
                self,
                name,
                list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value,
            )

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        from modules.processing import StableDiffusionProcessingTxt2Img

        params: dict[str, inspect.Parameter] = {}
        for klass in reversed([k for k in inspect.getmro(StableDiffusionProcessingTxt2Img) if k is not object]):
            params.update(inspect.signature(klass.__init__).parameters)
        defaults = {
            k: (None if isinstance(v.default, property) or v.default is inspect.Parameter.empty else v.default)
            for k, v in params.items()
            if k not in API_NOT_ALLOWED
        }
        return {**defaults, **cls.extra_fields}

    @classmethod
    def from_dict(cls, data: dict) -> StableDiffusionTxt2ImgProcessingAPI:
        return cls(**data)

    def dict(self) -> dict:
        return {k: getattr(self, k) for k in self.field_defaults()}

    def copy(self, update: dict) -> StableDiffusionTxt2ImgProcessingAPI:
        values = {**{k: getattr(self, k) for k in self.field_defaults()}, **update}
        return type(self)(**values)
