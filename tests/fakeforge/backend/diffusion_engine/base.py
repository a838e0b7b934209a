"""Mirrors ``backend/diffusion_engine/base.py`` of Forge: ``ForgeObjects`` (what ``sd_model.forge_objects`` holds)."""

from __future__ import annotations


class ForgeObjects:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet = unet
        self.clip = clip
        self.vae = vae
        self.clipvision = clipvision

    def shallow_copy(self) -> ForgeObjects:
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)
