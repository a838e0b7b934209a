"""Mirrors ``modules/rng.py`` of A1111 1.10.1 (``randn``, ``randn_local``, ``randn_without_seed``,
``manual_seed``, ``create_generator``, ``slerp``, ``ImageRNG``) for the CPU device.

Seed semantics (as the host on CPU, ``randn_source`` "GPU" or "CPU" alike): image ``i`` of a batch gets its own
``torch.Generator("cpu").manual_seed(seed_i)``; its initial noise is
``torch.randn((C, H, W), generator=that_generator)`` (the same numbers as ``torch.randn((1, C, H, W), ...)``), and
``randn`` also reseeds torch's global RNG with ``seed_i`` as the host does. Later ``next()`` calls (ancestral
samplers' noise, via ``sd_samplers_common.TorchHijack``) continue each image's generator, or restart it from
``seed_i + eta_noise_seed_delta`` when ENSD is set. Subseeds are blended with ``slerp`` as in the host. The
Philox "NV" source and ``seed_resize_from_*`` are not mirrored (NotImplementedError).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from modules import devices, shared


def _check_source() -> None:
    if shared.opts.randn_source == "NV":
        raise NotImplementedError("randn_source 'NV' (Philox) is not mirrored by the fake host")


def manual_seed(seed: int) -> None:
    _check_source()
    torch.manual_seed(seed)


def randn(seed: int, shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Seed the global RNG with ``seed`` and draw ``shape`` (from ``generator`` when given)."""
    manual_seed(seed)
    return torch.randn(tuple(shape), device=devices.cpu, generator=generator).to(devices.device)


def randn_local(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """Draw with a private generator seeded by ``seed`` (global RNG untouched)."""
    _check_source()
    generator = torch.Generator(devices.cpu).manual_seed(int(seed))
    return torch.randn(tuple(shape), device=devices.cpu, generator=generator).to(devices.device)


def randn_like(x: torch.Tensor) -> torch.Tensor:
    _check_source()
    return torch.randn_like(x, device=devices.cpu).to(x.device)


def randn_without_seed(shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    _check_source()
    return torch.randn(tuple(shape), device=devices.cpu, generator=generator).to(devices.device)


def create_generator(seed: int) -> torch.Generator:
    _check_source()
    return torch.Generator(devices.cpu).manual_seed(int(seed))


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (used for variation seeds)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageRNG:
    """Per-image noise source for one batch: ``next()`` returns (B, C, H, W)."""

    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        if seed_resize_from_h > 0 and seed_resize_from_w > 0:
            raise NotImplementedError("seed_resize_from_h/w is not mirrored by the fake host")
        self.generators = [create_generator(seed) for seed in seeds]
        self.is_first = True

    def first(self) -> torch.Tensor:
        noises = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            variation = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = 0 if i >= len(self.subseeds) else self.subseeds[i]
                variation = randn(subseed, self.shape)
            noise = randn(seed, self.shape, generator=generator)
            if variation is not None:
                noise = slerp(self.subseed_strength, noise, variation)
            noises.append(noise)
        delta = shared.opts.eta_noise_seed_delta or 0
        if delta:
            self.generators = [create_generator(seed + delta) for seed in self.seeds]
        return torch.stack(noises).to(shared.device)

    def next(self) -> torch.Tensor:
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([randn_without_seed(self.shape, generator=g) for g in self.generators]).to(shared.device)
