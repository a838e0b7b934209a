"""Mirrors the model side of A1111 1.10.1: ``modules/sd_models.py`` (``load_model``, ``CheckpointInfo``,
``get_empty_cond``, ``reload_model_weights``...) and the ldm ``LatentDiffusion`` object it produces, as seen by
extensions through ``shared.sd_model``.

The model is a diffusers directory loaded with ``memguard.pipeline.Model.load`` and wrapped as
:class:`LatentDiffusion`:

* ``apply_model(x_noisy, t, cond)`` with ``cond = {"c_crossattn": [tensor], "c_concat": [image_cond]}`` runs the
  UNet on ``torch.cat(c_crossattn, 1)`` (``c_concat`` is ignored, as ldm's ``DiffusionWrapper`` does for
  ``conditioning_key == "crossattn"``) and returns the raw network output (eps for ``parameterization == "eps"``).
  Like ``sd_hijack_unet.apply_model`` it first casts the cond dict entries to the UNet dtype in place.
* ``alphas_cumprod`` (1000, float32) from the scheduler config; ``parameterization`` "eps" or "v".
* ``cond_stage_model``: ``sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords`` around the HF tokenizer and text
  encoder; ``get_learned_conditioning(texts)`` calls it; ``cond_stage_model_empty_prompt`` is the encoding of
  ``""`` computed after the ``on_model_loaded`` callbacks, as in the host.
* ``model.diffusion_model`` is the diffusers ``UNet2DConditionModel``, so ``attn2`` / ``to_k`` modules exist, but
  with diffusers names (``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k``) instead of ldm's
  (``input_blocks.1.1.transformer_blocks.0.attn2.to_k``). Its class is :class:`UNetModel`, which adds ldm's
  top-level blocks as views of the same layers (:func:`ldm_blocks`).
* ``sd_model_hash`` / ``sd_checkpoint_info.shorthash`` = ``Model.model_hash`` (10 hex digits).
* the model kind is probed from the directory (:func:`model_class`): SDXL (``sd_models_xl.DiffusionEngine``, a second
  text encoder), SD2 (:class:`OpenCLIPLatentDiffusion`, an OpenCLIP-H-wide text encoder), else SD1.

Simplification: the model samples in pixel space (no VAE): ``decode_first_stage`` is the identity and
``processing.opt_f`` is 1, so ``p.width``/``p.height`` are the sample's pixel size.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from modules import devices, script_callbacks, sd_hijack, shared
from modules.sd_hijack_clip import FrozenCLIPEmbedder, FrozenCLIPEmbedderWithCustomWords


@dataclass
class CheckpointInfo:
    """Mirrors ``sd_models.CheckpointInfo`` fields extensions read."""

    filename: str
    name: str
    name_for_extra: str
    model_name: str
    hash: str
    sha256: str
    shorthash: str
    title: str
    short_title: str
    is_safetensors: bool = True


class TimestepEmbedSequential(torch.nn.Sequential):
    """ldm's container of one top-level block's layers (``openaimodel.TimestepEmbedSequential``); here a view: the
    diffusers UNet's own forward runs the layers."""


def ldm_blocks(unet: Any) -> tuple[torch.nn.ModuleList, TimestepEmbedSequential, torch.nn.ModuleList]:
    """A diffusers UNet's layers grouped as ldm's ``input_blocks``, ``middle_block`` and ``output_blocks``, as
    ``openaimodel.UNetModel.__init__`` builds them (sgm's for SDXL, and Forge's ``backend/nn/unet.py:
    IntegratedUNet2DConditionModel``, alike): the input convolution; per level a residual block with its spatial
    transformer (if the level has one) per layer, then the downsampler; the middle's residual blocks with its
    transformers between them; per output level a residual block with its transformer per layer, the last one with
    the upsampler. ``conv_in``, ``ResnetBlock2D``, ``Transformer2DModel``, ``Downsample2D``, ``Upsample2D`` stand in
    for ldm's ``conv_nd``, ``ResBlock``, ``SpatialTransformer``, ``Downsample``, ``Upsample``."""

    def paired(block: Any, extra: Any = None) -> list[TimestepEmbedSequential]:
        attentions = list(getattr(block, "attentions", None) or [])
        last = len(block.resnets) - 1
        return [
            TimestepEmbedSequential(resnet, *attentions[k : k + 1], *(list(extra or []) if k == last else []))
            for k, resnet in enumerate(block.resnets)
        ]

    inputs = [TimestepEmbedSequential(unet.conv_in)]
    for down in unet.down_blocks:
        inputs += paired(down) + [TimestepEmbedSequential(d) for d in down.downsamplers or []]
    mid = unet.mid_block
    middle = [mid.resnets[0]] + [m for pair in zip(mid.attentions, mid.resnets[1:]) for m in pair]
    outputs = [block for up in unet.up_blocks for block in paired(up, up.upsamplers)]
    return torch.nn.ModuleList(inputs), TimestepEmbedSequential(*middle), torch.nn.ModuleList(outputs)


