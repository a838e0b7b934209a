"""Placeholders for the WebUI's own dropdown scripts (``scripts/prompt_matrix.py``, ``scripts/prompts_from_file.py``,
``scripts/xyz_grid.py`` of A1111 1.10.1).

They are loaded before any extension, as in the host, so an extension's dropdown script is not at index 1 and its
arguments do not start at 1: code that hard-codes positions fails here as it would in the WebUI. Each returns as
many controls from ``ui()`` as the host script (5, 4 and 18) with the host's default values. Their ``run`` is not
mirrored, except the X/Y/Z plot's for one axis, nor is anything else of them but ``xyz_grid``'s module object that
extensions add axes to. Not mirrored either: the built-in AlwaysVisible processing scripts (seed, sampler, refiner
sections) whose ``setup()`` fills ``p.seed``/``p.steps``/``p.sampler_name`` from the UI in the host; with the double,
pass those fields to the processing object directly.
"""

from __future__ import annotations

import csv
import io
import os
import types
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


def _xyz_module() -> types.ModuleType:
    """The module object of ``scripts/xyz_grid.py`` as the host loads it (``script_loading.load_module`` names it
    after the file): what extensions find through ``scripts.scripts_data[i].module`` to add their axes
    (``AxisOption``, ``AxisOptionTxt2Img``, ``axis_options``, ``boolean_choice``, ``csv_string_to_list_strip``)."""
    module = types.ModuleType("xyz_grid.py")

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
            self.label, self.type, self.apply, self.format_value = label, type, apply, format_value
            self.confirm, self.cost, self.choices, self.prepare = confirm, cost, choices, prepare

    class AxisOptionTxt2Img(AxisOption):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.is_img2img = False

    def boolean_choice(reverse: bool = False):
        return lambda: ["False", "True"] if reverse else ["True", "False"]

    def csv_string_to_list_strip(data: str) -> list[str]:
        return [v.strip() for row in csv.reader(io.StringIO(data), skipinitialspace=True) for v in row]

    def apply_field(field):
        return lambda p, x, xs: setattr(p, field, x)

    module.AxisOption, module.AxisOptionTxt2Img = AxisOption, AxisOptionTxt2Img
    module.boolean_choice, module.csv_string_to_list_strip = boolean_choice, csv_string_to_list_strip
    module.axis_options = [
        AxisOption("Nothing", str, lambda p, x, xs: None),
        AxisOption("Seed", int, apply_field("seed")),
        AxisOption("Steps", int, apply_field("steps")),
    ]
    return module


XYZ = _xyz_module()


class XYZPlot(_Placeholder):
    """``scripts/xyz_grid.py``'s ``Script``. ``run`` is mirrored for the X axis: the axis option is picked by index
    among the txt2img options (``current_axis_options``), its values come from the dropdown when it has choices and
    from the comma-separated text otherwise, converted by its ``type``; each cell is ``process_images`` of a
    ``copy(p)`` the option's ``apply`` has set; the result holds each cell's first image and infotext."""

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

    def run(self, p, x_type, x_values, x_values_dropdown, *rest):
        from copy import copy

        from modules import processing

        options = [o for o in XYZ.axis_options if type(o) is XYZ.AxisOption or o.is_img2img == self.is_img2img]
        x_opt = options[x_type]
        values = x_values_dropdown if x_opt.choices is not None else XYZ.csv_string_to_list_strip(x_values)
        xs = [x_opt.type(v) for v in values]
        result = processing.Processed(p, [], p.seed, "")
        for x in xs:
            pc = copy(p)
            pc.styles = pc.styles[:]
            x_opt.apply(pc, x, xs)
            cell = processing.process_images(pc)
            result.images.append(cell.images[0])
            result.infotexts.append(cell.infotexts[0])
        return result


XYZPlot.__module__ = XYZ.__name__
XYZ.Script = XYZPlot


PLACEHOLDERS = [
    (PromptMatrix, "prompt_matrix.py"),
    (PromptsFromFile, "prompts_from_file.py"),
    (XYZPlot, "xyz_grid.py"),
]


def script_data() -> list[scripts.ScriptClassData]:
    root = paths.script_path
    modules = {XYZPlot: XYZ}
    return [
        scripts.ScriptClassData(cls, os.path.join(root, "scripts", name), root, modules.get(cls))
        for cls, name in PLACEHOLDERS
    ]
