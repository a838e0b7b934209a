"""Placeholders for the WebUI's own dropdown scripts (``scripts/prompt_matrix.py``, ``scripts/prompts_from_file.py``,
``scripts/xyz_grid.py`` of A1111 1.10.1).

They are loaded before any extension, as in the host, so an extension's dropdown script is not at index 1 and its
arguments do not start at 1: code that hard-codes positions fails here as it would in the WebUI. Each returns as
many controls from ``ui()`` as the host script (5, 4 and 18) with the host's default values; their ``run`` is not
mirrored. Not mirrored either: the built-in AlwaysVisible processing scripts (seed, sampler, refiner sections)
whose ``setup()`` fills ``p.seed``/``p.steps``/``p.sampler_name`` from the UI in the host; with the double, pass those
fields to the processing object directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from modules import paths, scripts


@dataclass
class Control:
    """A stand-in gradio component: what ``ScriptRunner`` reads is ``value`` (and ``label``/``elem_id``)."""

    value: Any = None
    label: str = ""
    elem_id: str | None = None
    choices: list | None = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None


class _Placeholder(scripts.Script):
    title_text = ""
    defaults: list = []

    def title(self):
        return self.title_text

    def ui(self, is_img2img):
        return [Control(value=v, label=f"{self.title_text} #{i}") for i, v in enumerate(self.defaults)]

    def run(self, p, *args):
        raise NotImplementedError(f"the built-in script {self.title_text!r} is only a placeholder in the fake host")


class PromptMatrix(_Placeholder):
    title_text = "Prompt matrix"
    defaults = [False, False, "positive", "comma", 0]


class PromptsFromFile(_Placeholder):
    title_text = "Prompts from file or textbox"
    defaults = [False, False, "start", ""]


class XYZPlot(_Placeholder):
    title_text = "X/Y/Z plot"
    defaults = [
        "Nothing",
        "",
        [],
        "Nothing",
        "",
        [],
        "Nothing",
        "",
        [],
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        0,
        False,
    ]


PLACEHOLDERS = [
    (PromptMatrix, "prompt_matrix.py"),
    (PromptsFromFile, "prompts_from_file.py"),
    (XYZPlot, "xyz_grid.py"),
]


def script_data() -> list[scripts.ScriptClassData]:
    root = paths.script_path
    return [scripts.ScriptClassData(cls, os.path.join(root, "scripts", name), root, None) for cls, name in PLACEHOLDERS]