class UNetModel(UNet2DConditionModel):
    """ldm's ``openaimodel.UNetModel`` as extensions reach it (``shared.sd_model.model.diffusion_model``; sgm's for
    SDXL): the diffusers UNet, with ldm's top-level blocks as views of its layers (:func:`ldm_blocks`)."""

    @property
    def input_blocks(self) -> torch.nn.ModuleList:
        return ldm_blocks(self)[0]

    @property
    def middle_block(self) -> TimestepEmbedSequential:
        return ldm_blocks(self)[1]

    @property
    def output_blocks(self) -> torch.nn.ModuleList:
        return ldm_blocks(self)[2]


def as_ldm_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """The loaded diffusers UNet as :class:`UNetModel` (the same object, its class made ldm's)."""
    unet.__class__ = UNetModel
    return unet


class DiffusionWrapper(torch.nn.Module):
    """ldm's ``DiffusionWrapper`` for ``conditioning_key == "crossattn"``: ``diffusion_model`` gets the
    concatenated cross-attention context."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.diffusion_model = as_ldm_unet(unet)
        self.conditioning_key = "crossattn"

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        context = torch.cat(c_crossattn, 1)
        return self.diffusion_model(x, t, encoder_hidden_states=context).sample


class LatentDiffusion(torch.nn.Module):
    """What ``shared.sd_model`` looks like to an extension (SD1-style, pixel space)."""

    def __init__(self, mg_model: Any):
        super().__init__()
        from diffusers import DDIMScheduler

        self.memguard_model = mg_model
        self.model = DiffusionWrapper(mg_model.unet)
        wrapped = FrozenCLIPEmbedder(mg_model.tokenizer, mg_model.text_encoder)
        self.cond_stage_model = FrozenCLIPEmbedderWithCustomWords(wrapped, sd_hijack.model_hijack)
        self.cond_stage_key = "txt"
        self.first_stage_model = None
        prediction = mg_model.scheduler_config.get("prediction_type", "epsilon")
        self.parameterization = {"epsilon": "eps", "v_prediction": "v"}.get(prediction, prediction)
        if self.parameterization not in ("eps", "v"):
            raise NotImplementedError(f"prediction_type {prediction!r}: the host supports eps and v models")
        alphas = DDIMScheduler.from_config(mg_model.scheduler_config).alphas_cumprod
        self.register_buffer("alphas_cumprod", alphas.to(torch.float32), persistent=False)
        self.num_timesteps = int(alphas.shape[0])
        self.latent_channels = int(mg_model.unet.config.in_channels)
        self.is_sdxl = False
        self.is_sdxl_inpaint = False
        self.is_sd1 = True
        self.is_sd2 = False
        self.is_sd3 = False
        self.is_ssd = False
        self.cond_stage_model_empty_prompt: torch.Tensor | None = None
        path = Path(mg_model.path)
        short = mg_model.model_hash
        self.sd_model_hash = short
        self.sd_model_checkpoint = str(path)
        self.sd_checkpoint_info = CheckpointInfo(
            filename=str(path),
            name=path.name,
            name_for_extra=path.name,
            model_name=path.name,
            hash=short[:8],
            sha256=short,
            shorthash=short,
            title=f"{path.name} [{short}]",
            short_title=f"{path.name} [{short}]",
        )

    @property
    def device(self) -> torch.device:
        return devices.device

    @property
    def dtype(self) -> torch.dtype:
        return devices.dtype_unet

    @contextlib.contextmanager
    def ema_scope(self, context: Any = None):
        yield

    def get_learned_conditioning(self, c: list[str]) -> torch.Tensor:
        """ldm ``LatentDiffusion.get_learned_conditioning``: the (hijacked) ``cond_stage_model`` on the texts."""
        return self.cond_stage_model(c)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any, return_ids: bool = False) -> torch.Tensor:
        """ldm ``LatentDiffusion.apply_model`` (wrapped by ``sd_hijack_unet.apply_model``)."""
        if isinstance(cond, dict):
            for key, value in cond.items():  # sd_hijack_unet casts the cond entries in place
                if isinstance(value, list):
                    cond[key] = [v.to(devices.dtype_unet) if isinstance(v, torch.Tensor) else v for v in value]
                elif isinstance(value, torch.Tensor):
                    cond[key] = value.to(devices.dtype_unet)
        else:
            cond = {"c_crossattn": cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy.to(devices.dtype_unet), t.to(devices.dtype_unet), **cond).float()

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel-space model: the sample is the image."""
        return z

    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def get_first_stage_encoding(self, encoder_posterior: torch.Tensor) -> torch.Tensor:
        return encoder_posterior


@dataclass
class _ModelData:
    sd_model: Any = None
    was_loaded_at_least_once: bool = False


model_data = _ModelData()
checkpoint_aliases: dict[str, CheckpointInfo] = {}
checkpoints_list: dict[str, CheckpointInfo] = {}


