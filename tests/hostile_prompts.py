"""Prompts from the wild, for the hardening tests: hypothesis strategies over the WebUI's prompt syntax, fixed edge
cases, HTML/JS payloads, and an HTML parser that shows what a browser would make of memguard's markup.

The syntax is A1111 1.10's (``modules/prompt_parser.py``, ``modules/extra_networks.py``, ``modules/styles.py``):
emphasis ``(x)``, ``(x:1.3)``, ``[x]``, escaped brackets, ``AND`` with ``:weight``, ``BREAK``, prompt editing
``[a:b:0.5]``, alternation ``[a|b]``, extra-network tags ``<lora:name:0.8>``, textual-inversion-like names and the
``{prompt}`` placeholder of styles; words mix ASCII with emoji, combining marks, right-to-left scripts, control
characters and markup.
"""

from __future__ import annotations

import os
from html.parser import HTMLParser

from hypothesis import strategies as st

SCALE = max(1, int(os.environ.get("MEMGUARD_FUZZ_SCALE", "1")))


def examples(n: int) -> int:
    """``n`` hypothesis examples (CI), times ``MEMGUARD_FUZZ_SCALE`` for a longer run by hand."""
    return n * SCALE


INJECTIONS = [
    "<img src=x onerror=alert(1)>",
    '"><script>alert(1)</script>',
    '<a href="javascript:alert(1)">click</a> javascript:alert(1)',
    "{{7*7}} {{constructor.constructor('alert(1)')()}}",
    "</textarea><svg onload=alert(1)>",
]
LONG_PROMPT = "a cat " * 1667  # 10,002 characters
EDGE_PROMPTS = [
    "",
    "   ",
    "\t\n",
    LONG_PROMPT,
    "(((((((((((((((((((( cat",
    "cat ))))))))]]]]]]]]",
    "\\(not emphasis\\) \\[nor this\\] \\\\",
    "a (cat:1.3) AND a dog :0.4 AND BREAK",
    "BREAK BREAK BREAK",
    "[a:b:0.5] [a|b|c] [:x:3] [x::0.9] [a:b:c:d]",
    "<lora:name:0.8> <hypernet:x:1> easynegative, {prompt}",
    "🐱‍👤 café ñ e\u0301\u0301\u0301 👍🏽 🏳️‍🌈",
    "قطة على أريكة حمراء שלום",
    "\x00\x01\x1b[31mred\x7f \u200b\u200e\u202e reversed",
    "((a:1.5), b:0.5) [c:(d:2):0.3]",
    ",,,,, ,,,, ,,, :: :: ::",
    *INJECTIONS,
]

WORDS = ["a", "cat", "photo", "of", "red", "sofa", "oil", "painting", "AND", "BREAK", "and", "break", "masterpiece"]
TI_NAMES = ["easynegative", "bad-hands-5", "emb_1", "style-of-x"]
NETWORK_TAGS = ["<lora:name:0.8>", "<hypernet:x:1>", "<lora:a b:1:te=0.5>", "<lyco:z>", "<lora:>"]
CHARACTERS = st.characters(categories=["L", "M", "N", "P", "S", "Zs", "Cc", "Cf"])
SPECIAL = st.sampled_from(
    ["🐱", "👍🏽", "🏳️‍🌈", "e\u0301", "\u0301", "\u200b", "\u202e", "\u200f", "שלום", "قطة", "ﷺ", "\x00", "\x1b", "\r\n"]
)


def _weight() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["1.3", "0.5", "2", "0", "-1", ".5", "1.", "+1.2", "1e3", "9" * 40]),
        st.floats(-5, 5, allow_nan=False).map(lambda w: f"{w:.2f}"),
    )


@st.composite
def _word(draw) -> str:
    return draw(
        st.one_of(
            st.sampled_from(WORDS),
            st.sampled_from(TI_NAMES),
            st.sampled_from(NETWORK_TAGS),
            SPECIAL,
            st.sampled_from(INJECTIONS),
            st.text(CHARACTERS, min_size=1, max_size=8),
        )
    )


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """One syntactic construct around smaller prompts."""
    return st.one_of(
        st.builds(lambda a: f"({a})", inner),
        st.builds(lambda a, w: f"({a}:{w})", inner, _weight()),
        st.builds(lambda a: f"[{a}]", inner),
        st.builds(lambda a, b, w: f"[{a}:{b}:{w}]", inner, inner, _weight()),
        st.builds(lambda a, w: f"[{a}:{w}]", inner, _weight()),
        st.builds(lambda a, b: f"[{a}|{b}]", inner, inner),
        st.builds(lambda a, b, w: f"{a} AND {b} :{w}", inner, inner, _weight()),
        st.builds(lambda a, b: f"{a} BREAK {b}", inner, inner),
        st.builds(lambda a, b: f"{a}, {b}", inner, inner),
        st.builds(lambda a: "{prompt}, " + a, inner),
        st.builds(lambda a, e: e + a, inner, st.sampled_from(["\\(", "\\)", "\\[", "\\]", "\\\\", "\\"])),
        st.builds(lambda a, u: u + a, inner, st.sampled_from(["(", ")", "[", "]", ":", "|", "<", ">", "\\"])),
    )


def prompts(max_leaves: int = 12) -> st.SearchStrategy[str]:
    """Prompts in the host's syntax: words (any script, any character) composed with every construct."""
    joined = st.lists(_word(), min_size=1, max_size=4).flatmap(
        lambda ws: st.sampled_from([" ", ", ", "", "\n"]).map(lambda sep: sep.join(ws))
    )
    return st.one_of(st.sampled_from(EDGE_PROMPTS), st.recursive(joined, _extend, max_leaves=max_leaves))


class Markup(HTMLParser):
    """Tags, attributes and text of an HTML fragment, as a browser's parser would see them."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)

    def inert(self, allowed: set[str]) -> bool:
        """Only ``allowed`` tags, no event-handler attribute, no ``javascript:`` link or source."""
        handlers = [name for name, _ in self.attrs if name.lower().startswith("on")]
        links = [v for n, v in self.attrs if n in ("href", "src", "action") and "javascript:" in (v or "").lower()]
        return set(self.tags) <= allowed and not handlers and not links
