"""A diffusers-format model directory as memguard uses it: the UNet, the CLIP text encoder and tokenizer, the
scheduler configuration, and the VAE for latent models (without ``vae/`` the model samples pixels). Nothing is
downloaded."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .algebra import eps_from_v
from .tokens import Tokenized, load_tokenizer, tokenize

CALIBRATION_FILE = "memguard_calibration.json"


class ModelError(ValueError):
    """The model directory is missing a part or has a wrong one; the message names it."""


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelError(f"{path} is missing: a diffusers model directory needs {what}")
    return path


def _weights_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin"))


def _text_encoder(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """``CLIPTextModel`` from ``folder`` under transformers 4 (the WebUIs) and 5 alike: 5.x writes the weights without
    the ``text_model.`` prefix that 4.x expects (4.x would leave them random with only a warning), and the dtype
    keyword differs (``torch_dtype`` on 4.x, ``dtype`` on 5.x), so the model is cast after loading."""
    from transformers import CLIPTextConfig, CLIPTextModel

    files = [f for f in _weights_files(folder) if f.suffix == ".safetensors"]
    if not files:
        loaded: Any = CLIPTextModel.from_pretrained(folder, local_files_only=True)
        return loaded.to(dtype)
    from safetensors.torch import load_file

    model: Any = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, local_files_only=True))
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    if not state.keys() & model.state_dict().keys():  # written by the other major version of transformers
        prefix = "text_model."
        state = {(k[len(prefix) :] if k.startswith(prefix) else prefix + k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{folder}: weights that do not fit CLIPTextModel (missing {missing[:3]}, {unexpected[:3]})")
    return model.to(dtype)


@dataclass
class Model:
    """The parts of a text-to-image model memguard needs, loaded from a local diffusers directory."""

    path: Path
    unet: Any  # diffusers UNet2DConditionModel (untyped)
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any
    scheduler_config: dict
    vae: Any = None  # diffusers AutoencoderKL, or None for a pixel-space model
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    _empty: torch.Tensor | None = None
    _hash: str | None = None

    @classmethod
    def load(cls, path: Path | str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Model:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"{path} is not a directory: --model takes a diffusers model directory")
        for part, what in (("unet", "a UNet"), ("text_encoder", "a text encoder"), ("tokenizer", "a tokenizer")):
            _require(path / part, f"{part}/ ({what})")
        _require(path / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
        for part in ("unet", "text_encoder"):
            _require(path / part / "config.json", f"{part}/config.json")
            if not _weights_files(path / part):
                raise ModelError(f"{path / part} has no weights (.safetensors or .bin)")
        try:
            unet = UNet2DConditionModel.from_pretrained(
                path / "unet", torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False
            )
            text_encoder = _text_encoder(path / "text_encoder", dtype)
            tokenizer = load_tokenizer(path / "tokenizer")
            vae = None
            if (path / "vae").is_dir():
                vae = AutoencoderKL.from_pretrained(
                    path / "vae", torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False
                )
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"cannot load {path}: {err}") from err
        config = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        model = cls(path, unet.eval(), text_encoder.eval(), tokenizer, config, vae.eval() if vae else None)
        model.device, model.dtype = torch.device(device), dtype
        for module in (model.unet, model.text_encoder, model.vae):
            if module is not None:
                module.to(model.device).requires_grad_(False)
        return model

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def model_hash(self) -> str:
        """Short sha256 (10 hex digits, as the WebUI shows) over the UNet's and text encoder's weight files."""
        if self._hash is None:
            digest = hashlib.sha256()
            for part in ("unet", "text_encoder"):
                for file in _weights_files(self.path / part):
                    with file.open("rb") as handle:
                        for block in iter(partial(handle.read, 1 << 20), b""):
                            digest.update(block)
            self._hash = digest.hexdigest()[:10]
        return self._hash

    def shipped_threshold(self) -> float | None:
        """A threshold calibrated by the model's author, stored beside the weights."""
        file = self.path / CALIBRATION_FILE
        if not file.is_file():
            return None
        return float(json.loads(file.read_text(encoding="utf-8"))["threshold"])

    # --- text -------------------------------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> Tokenized:
        return tokenize(self.tokenizer, prompt)

    @torch.no_grad()
    def encode(self, tokenized: Tokenized | Sequence[Tokenized]) -> torch.Tensor:
        """``(1, 77 * n_chunks, C)``: each 77-token chunk encoded on its own, then concatenated (the WebUI's scheme).

        A sequence of ``n`` prompts of equal chunk count gives ``(n, 77 * n_chunks, C)`` in one text-encoder call."""
        many = [tokenized] if isinstance(tokenized, Tokenized) else list(tokenized)
        if len({t.n_chunks for t in many}) != 1:
            raise ValueError("prompts encoded together must have the same number of 75-token chunks")
        ids = torch.tensor([row for t in many for row in t.ids], device=self.device)
        hidden = self.text_encoder(input_ids=ids).last_hidden_state
        return hidden.reshape(len(many), -1, hidden.shape[-1]).to(self.dtype)

    def empty(self) -> torch.Tensor:
        """``e_empty``: the text encoder's embedding of ``""`` (Wen et al.'s reference), cached."""
        if self._empty is None:
            self._empty = self.encode(self.tokenize(""))
        return self._empty

    # --- network ------------------------------------------------------------------------------------------------
    def scheduler(self, steps: int):
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config({**self.scheduler_config, "prediction_type": "epsilon"})
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    def abar(self, t: int) -> torch.Tensor:
        from diffusers import DDIMScheduler

        if not hasattr(self, "_abar"):
            self._abar = DDIMScheduler.from_config(self.scheduler_config).alphas_cumprod.to(self.device)
        return self._abar[int(t)]

    def eps(self, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The network's prediction at timestep ``t`` converted to ``eps`` (eps-, v- and sample-parameterized)."""
        out = self.unet(x.to(self.dtype), t, encoder_hidden_states=cond.to(self.dtype)).sample
        kind = self.prediction_type
        if kind == "epsilon":
            return out
        abar = self.abar(int(t))
        if kind == "v_prediction":
            return eps_from_v(x, out, abar)
        if kind == "sample":
            return (x - abar.sqrt() * out) / (1 - abar).sqrt()
        raise ModelError(f"unsupported prediction_type {kind!r} in scheduler_config.json")

    def blocks(self) -> list[torch.nn.Module]:
        """The UNet's top-level blocks, recomputed in backward passes to bound memory."""
        unet = self.unet
        return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]

    def noise(self, seed: int) -> torch.Tensor:
        gen = torch.Generator("cpu").manual_seed(int(seed))
        x = torch.randn((1, *self.latent_shape), generator=gen, dtype=torch.float32)
        return (x * self.scheduler(1).init_noise_sigma).to(self.device)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Samples in ``[-1, 1]`` pixel space (through the VAE for latent models)."""
        if self.vae is None:
            return x0.float().clamp(-1, 1)
        scale = getattr(self.vae.config, "scaling_factor", 0.18215)
        return self.vae.decode(x0.to(self.dtype) / scale).sample.float().clamp(-1, 1)
