"""memguard's WebUI settings (their own section, ``memguard_`` keys) and reads of the host's options."""

from __future__ import annotations

from typing import Any

from ..strategies import DEFAULT, NAMES

SECTION = ("memguard", "Memorization guard")

# key: (default, label, component kind, component args, hint)
OPTIONS: dict[str, tuple[Any, str, str, dict, str]] = {
    "memguard_watch": (
        True,
        "Watch every txt2img generation for memorization",
        "checkbox",
        {},
        "no extra UNet pass with an empty negative prompt",
    ),
    "memguard_auto_calibrate": (
        True,
        "Calibrate a checkpoint automatically the first time it generates",
        "checkbox",
        {},
        "its first watched generation waits for 320 benign prompts at the first step; stored, done once",
    ),
    "memguard_fpr": (
        0.01,
        "False-positive rate used by Calibrate and automatic calibration",
        "number",
        {"minimum": 0.0, "maximum": 0.5},
        "",
    ),
    "memguard_threshold": (
        0.0,
        "Manual threshold (0 = use this checkpoint's calibration)",
        "number",
        {"minimum": 0.0},
        "",
    ),
    "memguard_action": (
        "warn",
        "On detection",
        "radio",
        {"choices": ["warn", "mitigate"]},
        "mitigate uses the strategy below on flagged images only",
    ),
    "memguard_strategy": (DEFAULT, "Mitigation strategy", "radio", {"choices": list(NAMES)}, ""),
    "memguard_explain": (
        True,
        "Explain flagged images (token significance; one gradient pass per flagged image)",
        "checkbox",
        {},
        "",
    ),
    "memguard_infotext": (True, "Write score and verdict to the image's infotext", "checkbox", {}, ""),
    "memguard_audit_log": ("", "Audit log file (JSON lines; empty = off)", "textbox", {}, ""),
}


def get(key: str) -> Any:
    """A memguard setting, or its default when the host has none (tests, ``--nowebui`` before the UI is built)."""
    try:
        from modules import shared
    except ImportError:
        return OPTIONS[key][0]
    return getattr(shared.opts, key, OPTIONS[key][0])


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
    for key, (default, label, kind, args, hint) in OPTIONS.items():
        info = shared.OptionInfo(default, label, kinds[kind], args, section=SECTION)
        if hint and hasattr(info, "info"):
            info = info.info(hint)
        shared.opts.add_option(key, info)
