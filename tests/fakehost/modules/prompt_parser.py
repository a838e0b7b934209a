"""Mirrors ``modules/prompt_parser.py`` of A1111 1.10.1.

* ``get_learned_conditioning_prompt_schedules``: prompt editing ``[from:to:when]``, ``[to:when]``, ``[from::when]``
  and alternation ``[a|b]``, with the host's step arithmetic (integer ``when`` = absolute step, ``when`` with a
  decimal point = fraction of the steps; hires offsets; ``use_old_scheduling``). The host parses with a lark Earley
  grammar; the double uses a hand-written recursive-descent parser for the same grammar (emphasis brackets are kept
  verbatim; stray brackets and colons at top level are literal text; any other syntax error, e.g. a ``|`` outside
  brackets, makes the whole prompt a single schedule entry, as the host's ``LarkError`` fallback does). It
  reproduces the host's doctest examples (see ``tests/test_fakehost.py``).
* ``ScheduledPromptConditioning``, ``SdConditioning``, ``get_learned_conditioning`` (one model call per distinct
  prompt with all its schedule texts).
* AND composition: ``get_multicond_prompt_list`` (``\\bAND\\b`` split, trailing ``:weight``, de-duplicated
  sub-prompts), ``ComposableScheduledPromptConditioning``, ``MulticondLearnedConditioning``,
  ``get_multicond_learned_conditioning``.
* ``reconstruct_cond_batch`` / ``reconstruct_multicond_batch`` (rows: image order then AND order; shorter conds
  padded by repeating their last vector, ``stack_conds``), ``DictWithShape``.
* ``parse_prompt_attention``: ``(x)`` x1.1, ``[x]`` /1.1, ``(x:w)``, escapes ``\\( \\) \\[ \\] \\\\``, ``BREAK``,
  unbalanced brackets closed at the end, adjacent equal weights merged.
"""

from __future__ import annotations

import re
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

import torch

# --------------------------------------------------------------------------------------------------------------
# prompt editing schedules


class _SyntaxError(Exception):
    pass


@dataclass
class _Scheduled:
    before: Any  # node or None
    after: Any
    number: str
    when: int = 0


@dataclass
class _Alternate:
    options: list


_Node = str | list | _Scheduled | _Alternate
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*")


class _ScheduleParser:
    """Recursive descent over the host's grammar (``start``, ``prompt``, ``emphasized``, ``scheduled``,
    ``alternate``, ``plain``)."""

    def __init__(self, text: str):
        self.s = text

    def start(self) -> list:
        s, i, out = self.s, 0, []
        while i < len(s):
            if s[i] in "[(":
                got = self.group(i)
                if got is not None:
                    node, i = got
                    out.append(node)
                    continue
                out.append(s[i])  # a stray bracket is literal text at top level
                i += 1
            elif s[i] in "]):":
                out.append(s[i])
                i += 1
            else:
                m = _PLAIN.match(s, i)
                if m is None:  # '|' outside brackets, or a trailing backslash
                    raise _SyntaxError(i)
                out.append(m.group(0))
                i = m.end()
        return out

    def prompt(self, i: int) -> tuple[list, int] | None:
        s, out = self.s, []
        while i < len(s) and s[i] not in ":|])":
            if s[i] in "[(":
                got = self.group(i)
                if got is None:
                    return None
                node, i = got
                out.append(node)
                continue
            m = _PLAIN.match(s, i)
            if m is None:
                return None
            out.append(m.group(0))
            i = m.end()
        return out, i

    def group(self, i: int) -> tuple[_Node, int] | None:
        s = self.s
        first = self.prompt(i + 1)
        if first is None or first[1] >= len(s):
            return None
        p1, j = first
        if s[i] == "(":
            if s[j] == ")":
                return ["(", p1, ")"], j + 1
            if s[j] == ":":
                second = self.prompt(j + 1)
                if second is not None and second[1] < len(s) and s[second[1]] == ")":
                    return ["(", p1, ":", second[0], ")"], second[1] + 1
            return None
        if s[j] == "]":
            return ["[", p1, "]"], j + 1
        if s[j] == "|":
            options: list = [p1]
            while j < len(s) and s[j] == "|":
                nxt = self.prompt(j + 1)
                if nxt is None:
                    return None
                options.append(nxt[0] or None)
                j = nxt[1]
            if j < len(s) and s[j] == "]":
                return _Alternate(options), j + 1
            return None
        if s[j] == ":":
            second = self.prompt(j + 1)
            if second is None or second[1] >= len(s):
                return None
            p2, k = second
            if s[k] == "]":
                m = _NUMBER.fullmatch(s, j + 1, k)
                return (_Scheduled(None, p1, m.group(1)), k + 1) if m else None
            if s[k] == ":":
                m = _NUMBER.match(s, k + 1)
                if m and m.end() < len(s) and s[m.end()] == "]":
                    return _Scheduled(p1, p2, m.group(1)), m.end() + 1
        return None


def _walk(node: _Node):
    yield node
    if isinstance(node, list):
        for child in node:
            yield from _walk(child)
    elif isinstance(node, _Scheduled):
        for child in (node.before, node.after):
            if child is not None:
                yield from _walk(child)
    elif isinstance(node, _Alternate):
        for child in node.options:
            if child is not None:
                yield from _walk(child)


