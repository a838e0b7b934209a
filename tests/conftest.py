"""Shared fixtures: real diffusers / transformers model classes with tiny configurations, nothing downloaded."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]

# The tests that run only on memguard's own stack (.venv). Every other test is also marked ``host_stack`` and runs,
# in `make test`, on the WebUI hosts' own Python stacks too (.venv-a1111, .venv-forge: requirements/*.txt) with
# ``pytest -m host_stack``, because inside a WebUI memguard runs on the host's torch, transformers and gradio. Code
# that never runs inside a WebUI (the command line, the diffusers pipeline's own features, training the miniature,
# the data audit, the benchmarks) is listed here, by test file (a path under tests/) or by test node id. A new test
# file is on the host stacks unless it is added here.
OUR_STACK_ONLY = (
    "test_pipeline.py",  # memguard.pipeline: the stand-alone diffusers pipeline
    "test_training.py",  # training the bundled miniature
    "test_audit.py",  # the `audit-data` command and its perceptual hashes
    "test_cli.py",  # the command line
    "test_sdxl.py",  # SDXL layouts in the diffusers pipeline and the command line (the WebUI seams: test_a1111 etc.)
    "test_package.py",  # the wheel and its `memguard` command (installed into a venv over this stack's packages)
    "test_faults.py::test_cli_calibrate_reports_the_store_and_keeps_it",  # the `calibrate` command
)


def pytest_collection_modifyitems(config, items):
    """Mark every test that is not in :data:`OUR_STACK_ONLY` with ``host_stack``."""
    tests = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.path)).resolve()
        relative = path.relative_to(tests).as_posix() if path.is_relative_to(tests) else path.name
        node = f"{relative}::{item.name.split('[')[0]}"
        if relative not in OUR_STACK_ONLY and node not in OUR_STACK_ONLY:
            item.add_marker(pytest.mark.host_stack)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def model_dir(tiny_dir) -> Path:
    """The model the WebUI doubles load: the tiny model, or ``FAKEHOST_MODEL_DIR`` (the miniature, say)."""
    return Path(os.environ.get("FAKEHOST_MODEL_DIR", tiny_dir))


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

    for key, option in OPTIONS.items():
        setattr(shared.opts, key, option.default)
    errors.clear()
    yield _webui_boot
    errors.clear()


@pytest.fixture(scope="session", autouse=True)
def _no_automatic_calibration():
    """Tests meet checkpoints uncalibrated unless they calibrate or set a threshold: automatic calibration (on by
    default for users) is off unless a test turns it on (``shared.opts.memguard_auto_calibrate = True``)."""
    from memguard.hosts.settings import OPTIONS

    default = OPTIONS["memguard_auto_calibrate"]
    OPTIONS["memguard_auto_calibrate"] = dataclasses.replace(default, default=False)
    yield
    OPTIONS["memguard_auto_calibrate"] = default
