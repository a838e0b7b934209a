"""Mirrors ``modules/extensions.py`` of A1111 1.10.1: the ``Extension`` registry and ``find_extension``.

``find_extension(filename)`` walks up the directories of a file and returns the extension whose root it is in,
which ``script_callbacks.add_callback`` uses to name callbacks ``"<extension>/<file>/<category>"`` (else
``"base/..."``). Simplification: no git metadata, no ``metadata.ini`` ordering (``list_callback_order_instructions``
is empty).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class ExtensionMetadata:
    """No ``metadata.ini`` support: no callback ordering instructions."""

    def list_callback_order_instructions(self) -> list:
        return []

    def get_script_requirements(self, field_name: str, section: str, extra_section: str | None = None) -> list:
        return []


@dataclass
class Extension:
    name: str
    path: str
    enabled: bool = True
    is_builtin: bool = False
    metadata: ExtensionMetadata = field(default_factory=ExtensionMetadata)

    @property
    def canonical_name(self) -> str:
        return self.name.lower()


extensions: list[Extension] = []
extension_paths: dict[str, Extension] = {}


def active() -> list[Extension]:
    return [x for x in extensions if x.enabled]


def register(path: str) -> Extension:
    """Test helper standing in for ``list_extensions``: register the extension rooted at ``path``."""
    path = os.path.realpath(path)
    ext = extension_paths.get(path)
    if ext is None:
        ext = Extension(os.path.basename(path), path)
        extensions.append(ext)
        extension_paths[path] = ext
    return ext


def find_extension(filename: str) -> Extension | None:
    """Mirrors ``extensions.find_extension``: the registered extension whose directory contains ``filename``."""
    parent = os.path.dirname(os.path.realpath(filename))
    while parent != filename:
        ext = extension_paths.get(parent)
        if ext is not None:
            return ext
        filename = parent
        parent = os.path.dirname(filename)
    return None
