"""Mirrors ``modules/infotext_utils.py`` of A1111 1.10.1: ``quote`` / ``unquote``, ``parse_generation_parameters``,
``create_override_settings_dict``, ``get_override_settings`` and the paste flow of ``connect_paste``.

``parse_generation_parameters(x)`` splits the infotext into prompt, "Negative prompt:" and the last line's
``Key: value`` pairs (quoted values JSON-decoded, ``WxH`` values split into ``-1``/``-2``), then adds the host's
defaults for missing keys ("Clip skip" "1", "Hires ..." defaults, "RNG" "GPU", "Schedule type" "Automatic", ...),
"Emphasis" when the prompt uses emphasis, and the ``infotext_versions.backcompat`` keys.
``paste_infotext(text, fields)`` reproduces ``connect_paste``'s ``paste_func`` without gradio: parse, run the
``on_infotext_pasted`` callbacks (which may edit the dict), then resolve each ``(component, key_or_function)``
pair (a script's ``infotext_fields``) to a value.
"""

from __future__ import annotations

import json
import re
from typing import Any

from modules import errors, prompt_parser, script_callbacks, shared

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def quote(text: Any) -> Any:
    """JSON-quote a value containing ``,``, ``:`` or a newline (other values are returned unchanged)."""
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def _parse_version(text: str | None):
    if text is None:
        return None
    from packaging import version

    m = re.match(r"([^-]+-[^-]+)-.*", text)
    try:
        return version.parse(m.group(1) if m else text)
    except Exception:
        return None


def _backcompat(d: dict) -> None:
    """Mirrors ``infotext_versions.backcompat``."""
    if not shared.opts.auto_backcompat:
        return
    ver = _parse_version(d.get("Version"))
    if ver is None:
        return
    from packaging import version

    if ver < version.parse("1.6.0") and "[" in d.get("Prompt", ""):
        d["Old prompt editing timelines"] = True
    if ver < version.parse("1.6.0") and d.get("Sampler", "") in ("DDIM", "PLMS"):
        d["Pad conds v0"] = True
    if ver < version.parse("v1.7.0-225"):
        d["Downcast alphas_cumprod"] = True
    if ver < version.parse("1.8.0") and d.get("Refiner"):
        d["Refiner switch by sampling steps"] = True


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None) -> dict:
    """The dict of fields of an infotext, as pasted into the UI."""
    if skip_fields is None:
        skip_fields = shared.opts.infotext_skip_pasting
    res: dict[str, Any] = {}
    prompt, negative_prompt, in_negative = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        if in_negative:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        try:
            if v[0] == '"' and v[-1] == '"':
                v = unquote(v)
            m = re_imagesize.match(v)
            if m is not None:
                res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
            else:
                res[k] = v
        except Exception:
            print(f'Error parsing "{k}: {v}"')

    if shared.opts.infotext_styles != "Ignore":
        found, prompt_no_styles, negative_no_styles = shared.prompt_styles.extract_styles_from_prompt(
            prompt, negative_prompt
        )
        prompt, negative_prompt = prompt_no_styles, negative_no_styles
        if (shared.opts.infotext_styles == "Apply if any" and found) or shared.opts.infotext_styles == "Apply":
            res["Styles array"] = found

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    res.setdefault("Clip skip", "1")
    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"""<hypernet:{hypernet}:{res.get("Hypernet strength", "1.0")}>"""
    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    defaults = {
        "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler",
        "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "",
        "Hires negative prompt": "",
        "Mask mode": "Inpaint masked",
        "Masked content": "original",
        "Inpaint area": "Whole picture",
        "Masked area padding": 32,
    }
    for key, value in defaults.items():
        res.setdefault(key, value)
    for key, value in {
        "RNG": "GPU",
        "Schedule type": "Automatic",
        "Schedule max sigma": 0,
        "Schedule min sigma": 0,
        "Schedule rho": 0,
        "VAE Encoder": "Full",
        "VAE Decoder": "Full",
        "FP8 weight": "Disable",
    }.items():
        res.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    attention = prompt_parser.parse_prompt_attention(prompt) + prompt_parser.parse_prompt_attention(negative_prompt)
    uses_emphasis = len(attention) != len([a for a in attention if a[1] == 1.0 or a[0] == "BREAK"])
    if "Emphasis" not in res and uses_emphasis:
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)
    _backcompat(res)
    for key in skip_fields:
        res.pop(key, None)
    return res


def create_override_settings_dict(text_pairs: list[str]) -> dict:
    """``["Clip skip: 2", ...]`` -> ``{"CLIP_stop_at_last_layers": 2, ...}`` via the options' ``infotext`` labels."""
    params = {}
    for pair in text_pairs:
        k, v = pair.split(":", maxsplit=1)
        params[k] = v.strip()
    res = {}
    for label, key in [(info.infotext, k) for k, info in shared.opts.data_labels.items() if info.infotext]:
        value = params.get(label)
        if value is not None:
            res[key] = shared.opts.cast_value(key, value)
    return res


def get_override_settings(params: dict, *, skip_fields: Any = None) -> list[tuple[str, str, Any]]:
    """``(infotext label, setting name, value)`` for pasted fields that differ from the current settings."""
    res = []
    for label, key in [(info.infotext, k) for k, info in shared.opts.data_labels.items() if info.infotext]:
        if label in (skip_fields or {}):
            continue
        v = params.get(label)
        if v is None:
            continue
        if key == "sd_model_checkpoint" and shared.opts.disable_weights_auto_swap:
            continue
        v = shared.opts.cast_value(key, v)
        if v == getattr(shared.opts, key, None):
            continue
        res.append((label, key, v))
    return res


def paste_infotext(infotext: str, paste_fields: list[tuple[Any, Any]] = ()) -> tuple[dict, list]:
    """``connect_paste``'s ``paste_func`` without gradio: returns ``(params, values)`` where ``values[i]`` is what
    field ``i`` would be set to (None = left unchanged)."""
    params = parse_generation_parameters(infotext)
    script_callbacks.infotext_pasted_callback(infotext, params)
    values = []
    for component, key in paste_fields:
        if callable(key):
            try:
                v = key(params)
            except Exception:
                errors.report(f"Error executing {key}", exc_info=True)
                v = None
        else:
            v = params.get(key, None)
        if v is not None and component is not None and hasattr(component, "value"):
            valtype = type(component.value)
            try:
                v = False if valtype is bool and v == "False" else float(v) if valtype is int else valtype(v)
            except Exception:
                v = None
        values.append(v)
    return params, values
