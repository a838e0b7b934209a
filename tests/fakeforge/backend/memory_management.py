"""Mirrors the entry of ``backend/memory_management.py`` of Forge that code outside sampling calls before it runs a
model: ``load_models_gpu(models, memory_required=0, hard_memory_preservation=0)`` (``sampling_prepare`` in
``backend/sampling/sampling_function.py`` calls it with the UNet patcher). The double has one device: loading moves
nothing, it records the patcher as loaded (``current_loaded_models``, most recent first, as Forge keeps it)."""

from __future__ import annotations

current_loaded_models: list = []


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0) -> None:
    for model in models:
        if model in current_loaded_models:
            current_loaded_models.remove(model)
        current_loaded_models.insert(0, model)
        model.current_device = model.load_device
