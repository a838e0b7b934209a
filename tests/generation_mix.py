"""A mixed workload of WebUI generations through the fake A1111 host, and a census of what memguard leaves behind.

Shared by the soak (``bench/soak.py``: 200 generations, RSS reported) and its reduced version in
``tests/test_leaks.py``. Job ``k`` is kind ``KINDS[k % len(KINDS)]``: watch-only unflagged images, flagged images
mitigated with each strategy (through the Memorization guard script or the ``mitigate`` setting), a generation
interrupted during the embedding optimization or during sampling, one skipped, and one that fails (the host's UNet
raises mid-sampling while memguard's attention edit is hooked in); batch sizes 1 and 2, hires fix on some.

Flagged or not is forced with the manual threshold setting (1e-6 flags every image, 1e6 none).
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

GUARD = "Memorization guard"
FLAG_ALL, FLAG_NONE = 1e-6, 1e6


@dataclass(frozen=True)
class Kind:
    name: str
    flagged: bool = False
    strategy: str | None = None  # through the Memorization guard script
    setting: str | None = None  # memguard_action = "mitigate" with this memguard_strategy (the watcher's path)
    batch: int = 1
    hires: bool = False
    sampler: str = "Euler"
    fault: str | None = None  # "interrupt-optimization", "interrupt-sampling", "skip-sampling", "fail-sampling"
    fields: dict = field(default_factory=dict)


KINDS = (
    Kind("watch, unflagged", batch=1),
    Kind("watch, unflagged, hires", batch=2, hires=True, sampler="Euler a"),
    Kind("guard embedding", flagged=True, strategy="embedding", batch=2),
    Kind("guard attention, hires", flagged=True, strategy="attention", hires=True),
    Kind("guard guidance", flagged=True, strategy="guidance", batch=2, sampler="Euler a"),
    Kind("guard auto", flagged=True, strategy="auto", sampler="DDIM"),
    Kind("setting auto", flagged=True, setting="auto", batch=2, sampler="DPM++ 2M"),
    Kind("interrupted in optimization", flagged=True, strategy="embedding", fault="interrupt-optimization"),
    Kind("interrupted in sampling", flagged=True, setting="attention", batch=2, fault="interrupt-sampling"),
    Kind("skipped in sampling", flagged=True, strategy="guidance", fault="skip-sampling", fields={"n_iter": 2}),
    Kind("failing in sampling", flagged=True, setting="attention", batch=2, fault="fail-sampling"),
    Kind("watch, flagged", flagged=True, batch=1, hires=True),
)


class InjectedFault(RuntimeError):
    """The host failing mid-generation (stands for any error in the host or another extension)."""


def _unet() -> torch.nn.Module:
    from modules import shared

    return shared.sd_model.model.diffusion_model


def _fault_hook(fault: str) -> Callable:
    """A forward pre-hook on the UNet that interrupts, skips or fails the generation at a chosen UNet call."""
    from modules import shared

    calls = {"grad": 0, "sampling": 0}

    def hook(_module, _args):
        if torch.is_grad_enabled():  # memguard's embedding optimization (the host samples under no_grad)
            calls["grad"] += 1
            if fault == "interrupt-optimization" and calls["grad"] == 2:
                shared.state.interrupt()
            return
        calls["sampling"] += 1
        if calls["sampling"] == 4:  # past memguard's step-0 passes: the host's second or third step
            if fault == "interrupt-sampling":
                shared.state.interrupt()
            elif fault == "skip-sampling":
                shared.state.skip()
            elif fault == "fail-sampling":
                raise InjectedFault("injected failure in the host's UNet")

    return hook


def run_job(host, k: int, steps: int = 3) -> str:
    """Run job ``k`` of the mix; returns its outcome ("ok", "failed")."""
    from modules import errors, scripts, shared

    kind = KINDS[k % len(KINDS)]
    side = int(_unet().config.sample_size)
    shared.opts.memguard_threshold = FLAG_ALL if kind.flagged else FLAG_NONE
    shared.opts.memguard_action = "mitigate" if kind.setting else "warn"
    shared.opts.memguard_strategy = kind.setting or "auto"
    script_args = {}
    if kind.strategy:
        guard = next(s for s in scripts.scripts_txt2img.selectable_scripts if s.title() == GUARD)
        script_args = {guard.args_from: kind.strategy}
    hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.5) if kind.hires else {}
    p = host.txt2img_processing(
        GUARD if kind.strategy else None,
        script_args=script_args,
        prompt=f"a red circle number {k}",
        negative_prompt="blurry" if k % 3 == 0 else "",
        steps=steps,
        batch_size=kind.batch,
        width=side,
        height=side,
        seed=k,
        sampler_name=kind.sampler,
        **hires,
        **kind.fields,
    )
    handle = _unet().register_forward_pre_hook(_fault_hook(kind.fault)) if kind.fault else None
    try:
        host.run_txt2img(p)
        return "ok"
    except InjectedFault:
        return "failed"
    finally:
        if handle is not None:
            handle.remove()
        errors.clear()  # the double keeps reported exceptions (and their frames) for tests; the host does not


def _memguards(functions) -> int:
    return sum(getattr(fn, "__module__", "").startswith("memguard") for fn in functions)


def model_hooks() -> int:
    """memguard's hooks and patched ``forward`` methods on every module of the loaded model (UNet, text encoder)."""
    from modules import shared

    count = 0
    for m in shared.sd_model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, getattr(m, "_backward_pre_hooks", {})):
            count += _memguards(hooks.values())
        count += _memguards([m.__dict__.get("forward")])
    return count


def rss_kib() -> int:
    """Resident set size of this process (``/proc/self/statm``), in KiB."""
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def census() -> dict:
    """What memguard and the generations left behind (after a full garbage collection)."""
    from modules import script_callbacks, shared
    from modules.processing import StableDiffusionProcessing

    from memguard.hosts import a1111

    gc.collect()
    with warnings.catch_warnings():  # isinstance on every object touches deprecated torch.distributed names
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, torch.Tensor | a1111.Run | StableDiffusionProcessing)]
    return {
        "model hooks": model_hooks(),
        "callbacks": sum(script_callbacks.count_callbacks().values()),
        "memguard callbacks": sum(
            1 for _, cbs in script_callbacks.enumerate_callbacks() for c in cbs if _memguards([c.callback])
        ),
        "runs alive": sum(isinstance(o, a1111.Run) for o in objects),
        "processing objects alive": sum(isinstance(o, StableDiffusionProcessing) for o in objects),
        "processing objects with a run": sum(
            isinstance(o, StableDiffusionProcessing) and a1111.ATTR in vars(o) for o in objects
        ),
        "current run": a1111.PROCESS.current()[0] is not None,
        "live tensors": sum(isinstance(o, torch.Tensor) for o in objects),
        "empty-prompt cache": int(getattr(shared.sd_model, "_memguard_empty", None) is not None),
        "tokenizer cache": len(a1111.PROCESS.tokenizers),
    }
