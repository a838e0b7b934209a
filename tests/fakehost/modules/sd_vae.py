"""Mirrors ``modules/sd_vae.py``'s queries: the pixel-space double has no VAE loaded."""

from __future__ import annotations


def get_loaded_vae_name() -> str | None:
    return None


def get_loaded_vae_hash() -> str | None:
    return None


def reload_vae_weights(sd_model=None, vae_file=None) -> None:
    """No VAE to reload."""
