"""Prompt files in, CSV reports out, for the Calibrate and Batch audit panes.

A prompt file is UTF-8 text with one prompt per line, or JSON lines whose objects carry a ``prompt`` or ``caption``
string (the command line's format), or a JSON array of such objects or of strings. Blank lines are skipped. JSON is
recognised by its opening (``[`` or ``{`` then a string, an object or the closing bracket), so prompts that start
with the WebUI's own brackets (``[cat:dog:0.5] ...``, ``{red|blue} cat``) are prompts.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

MAX_FILE_BYTES = 64 * 1024 * 1024
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ("index", "prompt", "score", "threshold", "flagged", "seed_scores")
JSON_ARRAY = re.compile(r'\[\s*["{\]]')
JSON_OBJECT = re.compile(r'\{\s*["}]')


class PromptFileError(ValueError):
    """A prompt file cannot be used; the message says which file and why."""


def upload_path(upload: object) -> Path | None:
    """The local path of a ``gr.File`` value: a path string (gradio 4), a tempfile wrapper with ``.name`` (gradio
    3), or a dict with ``name``/``path``; ``None`` when nothing was uploaded."""
    if upload is None or upload == "":
        return None
    if isinstance(upload, dict):
        upload = upload.get("path") or upload.get("name")
    name = getattr(upload, "name", upload)
    return Path(str(name)) if name else None


def _text_of(row: object, where: str) -> str:
    if isinstance(row, str):
        return row
    text = row.get("prompt", row.get("caption")) if isinstance(row, dict) else None
    if not isinstance(text, str):
        raise PromptFileError(f"{where} has no 'prompt' or 'caption' string")
    return text


def parse_prompts(text: str, name: str = "the file") -> list[str]:
    """Prompts from a file's text (see the module docstring); raises :class:`PromptFileError` on bad JSON."""
    stripped = text.lstrip("\ufeff").strip()
    if JSON_ARRAY.match(stripped):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{name} looks like a JSON array but is not valid JSON: {err}") from err
        if not isinstance(rows, list):
            raise PromptFileError(f"{name} is not a JSON array of prompts")
        return [p for i, row in enumerate(rows) if (p := _text_of(row, f"{name}, item {i + 1},")).strip()]
    prompts = []
    for number, line in enumerate(stripped.splitlines(), start=1):
        prompt = line
        if JSON_OBJECT.match(line.lstrip()):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptFileError(f"{name}, line {number}, is not valid JSON: {err}") from err
            prompt = _text_of(row, f"{name}, line {number},")
        if prompt.strip():
            prompts.append(prompt)
    return prompts


def read_prompt_file(path: Path | str) -> list[str]:
    """Prompts from a file; raises :class:`PromptFileError` when it is missing, too large, binary, not UTF-8,
    malformed, or holds no prompt."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PromptFileError(f"{name} is {size / 2**20:.0f} MiB; prompt files are limited to 64 MiB")
        raw = path.read_bytes()
    except OSError as err:
        raise PromptFileError(f"cannot read {name}: {err.strerror or err}") from err
    if b"\x00" in raw:
        raise PromptFileError(f"{name} is not a text file (it contains NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptFileError(f"{name} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    prompts = parse_prompts(text, name)
    if not prompts:
        raise PromptFileError(f"{name} holds no prompt: write one prompt per line, or JSON lines with 'prompt'")
    return prompts


def spreadsheet_cell(value: object) -> str:
    """A CSV cell a spreadsheet will not evaluate as a formula (a leading ``'`` neutralizes ``=``, ``+``, ...)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def audit_csv_rows(rows: Sequence[dict]) -> list[list[str]]:
    """The header and one line per audited prompt, in input order."""
    out = [list(CSV_COLUMNS)]
    for index, row in enumerate(rows):
        seed_scores = ";".join(_number(s) for s in row.get("scores") or [])
        out.append(
            [
                str(index),
                spreadsheet_cell(row.get("prompt", "")),
                _number(row.get("score")),
                _number(row.get("threshold")),
                "yes" if row.get("flagged") else "no",
                seed_scores,
            ]
        )
    return out


def write_audit_csv(rows: Sequence[dict], directory: Path | str | None = None) -> Path:
    """Write the audit as ``memguard-audit-*.csv`` in ``directory`` (a new temporary one by default)."""
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="memguard-"))
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="memguard-audit-", suffix=".csv", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(audit_csv_rows(rows))
    return Path(name)
