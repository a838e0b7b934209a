"""Shared fixtures: real diffusers / transformers model classes with tiny configurations, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_model import build_tiny_model


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
