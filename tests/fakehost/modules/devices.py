"""Mirrors ``modules/devices.py`` of A1111 1.10.1 for a CPU run with ``--no-half`` (fp32 everywhere).

``autocast`` is a null context (as the host's is when ``dtype`` is float32), ``torch_gc`` does nothing, and
``test_for_nans`` raises :class:`NansException` when a tensor is entirely NaN, like the host.
"""

from __future__ import annotations

import contextlib

import torch

cpu = torch.device("cpu")
device = cpu
device_interrogate = cpu
device_gfpgan = cpu
device_esrgan = cpu
device_codeformer = cpu
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
dtype_inference = torch.float32
unet_needs_upcast = False
fp8 = False


class NansException(Exception):
    """Raised by :func:`test_for_nans`, as the host's ``devices.NansException``."""


def autocast(disable: bool = False):
    """Null context: the host's autocast is a no-op for float32 inference on CPU."""
    return contextlib.nullcontext()


def without_autocast(disable: bool = False):
    return contextlib.nullcontext()


def torch_gc() -> None:
    """No memory to free on the CPU double."""


def torch_npu_set_device() -> None:
    """No NPU."""


def test_for_nans(x: torch.Tensor, where: str) -> None:
    """Mirrors ``devices.test_for_nans``: fail when the whole tensor is NaN (``where`` is "unet" or "vae")."""
    if torch.all(torch.isnan(x)).item():
        raise NansException(f"A tensor with all NaNs was produced in {where}.")


def cond_cast_unet(x: torch.Tensor) -> torch.Tensor:
    return x.to(dtype_unet)


def cond_cast_float(x: torch.Tensor) -> torch.Tensor:
    return x.float()