class OpenCLIPLatentDiffusion(LatentDiffusion):
    """An SD2 checkpoint: ldm's ``LatentDiffusion`` with ``FrozenOpenCLIPEmbedder`` (``layer="penultimate"``) hijacked
    as ``sd_hijack_open_clip.FrozenOpenCLIPEmbedderWithCustomWords`` (``is_sd2``: ``sd_models.set_model_type`` sees a
    ``cond_stage_model`` with a ``model``)."""

    def __init__(self, mg_model: Any):
        super().__init__(mg_model)
        from modules import sd_hijack_open_clip

        wrapped = sd_hijack_open_clip.FrozenOpenCLIPEmbedder(mg_model.tokenizer, mg_model.text_encoder)
        hijacked = sd_hijack_open_clip.FrozenOpenCLIPEmbedderWithCustomWords(wrapped, sd_hijack.model_hijack)
        self.cond_stage_model = hijacked
        self.is_sd1, self.is_sd2 = False, True


def model_class(model_dir: str | os.PathLike) -> type:
    """Which model the checkpoint builds, probed from its parts as ``sd_models_config``'s
    ``guess_model_config_from_state_dict`` does from the state dict: a second text encoder (SDXL's conditioner), else
    a text encoder 1024 wide (SD2's OpenCLIP-H), else SD1. Looked up at call time: the Forge double's engines take
    the places (``LatentDiffusion``, ``DiffusionEngineXL``)."""
    path = Path(model_dir)
    if (path / "text_encoder_2").is_dir():
        if DiffusionEngineXL is None:
            from modules.sd_models_xl import DiffusionEngine

            return DiffusionEngine
        return DiffusionEngineXL
    config = json.loads((path / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    return OpenCLIPLatentDiffusion if config.get("hidden_size") == 1024 else LatentDiffusion


DiffusionEngineXL: type | None = None  # sd_models_xl.DiffusionEngine unless the Forge double puts its engine here


def get_empty_cond(sd_model: LatentDiffusion) -> torch.Tensor:
    """Mirrors ``sd_models.get_empty_cond``: the conditioning of the empty prompt, (1, 77, C) (SDXL's crossattn)."""
    d = sd_model.get_learned_conditioning([""])
    return d["crossattn"] if isinstance(d, dict) else d


def load_model(model_dir: str | os.PathLike) -> LatentDiffusion:
    """Mirrors ``sd_models.load_model``'s order: build, hijack, set ``shared.sd_model``, fire ``on_model_loaded``,
    then compute ``cond_stage_model_empty_prompt``."""
    from memguard.pipeline import Model

    return use_model(model_class(model_dir)(Model.load(model_dir)))


def use_model(sd_model: Any) -> Any:
    """The rest of :func:`load_model` for a built model (tests swap in minimal doubles of other model families this
    way): hijack, ``shared.sd_model``, checkpoint lists, ``on_model_loaded``, the empty-prompt cond."""
    sd_hijack.model_hijack.hijack(sd_model)
    sd_model.eval()
    model_data.sd_model = sd_model
    model_data.was_loaded_at_least_once = True
    shared.sd_model = sd_model
    info = sd_model.sd_checkpoint_info
    for key in (info.title, info.name, info.model_name, info.shorthash, info.hash, info.filename):
        checkpoint_aliases[key] = info
    checkpoints_list[info.title] = info
    shared.opts.data["sd_model_checkpoint"] = info.title
    script_callbacks.model_loaded_callback(sd_model)
    with devices.autocast(), torch.no_grad():
        sd_model.cond_stage_model_empty_prompt = get_empty_cond(sd_model)
    return sd_model


def reload_model_weights(sd_model: Any = None, info: Any = None, forced_reload: bool = False) -> Any:
    """Single-model double: the loaded model stays (a different checkpoint is refused)."""
    if info is not None and info is not shared.sd_model.sd_checkpoint_info:
        raise NotImplementedError("the fake host holds one model; checkpoint switching is not mirrored")
    return shared.sd_model


def get_closet_checkpoint_match(search_string: str) -> CheckpointInfo | None:
    if not search_string:
        return None
    return checkpoint_aliases.get(search_string) or next(
        (info for title, info in checkpoints_list.items() if search_string in title), None
    )


def select_checkpoint() -> CheckpointInfo | None:
    return shared.sd_model.sd_checkpoint_info if shared.sd_model is not None else None


def apply_token_merging(sd_model: Any, token_merging_ratio: float) -> None:
    """Token merging is not mirrored (ratio 0 is the default and a no-op in the host too)."""
    if token_merging_ratio:
        raise NotImplementedError("token merging is not mirrored by the fake host")


def apply_alpha_schedule_override(sd_model: Any, p: Any = None) -> None:
    """Default settings (no zero-terminal-SNR, no downcast) leave alphas_cumprod alone, as here."""


class SkipWritingToConfig(contextlib.ContextDecorator):
    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        return None
