"""Shared fixtures: real diffusers / transformers model classes with tiny configurations, nothing downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from memguard.pipeline import Model

    return Model.load(tiny_dir)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread: the tiny models run faster on it, and a busy 2-core machine does not stall the suite."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def _webui_boot(tiny_dir):
    import fakehost

    fakehost.uninstall()
    model = Path(os.environ.get("FAKEHOST_MODEL_DIR", tiny_dir))
    yield fakehost.boot(model, extension_dirs=[str(ROOT)], api=True)
    fakehost.uninstall()


@pytest.fixture
def webui(_webui_boot):
    """The fake A1111 host with memguard loaded as an extension, booted once per test module; every test starts with
    memguard's settings at their defaults and no error reports."""
    from modules import errors, shared

    from memguard.hosts.settings import OPTIONS

    for key, (default, *_rest) in OPTIONS.items():
        setattr(shared.opts, key, default)
    errors.clear()
    yield _webui_boot
    errors.clear()
