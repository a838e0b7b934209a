"""Mirrors ``backend/patcher/unet.py`` of Forge: ``UnetPatcher``, what ``sd_model.forge_objects.unet`` holds.

``clone()`` also carries the ControlNet list and the extra concat condition (both None in the double);
``append_model_option`` / ``add_conditioning_modifier`` / ``add_sampler_pre_cfg_function`` / ``set_transformer_option``
and ``set_model_replace_all`` are kept. Not mirrored: ControlNet, memory bookkeeping, LoRA.
"""

from __future__ import annotations

import copy

from backend.patcher.base import ModelPatcher


class UnetPatcher(ModelPatcher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling: list = []
        self.extra_concat_condition = None

    def clone(self) -> UnetPatcher:
        n = UnetPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n

    def append_model_option(self, k, v, ensure_uniqueness=False):
        self.model_options.setdefault(k, [])
        if not (ensure_uniqueness and v in self.model_options[k]):
            self.model_options[k].append(v)

    def set_transformer_option(self, k, v):
        self.model_options.setdefault("transformer_options", {})[k] = v

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):
        self.append_model_option("conditioning_modifiers", modifier, ensure_uniqueness)

    def add_sampler_pre_cfg_function(self, modifier, ensure_uniqueness=False):
        self.append_model_option("sampler_pre_cfg_function", modifier, ensure_uniqueness)

    def set_model_replace_all(self, patch, target="attn1"):
        for block_name in ("input", "middle", "output"):
            for number in range(16):
                for transformer_index in range(16):
                    self.set_model_patch_replace(patch, target, block_name, number, transformer_index)

    def list_controlnets(self) -> list:
        return []
