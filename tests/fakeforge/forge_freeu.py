"""Mirrors the shape of Forge's built-in FreeU (``extensions-builtin/sd_forge_freeu/scripts/forge_freeu.py``), the
pattern of every Forge built-in that patches the UNet (SAG, PAG, DynamicThresholding, Kohya HRFix, MultiDiffusion,
StyleAlign, ControlNet): an AlwaysVisible script whose ``process_before_every_sampling`` takes
``p.sd_model.forge_objects.unet``, ``clone()``s it (a deep copy of its model options) and puts the patched clone
back. Called twice for a hires pass (see ``fakeforge._forge_differences``).

FreeU's effect itself is an ``output_block_patch``, which the double's UNet does not run; it stands in here as an
``attn2_output_patch`` that scales the cross-attention output (``scale``), so the patch visibly changes the images.
"""

from __future__ import annotations

from typing import Any


def make_freeu(scale: float = 1.25) -> type:
    """The FreeU-like script class (``modules.scripts`` must be importable: call after ``fakeforge.install()``)."""
    import gradio as gr
    from modules import scripts

    def output_patch(out: Any, extra: dict) -> Any:
        return out * scale

    class FreeUForForge(scripts.Script):
        def title(self) -> str:
            return "FreeU Integrated"

        def show(self, is_img2img: bool):
            return scripts.AlwaysVisible

        def ui(self, is_img2img: bool) -> list:
            return [gr.Checkbox(False, label="Enabled")]

        def process_before_every_sampling(self, p: Any, enabled: bool = False, *args: Any, **kwargs: Any) -> None:
            if not enabled:
                return
            unet = p.sd_model.forge_objects.unet.clone()
            unet.set_model_attn2_output_patch(output_patch)
            p.sd_model.forge_objects.unet = unet

    return FreeUForForge
