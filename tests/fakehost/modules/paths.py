"""Mirrors ``modules/paths.py`` / ``paths_internal.py``: ``script_path`` and ``data_path``.

The double's ``data_path`` is a fresh temporary directory (the host writes ``params.txt`` and saved images
under it); ``script_path`` is this fake install's root (``tests/fakehost``).
"""

from __future__ import annotations

import os
import tempfile

script_path = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
data_path = tempfile.mkdtemp(prefix="fakehost-data-")
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
default_output_dir = os.path.join(data_path, "outputs")
