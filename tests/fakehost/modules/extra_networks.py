"""Mirrors ``modules/extra_networks.py`` of A1111 1.10.1: ``<name:args>`` tags are parsed out of prompts
(``parse_prompt`` / ``parse_prompts``), so ``p.prompts`` holds the text that is actually encoded.

Simplification: no extra network is registered, so ``activate`` / ``deactivate`` do nothing (the host would warn
about unknown networks and ignore them too).
"""

from __future__ import annotations

import re
from collections import defaultdict


class ExtraNetworkParams:
    def __init__(self, items: list[str] | None = None):
        self.items = items or []
        self.positional: list[str] = []
        self.named: dict[str, str] = {}
        for item in self.items:
            key, sep, value = item.partition("=")
            if sep:
                self.named[key] = value
            else:
                self.positional.append(item)


re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def parse_prompt(prompt: str) -> tuple[str, dict]:
    found: dict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def take(m: re.Match) -> str:
        found[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, take, prompt), found


def parse_prompts(prompts: list[str]) -> tuple[list[str], dict | None]:
    """Strip the tags from every prompt; the network data of the first prompt stands for the batch."""
    res, extra_data = [], None
    for prompt in prompts:
        text, data = parse_prompt(prompt)
        if extra_data is None:
            extra_data = data
        res.append(text)
    return res, extra_data


def activate(p, extra_network_data) -> None:
    """No extra networks are registered in the double."""


def deactivate(p, extra_network_data) -> None:
    """No extra networks are registered in the double."""
