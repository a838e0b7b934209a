"""Mirrors the extension-facing order of ``modules/ui.py: create_ui`` (A1111 1.10.1) without gradio.

``create_ui()``: ``on_ui_settings`` callbacks (``UiSettings.register_settings``), txt2img scripts
``initialize_scripts(False)`` + ``setup_ui()`` (each script's ``ui(False)``), img2img scripts likewise
(``ui(True)``), then ``on_ui_tabs`` callbacks. Returns a stand-in for the Blocks object with the tabs collected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modules import script_callbacks, scripts
from modules.ui_common import plaintext_to_html  # noqa: F401 - the host re-exports it from modules.ui


@dataclass
class FakeBlocks:
    """What ``create_ui`` returns: the extra tabs ``on_ui_tabs`` callbacks returned, and the script inputs."""

    tabs: list = field(default_factory=list)
    txt2img_inputs: list = field(default_factory=list)
    img2img_inputs: list = field(default_factory=list)


def create_ui() -> FakeBlocks:
    script_callbacks.ui_settings_callback()
    scripts.scripts_current = scripts.scripts_txt2img
    scripts.scripts_txt2img.initialize_scripts(is_img2img=False)
    scripts.scripts_txt2img.prepare_ui()
    txt2img_inputs = scripts.scripts_txt2img.setup_ui()
    scripts.scripts_current = scripts.scripts_img2img
    scripts.scripts_img2img.initialize_scripts(is_img2img=True)
    scripts.scripts_img2img.prepare_ui()
    img2img_inputs = scripts.scripts_img2img.setup_ui()
    scripts.scripts_current = None
    tabs = script_callbacks.ui_tabs_callback()
    return FakeBlocks(tabs=tabs, txt2img_inputs=txt2img_inputs, img2img_inputs=img2img_inputs)
