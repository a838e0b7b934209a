"""Doubles of the extensions WebUI users run beside memguard, reduced to what they do to the processing object, the
conditioning and the script hooks (re-implemented from their source; no code copied). Each builder returns a
``Script`` class for ``fakehost.boot(..., script_classes=[...])`` and must be called after the double is installed.

* ControlNet (``Mikubill/sd-webui-controlnet``, ``scripts/hook.py``): ``UnetHook.hook`` wraps ``p.sample`` so that
  every cond and uncond (``conditioning``, ``unconditional_conditioning``, ``hr_c``, ``hr_uc``) gets one extra row in
  front of its 77-token chunks, ``+1024`` for a cond and ``-1024`` for an uncond (``mark_prompt_context``), and wraps
  the UNet's forward to strip that row again when every row of the call is marked (``unmark_prompt_context``); an
  unmarked call is left as it is. Its control residuals are left out.
* ADetailer (``Bing-su/adetailer``, ``scripts/!adetailer.py: postprocess_image``): for the first image of a batch it
  calls every always-on script's ``postprocess`` on ``copy(p)`` with an empty ``Processed``; for the last image of a
  batch, ``before_process`` and ``process`` on another ``copy(p)`` (``aaaaaa/p_method.py``). Its inpainting passes
  are left out.
* Dynamic Prompts (``adieyal/sd-dynamic-prompts``, ``sd_dynamic_prompts/dynamic_prompting.py: process``): takes the
  template from ``p.all_prompts[0]`` (styles already applied), writes the generated prompts to ``p.all_prompts`` and
  the template to ``p.prompt``. Variants ``{a|b|c}`` are chosen by image index here (its random sampler, seeded).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch

MARK = 1024.0


def _marked(context: torch.Tensor) -> bool:
    """``prompt_context_is_marked``: the first row of every prompt is +-1024."""
    return float((context[..., 0, :].abs() - MARK).abs().mean()) < 1e-3


def make_controlnet() -> type:
    from modules import prompt_parser, scripts

    def mark(x: Any, positive: bool) -> Any:
        if isinstance(x, list):
            for i in range(len(x)):
                x[i] = mark(x[i], positive)
            return x
        if isinstance(x, prompt_parser.MulticondLearnedConditioning):
            x.batch = mark(x.batch, positive)
            return x
        if isinstance(x, prompt_parser.ComposableScheduledPromptConditioning):
            x.schedules = mark(x.schedules, positive)
            return x
        if isinstance(x, prompt_parser.ScheduledPromptConditioning):
            cond = x.cond["crossattn"] if isinstance(x.cond, dict) else x.cond
            if _marked(cond):
                return x
            cond = torch.cat([torch.zeros_like(cond[:1]) + (MARK if positive else -MARK), cond], dim=0)
            new = {**x.cond, "crossattn": cond} if isinstance(x.cond, dict) else cond
            return prompt_parser.ScheduledPromptConditioning(end_at_step=x.end_at_step, cond=new)
        return x

    class ControlNet(scripts.Script):
        calls = 0  # UNet calls whose context carried the marker (the tests check the hook really ran)

        def title(self) -> str:
            return "ControlNet"

        def show(self, is_img2img: bool):
            return scripts.AlwaysVisible

        def ui(self, is_img2img: bool) -> list:
            import gradio as gr

            return [gr.Checkbox(False, label="Enable")]

        def process(self, p: Any, enabled: bool = False, *args: Any) -> None:
            if not enabled:
                return
            sample = p.sample

            def process_sample(*a: Any, **kw: Any) -> Any:
                mark(kw.get("conditioning", []), positive=True)
                mark(kw.get("unconditional_conditioning", []), positive=False)
                mark(getattr(p, "hr_c", []), positive=True)
                mark(getattr(p, "hr_uc", []), positive=False)
                return sample(*a, **kw)

            p.sample = process_sample
            unet = p.sd_model.model.diffusion_model
            forward = unet.forward

            def hooked(x: torch.Tensor, t: Any, encoder_hidden_states: torch.Tensor | None = None, **kw: Any) -> Any:
                if encoder_hidden_states is not None and _marked(encoder_hidden_states):
                    ControlNet.calls += 1
                    encoder_hidden_states = encoder_hidden_states[:, 1:]
                return forward(x, t, encoder_hidden_states=encoder_hidden_states, **kw)

            unet.forward = hooked
            p._controlnet_unet = unet

        def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
            unet = getattr(p, "_controlnet_unet", None)
            if unet is not None:
                del unet.forward
                del p._controlnet_unet

    return ControlNet


def make_adetailer() -> type:
    from modules import processing, scripts

    class ADetailer(scripts.Script):
        def title(self) -> str:
            return "ADetailer"

        def show(self, is_img2img: bool):
            return scripts.AlwaysVisible

        def ui(self, is_img2img: bool) -> list:
            import gradio as gr

            return [gr.Checkbox(False, label="Enable ADetailer")]

        def postprocess_image(self, p: Any, pp: Any, enabled: bool = False, *args: Any) -> None:
            if not enabled or p.scripts is None:
                return
            if p.batch_index == 0:
                p.scripts.postprocess(copy.copy(p), processing.Processed(p, [], p.seed, ""))
            if p.batch_index == p.batch_size - 1:
                copy_p = copy.copy(p)
                p.scripts.before_process(copy_p)
                p.scripts.process(copy_p)

    return ADetailer


def make_dynamic_prompts() -> type:
    from modules import scripts

    variants = re.compile(r"\{([^{}]*)\}")

    class DynamicPrompts(scripts.Script):
        def title(self) -> str:
            return "Dynamic Prompts"

        def show(self, is_img2img: bool):
            return scripts.AlwaysVisible

        def ui(self, is_img2img: bool) -> list:
            import gradio as gr

            return [gr.Checkbox(False, label="Dynamic Prompts enabled")]

        def process(self, p: Any, enabled: bool = False, *args: Any) -> None:
            if not enabled:
                return
            template = p.all_prompts[0] if p.all_prompts else p.prompt
            n = p.n_iter * p.batch_size

            def generated(i: int) -> str:
                return variants.sub(lambda m: m.group(1).split("|")[i % len(m.group(1).split("|"))], template)

            p.all_prompts = [generated(i) for i in range(n)]
            p.prompt_for_display = template
            p.prompt = template

    return DynamicPrompts
