"""Shared fixtures: real diffusers / transformers model classes with tiny configurations, nothing downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from memguard.miniature.train import DDIM_CONFIG
from memguard.tokens import write_tokenizer_files

SCHEDULER = {"_class_name": "DDIMScheduler", **DDIM_CONFIG}  # SD1's DDIM configuration
ROOT = Path(__file__).resolve().parents[1]


def build_tiny_model(path: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Save a random tiny SD1-shaped model (pixel space, 3x8x8, 32-wide text features) in diffusers layout."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    unet.save_pretrained(path / "unet")
    text.save_pretrained(path / "text_encoder")
    write_tokenizer_files(path / "tokenizer")
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    config = {**SCHEDULER, "prediction_type": prediction_type}
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return path


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
