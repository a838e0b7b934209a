"""memguard's user interface: the warning panel under a generation (:mod:`.panel`), the Memorization tab
(:mod:`.tab`, gradio) and a stand-alone launcher (:mod:`.launch`, ``python -m memguard.ui``).

:mod:`.panel`, :mod:`.charts`, :mod:`.files` and :mod:`.actions` do not import gradio.
"""

from .panel import render_panel

__all__ = ["render_panel"]
