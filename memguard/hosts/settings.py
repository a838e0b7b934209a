"""memguard's WebUI settings (their own section, ``memguard_`` keys) and reads of the host's options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..strategies import DEFAULT, NAMES

SECTION = ("memguard", "Memorization guard")


@dataclass(frozen=True)
class Option:
    """One setting: its default, its label on the settings page, the gradio component (``kind``, ``args``) and a hint
    under it."""

    default: Any
    label: str
    kind: str  # checkbox, number, radio or textbox
    args: dict = field(default_factory=dict)
    hint: str = ""


OPTIONS: dict[str, Option] = {
    "memguard_watch": Option(
        True,
        "Watch every txt2img generation for memorization",
        "checkbox",
        {},
        "no extra UNet pass with an empty negative prompt",
    ),
    "memguard_auto_calibrate": Option(
        True,
        "Calibrate a checkpoint automatically the first time it generates",
        "checkbox",
        {},
        "its first watched generation waits for 320 benign prompts at the first step; stored, done once",
    ),
    "memguard_fpr": Option(
        0.01,
        "False-positive rate used by Calibrate and automatic calibration",
        "number",
        {"minimum": 0.0, "maximum": 0.5},
        "",
    ),
    "memguard_threshold": Option(
        0.0,
        "Manual threshold (0 = use this checkpoint's calibration)",
        "number",
        {"minimum": 0.0},
        "",
    ),
    "memguard_action": Option(
        "warn",
        "On detection",
        "radio",
        {"choices": ["warn", "mitigate"]},
        "mitigate uses the strategy below on flagged images only",
    ),
    "memguard_strategy": Option(DEFAULT, "Mitigation strategy", "radio", {"choices": list(NAMES)}, ""),
    "memguard_explain": Option(
        True,
        "Explain flagged images (token significance; one gradient pass per flagged image)",
        "checkbox",
        {},
        "",
    ),
    "memguard_infotext": Option(True, "Write score and verdict to the image's infotext", "checkbox", {}, ""),
    "memguard_audit_log": Option("", "Audit log file (JSON lines; empty = off)", "textbox", {}, ""),
}


def get(key: str) -> Any:
    """A memguard setting, or its default when the host has none (tests, ``--nowebui`` before the UI is built)."""
    try:
        from modules import shared
    except ImportError:
        return OPTIONS[key].default
    return getattr(shared.opts, key, OPTIONS[key].default)


def host_opt(name: str, default: Any) -> Any:
    try:
        from modules import shared
    except ImportError:
        return default
    return getattr(shared.opts, name, default)


def register() -> None:
    """``on_ui_settings`` body: add every option to the host's settings page."""
    import gradio as gr
    from modules import shared

    kinds = {"checkbox": gr.Checkbox, "number": gr.Number, "radio": gr.Radio, "textbox": gr.Textbox}
    for key, option in OPTIONS.items():
        info = shared.OptionInfo(option.default, option.label, kinds[option.kind], option.args, section=SECTION)
        if option.hint and hasattr(info, "info"):
            info = info.info(option.hint)
        shared.opts.add_option(key, info)
