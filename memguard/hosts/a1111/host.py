"""What memguard reads from the running WebUI (A1111 1.10 ``modules``; Forge keeps the same names): the loaded model,
its UNet and native size, its prompt chunker, the calibration store, the threshold, the generation lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ...algebra import BatchLayout
from ...calibrate import CalibrationStore, CalibrationStoreError, default_store
from .. import settings
from .conditioning import take


@contextlib.contextmanager
def host_queue() -> Iterator[None]:
    """Hold the host's GPU queue lock (``modules/call_queue.py: queue_lock``, held by ``wrap_gradio_gpu_call`` around
    every generation and by the host's own API; Forge keeps it): the Memorization tab and memguard's API use the
    model between generations, never beside one. No lock outside a host."""
    try:
        from modules.call_queue import queue_lock
    except ImportError:
        yield
        return
    with queue_lock:
        yield


def model_key(p: Any = None) -> str:
    """The calibration store's key: the loaded checkpoint's short hash, plus the extra networks (LoRA, LyCORIS,
    hypernetworks) active for ``p``'s batch with their arguments (``+lora:name:0.8``, sorted), which move the benign
    scores (``bench/adapter_shift.py``). Textual-inversion embeddings change only the prompts that use them."""
    from modules import shared

    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    key = str(getattr(info, "shorthash", None) or getattr(shared.sd_model, "sd_model_hash", None) or "unknown")
    data = None if getattr(p, "disable_extra_networks", False) else getattr(p, "extra_network_data", None)
    networks = sorted(f"{kind}:{':'.join(params.items)}" for kind, found in (data or {}).items() for params in found)
    return key + "".join(f"+{n}" for n in networks)


def store() -> CalibrationStore:
    """``<WebUI data>/memguard/calibration.json`` (the command line's store outside a WebUI)."""
    try:
        from modules.paths import data_path
    except ImportError:
        return CalibrationStore(default_store())
    return CalibrationStore(Path(data_path) / "memguard" / "calibration.json")


def current_threshold(p: Any = None) -> tuple[float | None, str]:
    """The manual threshold setting if set, else the calibration stored for the loaded checkpoint (with the extra
    networks of ``p``'s batch, see :func:`model_key`); and where it came from, or why there is none."""
    manual = settings.get("memguard_threshold")
    if manual and manual > 0:
        return float(manual), "manual threshold (settings)"
    try:
        entry = store().get(model_key(p))
    except CalibrationStoreError as err:
        return None, str(err)
    if entry is None:
        return None, "this checkpoint is not calibrated yet (Memorization tab, Calibrate)"
    return entry.threshold, entry.describe()


def unet() -> torch.nn.Module:
    from modules import shared

    return shared.sd_model.model.diffusion_model


def interrupted() -> bool:
    """Whether the user pressed Interrupt or Skip."""
    from modules import shared

    return bool(shared.state.interrupted or shared.state.skipped)


def native_latent(network: torch.nn.Module, sd_model: Any) -> tuple[int, int, int]:
    """The latent shape the loaded model was trained at (its ``x_T`` in the tab, the API and calibration; the size
    scores are normalized to): 64x64 (512 px), 96x96 for a v-prediction SD2 (768 px), 128x128 for SDXL (1024 px),
    or a test model's ``sample_size``."""
    config = getattr(network, "config", None)
    if config is not None and hasattr(config, "sample_size"):  # a diffusers UNet (pixel-space test models)
        return int(config.in_channels), int(config.sample_size), int(config.sample_size)
    if getattr(sd_model, "is_sdxl", False):
        side = 128
    else:
        side = 96 if getattr(sd_model, "parameterization", "eps") == "v" else 64
    channels = getattr(network, "in_channels", None) or getattr(config, "in_channels", None) or 4
    return int(channels), side, side


def text_model() -> Any:
    """The host's prompt chunker (``process_texts``, ``id_end``): ``shared.sd_model.cond_stage_model`` on A1111; Forge
    sets that to None and chunks with ``text_processing_engine`` (SD1) or ``text_processing_engine_l`` (SDXL), the
    same API (``backend/text_processing/classic_engine.py``)."""
    from modules import shared

    for name in ("cond_stage_model", "text_processing_engine", "text_processing_engine_l"):
        found = getattr(shared.sd_model, name, None)
        if found is not None:
            return found
    raise RuntimeError("the loaded model has no prompt chunker (cond_stage_model or text_processing_engine)")


def conditioning_texts(texts: list[str], size: tuple[int, int] | None = None, negative: bool = False) -> Any:
    """``texts`` as the host hands them to ``get_learned_conditioning`` (A1111 1.10 ``prompt_parser.SdConditioning``,
    kept by Forge): with the image ``size`` (width, height in pixels; SDXL puts it in its vector, 1024 when missing)
    and whether they are the negative prompts (SDXL encodes an all-empty negative prompt as zeros)."""
    try:
        from modules.prompt_parser import SdConditioning
    except ImportError:
        return list(texts)
    width, height = size if size is not None else (None, None)
    return SdConditioning(list(texts), width=width, height=height, is_negative_prompt=negative)


def empty_cond(batch: int, size: tuple[int, int] | None = None) -> Any:
    """``e_empty``, ``batch`` rows: what the host conditions an empty negative prompt on at image ``size`` (width,
    height; None: the host's default), cached on the model per size.

    That is Wen et al.'s unconditional reference in every model's own terms: the encoding of ``""`` for SD1 and SD2;
    for SDXL the zero text embeddings (crossattn and pooled) with the size in the vector (A1111 1.10
    ``modules/sd_models_xl.py: get_learned_conditioning`` passes ``force_zero_embeddings=["txt"]`` for an all-empty
    negative prompt; Forge's ``backend/diffusion_engine/sdxl.py`` zeroes the same), the unconditional SDXL was trained
    with (sgm's ``GeneralConditioner`` drops text by zeroing it). A generation with an empty negative prompt samples
    with exactly this uncond, so scores read from its CFG batch and from memguard's own passes agree."""
    from modules import shared

    model = shared.sd_model
    cache = getattr(model, "_memguard_empty", None)
    if not isinstance(cache, dict) or len(cache) > 16:
        cache = {}
    for value in cache.values():
        if not isinstance(value, dict):  # SD1, SD2: the size is not part of the conditioning
            return take(value, [0] * batch)
    key = tuple(size) if size is not None else None
    if key not in cache:
        cache[key] = model.get_learned_conditioning(conditioning_texts([""], size, negative=True))
        with contextlib.suppress(AttributeError):
            model._memguard_empty = cache
    return take(cache[key], [0] * batch)


def native_size(network: torch.nn.Module, sd_model: Any) -> tuple[int, int]:
    """The native image size in pixels (width, height): :func:`native_latent` times the host's latent factor
    (``modules/processing.py: opt_f``, 8; the test doubles sample pixels)."""
    _, height, width = native_latent(network, sd_model)
    try:
        from modules.processing import opt_f
    except ImportError:
        opt_f = 8
    return width * int(opt_f), height * int(opt_f)


def is_timesteps(denoiser: Any) -> bool:
    """Whether the CFG denoiser is a timestep sampler's (DDIM, PLMS, UniPC: output ``eps``, ``sigma`` = timestep)."""
    try:
        from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
    except ImportError:
        return False
    return isinstance(denoiser, CFGDenoiserTimesteps)


def layout(denoiser: Any) -> BatchLayout:
    """The CFG batch's layout at this step (cond rows per ``AND`` part, then one uncond row per image)."""
    from modules import prompt_parser

    cond = denoiser.sampler.sampler_extra_args["cond"]
    conds_list, _ = prompt_parser.reconstruct_multicond_batch(cond, denoiser.step)
    return BatchLayout.from_conds_list(conds_list)


def uncond_skipped(p: Any, sigma: torch.Tensor) -> bool:
    """Whether the host will skip its unconditional pass at step 0 (``skip_early_cond``, or NGMS on all steps)."""
    skip_early = settings.host_opt("skip_early_cond", 0.0) or 0.0
    s_min = getattr(p, "s_min_uncond", 0.0) or 0.0
    ngms = bool(settings.host_opt("s_min_uncond_all", False)) and s_min > 0 and float(sigma[0]) < s_min
    return skip_early != 0 or ngms


def step0_text(p: Any, text: str) -> str:
    """The text the host encodes for ``text`` at step 0 (prompt editing resolved)."""
    from modules import prompt_parser

    steps = getattr(p, "steps", 20) * getattr(p, "step_multiplier", 1)
    return prompt_parser.get_learned_conditioning_prompt_schedules([text], steps)[0][0][1]