def _text_at(node: _Node, step: int) -> str:
    if node is None:
        return ""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "".join(_text_at(child, step) for child in node)
    if isinstance(node, _Scheduled):
        return _text_at(node.before, step) if step <= node.when else _text_at(node.after, step)
    return _text_at(node.options[(step - 1) % len(node.options)], step)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """Per prompt, ``[[end_at_step, text], ...]`` (mirrors the host function of the same name)."""
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps

    def schedule(prompt: str) -> list:
        try:
            tree = _ScheduleParser(prompt).start()
        except _SyntaxError:
            return [[steps, prompt]]
        ends = {steps}
        for node in _walk(tree):
            if isinstance(node, _Scheduled):
                v = float(node.number)
                if use_old_scheduling:
                    v = v * steps if v < 1 else v
                elif "." in node.number:
                    v = (v - flt_offset) * steps
                else:
                    v = v - int_offset
                node.when = min(steps, int(v))
                if node.when >= 1:
                    ends.add(node.when)
            elif isinstance(node, _Alternate):
                ends.update(range(1, steps + 1))
        return [[t, _text_at(tree, t)] for t in sorted(ends)]

    cache = {prompt: schedule(prompt) for prompt in set(prompts)}
    return [cache[prompt] for prompt in prompts]


# --------------------------------------------------------------------------------------------------------------
# conditioning

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts carrying ``is_negative_prompt``, ``width`` and ``height`` (SDXL needs them)."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    """For each prompt a list of ``ScheduledPromptConditioning``; ``model.get_learned_conditioning`` is called
    once per distinct prompt with the texts of all its schedule entries."""
    res = []
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    cache: dict[str, list] = {}
    for prompt, prompt_schedule in zip(prompts, schedules):
        if prompt in cache:
            res.append(cache[prompt])
            continue
        texts = SdConditioning([text for _, text in prompt_schedule], copy_from=prompts)
        conds = model.get_learned_conditioning(texts)
        entries = []
        for i, (end_at_step, _) in enumerate(prompt_schedule):
            cond = {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]
            entries.append(ScheduledPromptConditioning(end_at_step, cond))
        cache[prompt] = entries
        res.append(entries)
    return res


re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def get_multicond_prompt_list(prompts):
    """``(res_indexes, prompt_flat_list, prompt_indexes)``: per prompt the ``(flat index, weight)`` of its AND
    parts; identical sub-prompt texts share one flat entry."""
    res_indexes = []
    prompt_indexes: dict[str, int] = {}
    flat = SdConditioning(prompts)
    flat.clear()
    for prompt in prompts:
        indexes = []
        for part in re_AND.split(prompt):
            m = re_weight.search(part)
            text, weight = m.groups() if m is not None else (part, 1.0)
            weight = float(weight) if weight is not None else 1.0
            if text not in prompt_indexes:
                prompt_indexes[text] = len(flat)
                flat.append(text)
            indexes.append((prompt_indexes[text], weight))
        res_indexes.append(indexes)
    return res_indexes, flat, prompt_indexes


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape: tuple = shape
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    """Like ``get_learned_conditioning`` for the AND parts of each prompt, with their weights."""
    res_indexes, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [
        [ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in indexes] for indexes in res_indexes
    ]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def _pick(schedules, current_step):
    for entry in schedules:
        if current_step <= entry.end_at_step:
            return entry.cond
    return schedules[0].cond  # past the last entry the host keeps target_index 0


def reconstruct_cond_batch(c, current_step):
    """Stack each row's cond active at ``current_step`` (all rows must have the same token length)."""
    param = c[0][0].cond
    if isinstance(param, dict):
        res = DictWithShape(
            {k: torch.zeros((len(c),) + v.shape, device=v.device, dtype=v.dtype) for k, v in param.items()}
        )
        for i, schedules in enumerate(c):
            for k, v in _pick(schedules, current_step).items():
                res[k][i] = v
        return res
    res = torch.zeros((len(c),) + param.shape, device=param.device, dtype=param.dtype)
    for i, schedules in enumerate(c):
        res[i] = _pick(schedules, current_step)
    return res


def stack_conds(tensors):
    """Stack conds of different token lengths by repeating each shorter one's last vector."""
    longest = max(x.shape[0] for x in tensors)
    for i, t in enumerate(tensors):
        if t.shape[0] != longest:
            tensors[i] = torch.vstack([t, t[-1:].repeat([longest - t.shape[0], 1])])
    return torch.stack(tensors)


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    """``(conds_list, stacked)``: ``conds_list[i]`` = ``[(row, weight), ...]`` for image ``i``."""
    param = c.batch[0][0].schedules[0].cond
    tensors: list = []
    conds_list = []
    for parts in c.batch:
        rows = []
        for part in parts:
            rows.append((len(tensors), part.weight))
            tensors.append(_pick(part.schedules, current_step))
        conds_list.append(rows)
    if isinstance(tensors[0], dict):
        stacked = {k: stack_conds([x[k] for x in tensors]) for k in tensors[0]}
        return conds_list, DictWithShape(stacked, stacked["crossattn"].shape)
    return conds_list, stack_conds(tensors).to(device=param.device, dtype=param.dtype)


# --------------------------------------------------------------------------------------------------------------
# attention / emphasis

_ATTENTION_TOKEN = re.compile(
    r"\\[()\[\]\\]"  # escaped bracket or backslash
    r"|\\"  # lone backslash
    r"|[(\[]"  # opening bracket
    r"|:\s*([+-]?[.\d]+)\s*\)"  # ':weight)' closing a round bracket
    r"|[)\]]"  # closing bracket
    r"|[^\\()\[\]:]+"  # plain text
    r"|:"
)
re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[list]:
    """``[[text, weight], ...]``; ``["BREAK", -1]`` marks a forced chunk break (mirrors the host function)."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for entry in res[start:]:
            entry[1] *= factor

    for m in _ATTENTION_TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale_from(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), 1 / 1.1)
        else:
            for n, part in enumerate(re_break.split(token)):
                if n > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    for start in round_open:
        scale_from(start, 1.1)
    for start in square_open:
        scale_from(start, 1 / 1.1)
    if not res:
        res = [["", 1.0]]

    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res
