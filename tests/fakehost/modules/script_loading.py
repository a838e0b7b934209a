"""Mirrors ``modules/script_loading.py`` of A1111 1.10.1: ``load_module(path)`` executes a script file as a module
named after its basename, without putting it in ``sys.modules``."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

loaded_scripts: dict[str, ModuleType] = {}


def load_module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded_scripts[path] = module
    return module
