"""Conditioning as the hosts hand it over: a tensor (SD1/SD2, ``n x 77k x C``) or SDXL's dict (``crossattn`` +
``vector``), possibly with rows another extension put before the 77-token chunks. SDXL's ``vector`` is the pooled text
vector (CLIP-G's projection, 1280 channels) followed by the size/crop numbers' embeddings (:data:`SIZES`)."""

from __future__ import annotations

from typing import Any

import torch

from ...tokens import CONTEXT

SIZES = 6 * 256
"""The size/crop part at the end of SDXL's ``vector``: original size, crop top-left and target size, two numbers each,
each embedded in 256 channels (sgm's ``ConcatTimestepEmbedderND(256)``, Forge's ``Timestep(256)``)."""


def take(cond: Any, index: list[int]) -> Any:
    """Rows ``index`` of a tensor or of every tensor of a dict conditioning."""
    if isinstance(cond, dict):
        return {k: v[index] for k, v in cond.items()}
    return cond[index]


def prefix(context: torch.Tensor) -> int:
    """Rows an extension put before the 77-token chunks: ControlNet (``sd-webui-controlnet/scripts/hook.py``) marks
    every cond and uncond with one row (+-1024) that its UNet hook strips again; 0 without it."""
    return context.shape[-2] % CONTEXT


def crossattn(cond: Any) -> torch.Tensor:
    """The cross-attention context of the prompt's chunks (``n x 77k x C``), any extension's prefix rows left out:
    the positions memguard's tokens, explanation and strategies index, as the UNet's attention layers see them."""
    context = cond["crossattn"] if isinstance(cond, dict) else cond
    return context[..., prefix(context) :, :]


def pooled_text(cond: Any) -> torch.Tensor | None:
    """SDXL's pooled text vector: ``vector`` less its size/crop part (:data:`SIZES`); None without one."""
    if not isinstance(cond, dict) or "vector" not in cond or cond["vector"].shape[-1] <= SIZES:
        return None
    return cond["vector"][:, :-SIZES]


def with_pooled(cond: Any, tensor: torch.Tensor) -> Any:
    """SDXL's ``cond`` with the pooled text part of its ``vector`` replaced by ``tensor``, the size/crop part kept."""
    vector = cond["vector"]
    return _like(cond, {**cond, "vector": torch.cat([tensor.to(vector.dtype), vector[:, tensor.shape[1] :]], dim=1)})


def with_crossattn(cond: Any, tensor: torch.Tensor) -> Any:
    """``cond`` with its prompt context replaced by ``tensor`` (its prefix rows, if any, put back in front); an SDXL
    dict keeps its other entries (``vector``) and its type: the host's ``prompt_parser.DictWithShape``, whose
    ``shape`` A1111's ``CFGDenoiser.forward`` reads after ``on_cfg_denoiser``."""
    context = cond["crossattn"] if isinstance(cond, dict) else cond
    n = prefix(context)
    if n:
        tensor = torch.cat([context[: tensor.shape[0], :n].to(tensor.dtype), tensor], dim=-2)
    if not isinstance(cond, dict):
        return tensor
    return _like(cond, {**cond, "crossattn": tensor})


def _like(cond: dict, replaced: dict) -> dict:
    """``replaced`` as ``cond``'s dict type (the host's ``DictWithShape``) where that type takes a dict."""
    try:
        return type(cond)(replaced)
    except TypeError:  # a dict type built some other way
        return replaced


def condition(cond: Any, image_cond: torch.Tensor) -> dict:
    """The host's ``make_condition_dict`` for ordinary (non-edit, non-unCLIP) models."""
    if isinstance(cond, dict):
        return {**cond, "c_concat": [image_cond]}
    return {"c_crossattn": [cond], "c_concat": [image_cond]}


def with_rows(cond: Any, rows: dict[int, torch.Tensor], pooled_rows: dict[int, torch.Tensor] | None = None) -> Any:
    """``cond`` with the prompt context of the given rows replaced, and SDXL's pooled text vector of ``pooled_rows``
    (new tensors; the host caches its conds)."""
    if rows:
        tensor = crossattn(cond).clone()
        for r, value in rows.items():
            tensor[r] = value
        cond = with_crossattn(cond, tensor)
    text = pooled_text(cond)
    if pooled_rows and text is not None:
        text = text.clone()
        for r, value in pooled_rows.items():
            text[r] = value
        cond = with_pooled(cond, text)
    return cond
