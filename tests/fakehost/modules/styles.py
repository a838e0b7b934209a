"""Mirrors ``modules/styles.py`` of A1111 1.10.1: ``PromptStyle``, ``merge_prompts``, ``StyleDatabase``.

Applying styles follows the host (``{prompt}`` placeholder, else ``", "``-join). Simplification: styles are
registered in memory (no CSV files), and ``extract_styles_from_prompt`` (used when pasting infotext) recognises a
style only when its text appears verbatim at the end of the prompt or around ``{prompt}``.
"""

from __future__ import annotations

from typing import NamedTuple


class PromptStyle(NamedTuple):
    name: str
    prompt: str
    negative_prompt: str
    path: str | None = None


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """Put ``prompt`` into a style's text: at ``{prompt}`` when present, else joined with ``", "``."""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, styles: list[str]) -> str:
    for style in styles:
        prompt = merge_prompts(style, prompt)
    return prompt


def _extract(style_text: str, prompt: str) -> tuple[bool, str]:
    stripped = prompt.strip()
    style_text = style_text.strip()
    if "{prompt}" in style_text:
        head, _, tail = style_text.partition("{prompt}")
        if stripped.startswith(head) and stripped.endswith(tail):
            return True, stripped[len(head) : len(stripped) - len(tail)]
        return False, prompt
    if style_text and stripped.endswith(style_text):
        rest = stripped[: -len(style_text)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


class StyleDatabase:
    """``shared.prompt_styles``: named styles applied to prompts in ``setup_prompts``."""

    def __init__(self) -> None:
        self.no_style = PromptStyle("", "", "", None)
        self.styles: dict[str, PromptStyle] = {}

    def apply_styles_to_prompt(self, prompt: str, styles: list[str]) -> str:
        return apply_styles_to_prompt(prompt, [self.styles.get(x, self.no_style).prompt for x in styles])

    def apply_negative_styles_to_prompt(self, prompt: str, styles: list[str]) -> str:
        return apply_styles_to_prompt(prompt, [self.styles.get(x, self.no_style).negative_prompt for x in styles])

    def extract_styles_from_prompt(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        found: list[str] = []
        remaining = list(self.styles.values())
        while True:
            hit = None
            for style in remaining:
                ok_p, new_p = _extract(style.prompt, prompt)
                ok_n, new_n = _extract(style.negative_prompt, negative_prompt)
                if (
                    (ok_p or not style.prompt)
                    and (ok_n or not style.negative_prompt)
                    and (style.prompt or style.negative_prompt)
                ):
                    prompt, negative_prompt, hit = new_p, new_n, style
                    break
            if hit is None:
                break
            remaining.remove(hit)
            found.append(hit.name)
        return list(reversed(found)), prompt, negative_prompt
