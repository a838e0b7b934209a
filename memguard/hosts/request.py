"""Per-request options: memguard's one always-on script argument, a JSON object that the HTTP API passes as
``"alwayson_scripts": {"memguard": {"args": [{"action": "mitigate", "strategy": "attention"}]}}`` (A1111
``modules/api/api.py: init_script_args`` copies ``args`` onto the script's inputs). The UI sends none (the input is a
``gr.State``), and a missing option falls back to the setting of the same name."""

from __future__ import annotations

import json
import math
from typing import Any

from ..strategies import NAMES as STRATEGIES

# name: (allowed values, or the type a value must have; what it does)
FIELDS: dict[str, tuple[Any, str]] = {
    "watch": (bool, "score this generation (setting: memguard_watch)"),
    "action": (("warn", "mitigate"), "what to do with a flagged image (setting: memguard_action)"),
    "strategy": (STRATEGIES, "mitigation strategy (setting: memguard_strategy)"),
    "threshold": (float, "judge by this threshold instead of the calibration (> 0)"),
    "explain": (bool, "explain flagged images (setting: memguard_explain)"),
    "force": (bool, "with action mitigate: mitigate every image, not only flagged ones"),
}


XYZ_ATTR = "memguard_xyz"  # the options an X/Y/Z plot axis set on a cell's processing object (:func:`add_xyz_axes`)


class OptionsError(ValueError):
    """Options that cannot be used, with a message that says which and why."""


def parse(value: Any) -> dict[str, Any]:
    """The request's options as a dict of known, checked fields (``{}`` for none: ``None``, ``""``, ``{}``)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise OptionsError(f"memguard's argument is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise OptionsError(f'memguard\'s argument must be an object such as {{"action": "mitigate"}}, not {value!r}')
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise OptionsError(f"unknown memguard option {unknown[0]!r}; known: {', '.join(FIELDS)}")
    return {name: _check(name, v) for name, v in value.items()}


def add_xyz_axes() -> None:
    """``on_before_ui``: memguard's axes in the X/Y/Z plot script (``scripts/xyz_grid.py``), found among the loaded
    scripts by its module's name as ControlNet and ADetailer find it; each sets an option on the cell's processing
    object (``XYZ_ATTR``), which the watch reads like a request's. Nothing when the plot script is absent."""
    from modules import scripts

    xyz = next(
        (d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py" and d.module),
        None,
    )
    if xyz is None or any(o.label.startswith("[memguard]") for o in xyz.axis_options):
        return
    axis = getattr(xyz, "AxisOptionTxt2Img", xyz.AxisOption)

    def setting(**fields: Any):
        def apply(p: Any, x: Any, xs: Any) -> None:
            values = {k: f(x) for k, f in fields.items()}
            setattr(p, XYZ_ATTR, {**getattr(p, XYZ_ATTR, {}), **{k: v for k, v in values.items() if v is not None}})

        return apply

    mitigation = setting(
        action=lambda x: "warn" if x == "off" else "mitigate", strategy=lambda x: None if x == "off" else x
    )
    xyz.axis_options.extend(
        [
            axis("[memguard] Strategy", str, mitigation, choices=lambda: ["off", *STRATEGIES]),
            axis("[memguard] Threshold", float, setting(threshold=float)),
            axis("[memguard] Explain", str, setting(explain=lambda x: x == "True"), choices=xyz.boolean_choice()),
        ]
    )


def _check(name: str, value: Any) -> Any:
    allowed = FIELDS[name][0]
    if allowed is bool:
        if not isinstance(value, bool):
            raise OptionsError(f"memguard option {name!r} must be true or false, not {value!r}")
        return value
    if allowed is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            raise OptionsError(f"memguard option {name!r} must be a number above 0, not {value!r}")
        return float(value)
    if value not in allowed:
        raise OptionsError(f"memguard option {name!r} must be one of {', '.join(allowed)}, not {value!r}")
    return value
