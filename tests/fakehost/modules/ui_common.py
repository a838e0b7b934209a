"""Mirrors ``modules/ui_common.py``'s ``plaintext_to_html`` (how infotext and comments are shown under images)."""

from __future__ import annotations

import html


def plaintext_to_html(text: str, classname: str | None = None) -> str:
    content = "<br>\n".join(html.escape(x) for x in text.split("\n"))
    return f"<p class='{classname}'>{content}</p>" if classname else f"<p>{content}</p>"
