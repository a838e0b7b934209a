"""The AUTOMATIC1111 1.10 seam: everything that knows the WebUI's callbacks, processing object and CFG batch layout.

Reading (A1111 1.10.1 ``modules/sd_samplers_cfg_denoiser.py``, ``CFGDenoiser.forward``): ``on_cfg_denoiser`` fires
before the UNet with the batched inputs (all conditional rows, one per ``AND`` sub-prompt per image, then one
unconditional row per image) and reads ``text_cond`` back; ``on_cfg_denoised`` fires after it with the raw outputs;
``on_cfg_after_cfg`` with the guided result, read back. k-diffusion samplers output the denoised ``x0`` (so
``eps = (x - x0) / sigma``), timestep samplers (DDIM, PLMS, UniPC) output ``eps`` with ``sigma`` the integer timestep.

* watch (every generation, unless switched off): at ``denoiser.step == 0`` of the first pass, Wen's ``d`` per image
  from the host's own CFG batch in ``on_cfg_denoised`` (no extra UNet pass with an empty negative prompt; one batch of
  empty-prompt rows otherwise, or when the host skipped its unconditional pass);
* mitigate (the "Memorization guard" script, or the setting): at ``step == 0`` in ``on_cfg_denoiser``, score the
  images with one extra CFG batch, run the strategy on the flagged ones and substitute their rows of ``text_cond``
  (a new tensor: the host caches conds across generations) for this and every later call; the attention edit stays
  hooked for the rest of sampling, the guidance schedule is applied in ``on_cfg_after_cfg``.

Callbacks are registered once at import and do nothing unless a :class:`Run` is attached to the processing object.
Any failure inside memguard is recorded and shown ("memguard could not score this image: ..."); it never fails or
alters the generation: every callback is shielded (nothing it raises reaches the host), a strategy that fails (out
of memory, say) is abandoned before it takes effect (the images are those of an unmitigated run) and its memory
released, and after any other fault the run stops intervening and only watches (:meth:`Run.fail`).

memguard keeps nothing of a generation once it is over: the :class:`Run` lives on the processing object and is
released by :func:`finish` (from the scripts' ``postprocess``, or from the host's ``p.close()`` when the generation
failed), module-level references to it are weak, and the hooks it installs on the model are removed at the end of
each batch and at :func:`finish` (and, should a host never close a failed job, at the next denoiser call).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__, prompt_syntax
from ..algebra import BatchLayout, eps_from_x0
from ..calibrate import CalibrationStore, CalibrationStoreError
from ..detect import image_scores, judge, row_scores, size_factor, wen_norm
from ..explain import explain, significance
from ..mitigate.attention import cross_attention_modules, rescaled_attention
from ..mitigate.base import Case, Intervention, still_above
from ..tokens import CONTEXT, Token, Tokenized
from . import settings

log = logging.getLogger("memguard")
ATTR = "_memguard_run"
# the run and CFG denoiser of the denoiser call in progress, as weak references (see the module docstring)
_active: dict[str, weakref.ref | None] = {"run": None, "denoiser": None}
# the hooks memguard has installed on the model now (the attention edit of the batch being sampled); None when there
# are none, so that the check at every denoiser call of every generation costs nothing
_hooks: list[contextlib.ExitStack | None] = [None]


# --- conditioning that may be a tensor (SD1/SD2) or a dict (SDXL: crossattn + vector) -------------------------------
def _take(cond: Any, index: list[int]) -> Any:
    if isinstance(cond, dict):
        return {k: v[index] for k, v in cond.items()}
    return cond[index]


def _prefix(context: torch.Tensor) -> int:
    """Rows an extension put before the 77-token chunks: ControlNet (``sd-webui-controlnet/scripts/hook.py``) marks
    every cond and uncond with one row (+-1024) that its UNet hook strips again; 0 without it."""
    return context.shape[-2] % CONTEXT


def _crossattn(cond: Any) -> torch.Tensor:
    """The cross-attention context of the prompt's chunks (``n x 77k x C``), any extension's prefix rows left out:
    the positions memguard's tokens, explanation and strategies index, as the UNet's attention layers see them."""
    context = cond["crossattn"] if isinstance(cond, dict) else cond
    return context[..., _prefix(context) :, :]


def _with_crossattn(cond: Any, tensor: torch.Tensor) -> Any:
    """``cond`` with its prompt context replaced by ``tensor`` (its prefix rows, if any, put back in front)."""
    context = cond["crossattn"] if isinstance(cond, dict) else cond
    n = _prefix(context)
    if n:
        tensor = torch.cat([context[: tensor.shape[0], :n].to(tensor.dtype), tensor], dim=-2)
    return {**cond, "crossattn": tensor} if isinstance(cond, dict) else tensor


def _cat(conds: list) -> Any:
    if isinstance(conds[0], dict):
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(conds)


def _condition(cond: Any, image_cond: torch.Tensor) -> dict:
    """The host's ``make_condition_dict`` for ordinary (non-edit, non-unCLIP) models."""
    if isinstance(cond, dict):
        return {**cond, "c_concat": [image_cond]}
    return {"c_crossattn": [cond], "c_concat": [image_cond]}


def _is_timesteps(denoiser: Any) -> bool:
    try:
        from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
    except ImportError:
        return False
    return isinstance(denoiser, CFGDenoiserTimesteps)


@dataclass
class Step0:
    """The host's first-step CFG inputs, kept for the matching ``on_cfg_denoised``."""

    x: torch.Tensor
    sigma: torch.Tensor
    image_cond: torch.Tensor
    text_cond: Any
    text_uncond: Any
    layout: BatchLayout
    timesteps: bool
    uncond_skipped: bool
    size_factor: float = 1.0  # detect.size_factor of this latent against the model's native one

    def judged(self, d: float | None) -> float | None:
        """Wen's ``d`` of this step's latent in the units scores are judged in (the native size's)."""
        return None if d is None else d * self.size_factor

    def raw(self, score: float) -> float:
        """The inverse of :meth:`judged`: a score in judged units as Wen's ``d`` of this latent."""
        return score / self.size_factor

    def to_eps(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return out if self.timesteps else eps_from_x0(x, out, sigma)


@dataclass
class Run:
    """memguard's state for one generation (one processing object); released at its end."""

    mode: str  # "watch", "mitigate", or "report" (memguard could not start: only say why)
    strategy_name: str = "auto"
    force: bool = False
    explain: bool = True
    threshold: float | None = None
    threshold_source: str = ""
    results: dict[int, dict] = field(default_factory=dict)
    step0: Step0 | None = None
    original_rows: dict[int, torch.Tensor] = field(default_factory=dict)
    mitigated_rows: dict[int, torch.Tensor] = field(default_factory=dict)
    guidance: dict[int, Any] = field(default_factory=dict)
    x_out: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    errors: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # what memguard did once, said in the panel and the log
    owner: Any = None  # weak reference to the processing object the run was started on (copies share the run)

    def reset_batch(self) -> None:
        release_hooks()
        self.step0, self.x_out, self.reference = None, None, None
        self.original_rows, self.mitigated_rows, self.guidance = {}, {}, {}

    def abandon_mitigation(self) -> None:
        """Stop intervening in this batch: conditioning rows, attention hooks and guidance schedules dropped."""
        release_hooks()
        self.original_rows, self.mitigated_rows, self.guidance = {}, {}, {}

    def close(self) -> None:
        self.reset_batch()
        self.sigma = None

    def fail(self, what: str, err: BaseException) -> None:
        """Record a failure (once) and stop changing the generation: after a fault memguard only watches."""
        message = f"{what}: {type(err).__name__}: {err}"
        if message not in self.errors:
            self.errors.append(message)
        if self.mode == "mitigate":
            self.mode = "watch"
        self.abandon_mitigation()


def release_hooks() -> None:
    """Remove every hook memguard has installed on the model."""
    stack, _hooks[0] = _hooks[0], None
    if stack is not None:
        stack.close()


def _hook_stack() -> contextlib.ExitStack:
    """Where memguard's hooks go, removed together by :func:`release_hooks`."""
    if _hooks[0] is None:
        _hooks[0] = contextlib.ExitStack()
    return _hooks[0]


def _current() -> tuple[Run | None, Any]:
    """The run and denoiser of the denoiser call in progress, if both are still alive."""
    run_ref, denoiser_ref = _active["run"], _active["denoiser"]
    run = run_ref() if run_ref is not None else None
    denoiser = denoiser_ref() if denoiser_ref is not None else None
    return (run, denoiser) if run is not None and denoiser is not None else (None, None)


def _set_current(run: Run | None, denoiser: Any) -> None:
    if run is None or denoiser is None:
        _active["run"], _active["denoiser"] = None, None
    else:
        _active["run"], _active["denoiser"] = weakref.ref(run), weakref.ref(denoiser)


def log_failure(what: str) -> None:
    """Log the exception being handled with its traceback as text: no log record keeps its frames (and tensors)."""
    log.error("memguard: %s failed\n%s", what, traceback.format_exc())


def free_memory() -> None:
    """Return the allocator's cached blocks after a failure such as running out of memory (CUDA only)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- per-generation lifecycle ----------------------------------------------------------------------------------------
def start(p: Any, mode: str, **kwargs: Any) -> Run:
    """Attach a :class:`Run` to ``p`` (the dropdown script's takes precedence over the watcher's)."""
    existing = getattr(p, ATTR, None)
    if existing is not None:
        return existing
    run = Run(mode=mode, owner=_weak(p), **kwargs)
    run.threshold, run.threshold_source = current_threshold()
    setattr(p, ATTR, run)
    _finish_on_close(p)
    return run


def start_failed(p: Any, what: str, err: BaseException) -> Run:
    """Attach a run that only reports that memguard could not start (``what``), unless ``p`` already has one."""
    run = getattr(p, ATTR, None)
    if run is None:
        run = Run(mode="report", owner=_weak(p))
        setattr(p, ATTR, run)
        _finish_on_close(p)
    run.fail(what, err)
    return run


def _finish_on_close(p: Any) -> None:
    """Finish also when the host closes the job (``closing(p)`` around txt2img, img2img and the API's jobs), which it
    does when the generation fails too, where no script's ``postprocess`` runs."""
    close = getattr(p, "close", None)
    if not callable(close):
        return

    def finish_and_close(*args: Any, **kwargs: Any) -> Any:
        finish(p)
        return close(*args, **kwargs)

    finish_and_close.memguard_finish = True
    with contextlib.suppress(AttributeError, TypeError):
        p.close = finish_and_close


def _weak(p: Any) -> Any:
    try:
        return weakref.ref(p)
    except TypeError:
        return lambda: p


def finish(p: Any) -> Run | None:
    """Detach and release the run: hooks removed, per-generation state dropped. A copy of the processing object
    (ADetailer calls every script's ``postprocess`` on ``copy(p)`` mid-generation) shares the run but does not own it:
    finishing a copy does nothing."""
    run = getattr(p, ATTR, None)
    if run is not None and run.owner is not None and run.owner() is not p:
        return None
    current, denoiser = _current()
    if current is not None and (current is run or getattr(denoiser, "p", None) is p):
        _set_current(None, None)
    if run is not None:
        with contextlib.suppress(AttributeError):
            delattr(p, ATTR)
    if getattr(getattr(p, "__dict__", {}).get("close"), "memguard_finish", False):
        del p.close
    release_hooks()
    if run is not None:
        run.close()
    return run


@contextlib.contextmanager
def host_queue() -> Iterator[None]:
    """Hold the host's GPU queue lock (``modules/call_queue.py: queue_lock``, held by ``wrap_gradio_gpu_call`` around
    every generation and by the host's own API; Forge keeps it): the Memorization tab and memguard's API use the
    model between generations, never beside one. No lock outside a host."""
    try:
        from modules.call_queue import queue_lock
    except ImportError:
        yield
        return
    with queue_lock:
        yield


def model_key(p: Any = None) -> str:
    """The calibration store's key: the loaded checkpoint's short hash, plus the extra networks (LoRA, LyCORIS,
    hypernetworks) active for ``p``'s batch with their arguments (``+lora:name:0.8``, sorted), which move the benign
    scores (``bench/adapter_shift.py``). Textual-inversion embeddings change only the prompts that use them."""
    from modules import shared

    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    key = str(getattr(info, "shorthash", None) or getattr(shared.sd_model, "sd_model_hash", None) or "unknown")
    data = None if getattr(p, "disable_extra_networks", False) else getattr(p, "extra_network_data", None)
    networks = sorted(f"{kind}:{':'.join(params.items)}" for kind, found in (data or {}).items() for params in found)
    return key + "".join(f"+{n}" for n in networks)


def store() -> CalibrationStore:
    try:
        from modules.paths import data_path
    except ImportError:
        from ..cli import default_store

        return CalibrationStore(default_store())
    return CalibrationStore(Path(data_path) / "memguard" / "calibration.json")


def current_threshold(p: Any = None) -> tuple[float | None, str]:
    """The manual threshold setting if set, else the calibration stored for the loaded checkpoint (with the extra
    networks of ``p``'s batch, see :func:`model_key`)."""
    manual = settings.get("memguard_threshold")
    if manual and manual > 0:
        return float(manual), "manual threshold (settings)"
    try:
        entry = store().get(model_key(p))
    except CalibrationStoreError as err:
        return None, str(err)
    if entry is None:
        return None, "this checkpoint is not calibrated yet (Memorization tab, Calibrate)"
    return entry.threshold, entry.describe()


# --- callbacks -------------------------------------------------------------------------------------------------------
def _guard(run: Run, what: str, fn, *args) -> None:
    try:
        fn(*args)
    except Exception as err:  # memguard must never fail the generation
        log_failure(what)
        run.fail(what, err)


def on_cfg_denoiser(params: Any) -> None:
    run = getattr(getattr(params.denoiser, "p", None), ATTR, None)
    try:
        _on_cfg_denoiser(params, run)
    except Exception as err:  # shielded: the host's tensors are only replaced once memguard's are complete
        log_failure("on_cfg_denoiser")
        if run is not None:
            run.fail("the first step" if params.denoiser.step == 0 else "a sampling step", err)


def _on_cfg_denoiser(params: Any, run: Run | None) -> None:
    denoiser = params.denoiser
    p = denoiser.p if run is not None else None
    _set_current(None, None)
    if run is None:
        release_hooks()  # left by a generation that failed before its end
        return
    if getattr(p, "is_hr_pass", False) or run.mode == "report":
        return
    _set_current(run, denoiser)
    run.sigma = params.sigma
    if denoiser.step == 0:
        run.reset_batch()
        _guard(run, "reading the first step", _record_step0, run, p, params)
        if run.mode == "mitigate" and run.step0 is not None:
            _guard(run, "mitigation", _mitigate, run, p, params)
    if run.mitigated_rows:
        _guard(run, "substituting the mitigated conditioning", _substitute, run, params)


def on_cfg_denoised(params: Any) -> None:
    try:
        _on_cfg_denoised(params)
    except Exception as err:  # shielded
        log_failure("on_cfg_denoised")
        _fail_current("reading the model's output", err)


def _on_cfg_denoised(params: Any) -> None:
    run, denoiser = _current()
    if run is None:
        return
    if run.guidance:
        run.x_out = params.x
    if denoiser.step == 0 and run.step0 is not None:
        if run.mode == "watch":
            _guard(run, "scoring", _watch, run, denoiser.p, params.x)
        elif run.reference is not None:
            _guard(run, "scoring the mitigated images", _score_after, run, denoiser.p, params.x)


def on_cfg_after_cfg(params: Any) -> None:
    try:
        _on_cfg_after_cfg(params)
    except Exception as err:  # shielded
        log_failure("on_cfg_after_cfg")
        _fail_current("guidance schedule", err)


def _on_cfg_after_cfg(params: Any) -> None:
    run, denoiser = _current()
    if run is not None and run.guidance and run.x_out is not None:
        _guard(run, "guidance schedule", _apply_guidance, run, denoiser, params)


def _fail_current(what: str, err: BaseException) -> None:
    run = _current()[0]
    if run is not None:
        run.fail(what, err)


def register() -> None:
    """Register the three CFG callbacks once (the host clears callbacks on every script reload)."""
    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="memguard")
    script_callbacks.on_cfg_denoised(on_cfg_denoised, name="memguard")
    script_callbacks.on_cfg_after_cfg(on_cfg_after_cfg, name="memguard")


# --- first step ------------------------------------------------------------------------------------------------------
def _layout(denoiser: Any) -> BatchLayout:
    from modules import prompt_parser

    cond = denoiser.sampler.sampler_extra_args["cond"]
    conds_list, _ = prompt_parser.reconstruct_multicond_batch(cond, denoiser.step)
    return BatchLayout.from_conds_list(conds_list)


def _uncond_skipped(p: Any, sigma: torch.Tensor) -> bool:
    """Whether the host will skip its unconditional pass at step 0 (``skip_early_cond``, or NGMS on all steps)."""
    skip_early = settings.host_opt("skip_early_cond", 0.0) or 0.0
    s_min = getattr(p, "s_min_uncond", 0.0) or 0.0
    ngms = bool(settings.host_opt("s_min_uncond_all", False)) and s_min > 0 and float(sigma[0]) < s_min
    return skip_early != 0 or ngms


def _record_step0(run: Run, p: Any, params: Any) -> None:
    from modules import shared

    layout = _layout(params.denoiser)
    native = native_latent(_unet(), shared.sd_model)
    run.step0 = Step0(
        x=params.x,
        sigma=params.sigma,
        image_cond=params.image_cond,
        text_cond=params.text_cond,
        text_uncond=params.text_uncond,
        layout=layout,
        timesteps=_is_timesteps(params.denoiser),
        uncond_skipped=_uncond_skipped(p, params.sigma),
        size_factor=size_factor(params.x.shape, native),
    )


def _empty_cond(batch: int) -> Any:
    """``e_empty``: the loaded model's conditioning of ``""``, repeated for ``batch`` rows."""
    from modules import shared

    cache = getattr(shared.sd_model, "_memguard_empty", None)
    if cache is None:
        cache = shared.sd_model.get_learned_conditioning([""])
        with contextlib.suppress(AttributeError):
            shared.sd_model._memguard_empty = cache
    return _take(cache, [0] * batch)


def _needs_reference(p: Any, step0: Step0) -> bool:
    negatives = getattr(p, "negative_prompts", None) or [getattr(p, "negative_prompt", "")]
    return step0.uncond_skipped or any(n.strip() for n in negatives)


def _eps_model(denoiser: Any, step0: Step0, rows: list[int], base_cond: Any):
    """``eps(x, crossattn)`` at the first step for the given batch rows (gradients allowed)."""
    sigma, image_cond = step0.sigma[rows], step0.image_cond[rows]
    base = _take(base_cond, list(range(len(rows)))) if base_cond is not None else None

    def eps(x: torch.Tensor, crossattn: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        cond = _with_crossattn(_take(base, list(range(n))), crossattn) if base is not None else crossattn
        out = denoiser.inner_model(x, sigma[:n], cond=_condition(cond, image_cond[:n]))
        return step0.to_eps(x, out, sigma[:n])

    return eps


def _reference(denoiser: Any, step0: Step0) -> torch.Tensor:
    """Empty-prompt eps on the unconditional rows' inputs: one extra batch of B rows."""
    lay = step0.layout
    rows = list(range(lay.n_cond, lay.n_cond + lay.batch))
    x, sigma = step0.x[rows], step0.sigma[rows]
    out = denoiser.inner_model(x, sigma, cond=_condition(_empty_cond(lay.batch), step0.image_cond[rows]))
    return step0.to_eps(x, out, sigma)


def _score(run: Run, eps: torch.Tensor, reference: torch.Tensor | None, extra: bool) -> list:
    step0 = run.step0
    rows = row_scores(eps, step0.layout, reference) * step0.size_factor
    per_image = image_scores(rows, step0.layout)
    subs = [[float(rows[r]) for r, _ in image_rows] for image_rows in step0.layout.cond_rows]
    return judge(per_image, run.threshold, extra_pass=extra, sub_scores=subs)


def _watch(run: Run, p: Any, x_out: torch.Tensor) -> None:
    step0 = run.step0
    denoiser = _current()[1]
    lay = step0.layout
    eps = step0.to_eps(step0.x[: x_out.shape[0]], x_out, step0.sigma[: x_out.shape[0]])
    extra = _needs_reference(p, step0)
    reference = _reference(denoiser, step0) if extra else None
    detections = _score(run, eps, reference, extra)
    ref = reference if reference is not None else eps[lay.n_cond : lay.n_cond + lay.batch]
    _record(run, p, denoiser, detections, ref, reports={})


def _record(run: Run, p: Any, denoiser: Any, detections: list, reference: torch.Tensor, reports: dict) -> None:
    """Store per-image results (with token significance for flagged images) under their index in the job."""
    step0 = run.step0
    offset = getattr(p, "iteration", 0) * getattr(p, "batch_size", step0.layout.batch)
    for i, det in enumerate(detections):
        words: list[dict] = []
        note = None
        if det.flagged and run.explain and _interrupted():
            note = "not explained: the generation was interrupted"
        elif det.flagged and run.explain:
            try:
                words, note = _explain_image(run, p, denoiser, i, reference[i : i + 1], det.sub_scores)
            except Exception as err:  # explanation is optional; the verdict stands
                log_failure(f"explaining image {i + 1}")
                note = f"could not explain the score: {type(err).__name__}: {err}"
        seeds = getattr(p, "seeds", None) or []
        prompts = getattr(p, "prompts", None) or []
        report = reports.get(i)
        mitigation = report.to_dict() if report is not None else None
        if mitigation is not None:
            for key in ("score_before", "score_after"):
                mitigation[key] = step0.judged(mitigation[key])
        run.results[offset + i] = {
            "index": offset + i,
            "seed": seeds[i] if i < len(seeds) else None,
            "prompt": _typed_prompt(p, i) if i < len(prompts) else "",
            "score": det.score,
            "d": None if det.score is None else step0.raw(det.score),
            "threshold": det.threshold,
            "threshold_source": run.threshold_source,
            "flagged": det.flagged,
            "extra_pass": det.extra_pass,
            "reason": det.reason,
            "sub_scores": det.sub_scores,
            "words": words,
            "note": note,
            "mitigation": mitigation,
        }


# --- token significance mapped to the typed prompt ----------------------------------------------------------------
def _typed_prompt(p: Any, i: int) -> str:
    """What image ``i``'s words are shown on: the prompt the user typed (``p.prompt``; styles add to it around it),
    or, where an extension rewrote the batch's prompts (Dynamic Prompts, wildcards: ``p.prompt`` is then the
    template), the prompt that was generated."""
    prompt = getattr(p, "prompt", "")
    if isinstance(prompt, list):
        prompt = prompt[min(i, len(prompt) - 1)] if prompt else ""
    prompts = getattr(p, "prompts", None) or []
    generated = prompts[i] if i < len(prompts) else None
    if generated is not None and EXTRA_NETWORK.sub("", prompt or "") not in generated:
        return generated
    return prompt or ""


# an extra network's tag (``<lora:name:0.8>``), which the host takes out of the batch's prompts (A1111 1.10
# ``modules/extra_networks.py: re_extra_net``)
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def _step0_text(p: Any, text: str) -> str:
    from modules import prompt_parser

    steps = getattr(p, "steps", 20) * getattr(p, "step_multiplier", 1)
    return prompt_parser.get_learned_conditioning_prompt_schedules([text], steps)[0][0][1]


def text_model() -> Any:
    """The host's prompt chunker (``process_texts``, ``id_end``): ``shared.sd_model.cond_stage_model`` on A1111; Forge
    sets that to None and chunks with ``text_processing_engine`` (SD1) or ``text_processing_engine_l`` (SDXL), the
    same API (``backend/text_processing/classic_engine.py``)."""
    from modules import shared

    for name in ("cond_stage_model", "text_processing_engine", "text_processing_engine_l"):
        found = getattr(shared.sd_model, name, None)
        if found is not None:
            return found
    raise RuntimeError("the loaded model has no prompt chunker (cond_stage_model or text_processing_engine)")


def host_tokens(text: str, typed: str) -> Tokenized:
    """Pieces of the encoded sub-prompt ``text`` with their conditioning positions and spans in the ``typed`` prompt,
    replayed from the host's own chunking (``process_texts``); token-level only if the replay disagrees."""

    from ..tokens import load_tokenizer

    chunks = text_model().process_texts([text])[0][0]
    host_ids = [list(c.tokens) for c in chunks]
    tokenizer = _tokenizer_cache.get("t") or _tokenizer_cache.setdefault("t", load_tokenizer())

    def tokenize(fragment: str):
        enc = tokenizer(fragment, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    emphasis = settings.host_opt("emphasis", "Original")
    fragments = (
        prompt_syntax.parse_attention(text)
        if emphasis != "None"
        else [prompt_syntax.Fragment(text, 1.0, list(range(len(text))))]
    )
    ids, pieces = prompt_syntax.replay_chunks(
        fragments,
        tokenize,
        comma_id=tokenizer.convert_tokens_to_ids(",</w>"),
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        backtrack=int(settings.host_opt("comma_padding_backtrack", 20) or 0),
    )
    if ids != host_ids:
        flat = [t for chunk in host_ids for t in chunk]
        names = tokenizer.convert_ids_to_tokens(flat)
        tokens = [
            Token(id=t, text=names[k].replace("</w>", ""), start=-1, end=-1, position=k)
            for k, t in enumerate(flat)
            if k % CONTEXT != 0 and t != tokenizer.eos_token_id
        ]
        return Tokenized(prompt=typed, ids=host_ids, tokens=tokens)
    where = prompt_syntax.align(typed, text)
    tokens = []
    for piece in pieces:
        if piece.start is None:
            continue
        mapped = [where[k] for k in range(piece.start, piece.end) if where[k] is not None]
        if mapped:
            start, end = min(mapped), max(mapped) + 1
            tokens.append(Token(id=piece.id, text=typed[start:end], start=start, end=end, position=piece.position))
    return Tokenized(prompt=typed, ids=host_ids, tokens=tokens)


def encoded_subprompt(p: Any, image: int, sub: int) -> str:
    """The text the host encoded for AND sub-prompt ``sub`` of image ``image`` at step 0."""
    return _step0_text(p, prompt_syntax.split_and(p.prompts[image])[sub][0])


_tokenizer_cache: dict[str, Any] = {}


def _explain_image(
    run: Run, p: Any, denoiser: Any, image: int, reference: torch.Tensor, sub_scores: list[float]
) -> tuple[list[dict], str | None]:
    """Token significance (``memguard.explain.significance``) for the image's strongest sub-prompt, as word dicts
    over the typed prompt, and the note saying when it came from occlusion instead of Wen's gradient."""
    step0 = run.step0
    image_rows = step0.layout.cond_rows[image]
    sub = max(range(len(image_rows)), key=lambda k: sub_scores[k] if k < len(sub_scores) else 0.0)
    row = image_rows[sub][0]
    cond = _take(_current_cond(run, step0), [row])

    def eps_model(x: torch.Tensor, crossattn: torch.Tensor) -> torch.Tensor:  # n copies of this image's row
        n = x.shape[0]
        return _eps_model(denoiser, step0, [row] * n, _take(cond, [0] * n))(x, crossattn)

    tokens = host_tokens(encoded_subprompt(p, image, sub), _typed_prompt(p, image))
    empty = _crossattn(_empty_cond(1)).to(step0.x.device)
    crossattn = _crossattn(cond).detach().clone()
    positions = [t.position for t in tokens.tokens]
    values, note = significance(eps_model, step0.x[[row]], crossattn, reference, empty, positions)
    return explain(tokens, values).to_dict()["words"], note


def _current_cond(run: Run, step0: Step0) -> Any:
    if not run.mitigated_rows:
        return step0.text_cond
    rows = {**run.mitigated_rows}
    tensor = _crossattn(step0.text_cond).clone()
    for r, value in rows.items():
        tensor[r] = value
    return _with_crossattn(step0.text_cond, tensor)


# --- mitigation ----------------------------------------------------------------------------------------------------
def _strategy(name: str, gradients: bool):
    from ..mitigate import Attention, Auto, Embedding, Guidance

    if name == "embedding" and not gradients:
        raise RuntimeError("embedding optimization needs gradients, which this host does not allow while sampling")
    return {
        "auto": lambda: Auto(gradients=gradients),
        "embedding": Embedding,
        "attention": Attention,
        "guidance": Guidance,
    }[name]()


def _keep_positions(chunks_ids: list[int], eos: int) -> list[int]:
    """BOS, prompt tokens and the first EOS of every 77-token chunk (Ren et al.'s padding mask keeps these)."""
    keep = []
    for k in range(0, len(chunks_ids), CONTEXT):
        chunk = chunks_ids[k : k + CONTEXT]
        first_eos = next((j for j in range(1, len(chunk)) if chunk[j] == eos), len(chunk) - 1)
        keep.extend(range(k, k + first_eos + 1))
    return keep


def _mitigate(run: Run, p: Any, params: Any) -> None:
    started = time.perf_counter()
    step0, denoiser = run.step0, params.denoiser
    lay = step0.layout
    cond_rows = list(range(lay.n_cond))
    eps_c = _eps_model(denoiser, step0, cond_rows, step0.text_cond)(step0.x[cond_rows], _crossattn(step0.text_cond))
    reference = _reference(denoiser, step0)
    detections = _score(run, torch.cat([eps_c, reference]), None, True)
    targets = [i for i, d in enumerate(detections) if d.scorable and (run.force or d.flagged)]
    reports: dict[int, Any] = {}
    failed = ""
    if targets:
        reports, failed = try_intervention(
            run, lambda: _intervene(run, p, params, targets, eps_c, reference, detections, started), {}
        )
    run.reference = reference
    _record(run, p, denoiser, detections, reference, reports)
    if failed:
        mark_unmitigated(run, p, targets, failed, lay.batch)


def try_intervention(run: Run, intervene: Callable[[], Any], fallback: Any) -> tuple[Any, str]:
    """``(intervene(), "")``; when it fails (out of memory, say) the mitigation is abandoned before it takes effect
    (the images are sampled as if memguard only watched), memory is freed, and ``(fallback, reason)`` returned."""
    try:
        return intervene(), ""
    except Exception as err:
        log_failure("mitigation")
        run.abandon_mitigation()
        failed = f"{type(err).__name__}: {err}"
    free_memory()  # outside the handler, once the traceback (and the optimizer's tensors) are gone
    return fallback, failed


def mark_unmitigated(run: Run, p: Any, targets: list[int], failed: str, batch: int) -> None:
    """Say in the recorded results of the batch's ``targets`` why they were generated unmitigated."""
    offset = getattr(p, "iteration", 0) * getattr(p, "batch_size", batch)
    for i in targets:
        run.results[offset + i]["mitigation_error"] = failed


def _intervene(
    run: Run, p: Any, params: Any, targets: list[int], eps_c: torch.Tensor, reference: torch.Tensor, detections, started
) -> dict[int, Any]:
    """Run the strategy on the target images' conditional rows and install it; their reports by image."""
    step0, denoiser = run.step0, params.denoiser
    lay = step0.layout
    rows = [r for i in targets for r, _ in lay.cond_rows[i]]
    owner = {r: i for i in targets for r, _ in lay.cond_rows[i]}
    case = Case(
        eps_model=_eps_model(denoiser, step0, rows, _take(step0.text_cond, rows)),
        x=step0.x[rows],
        cond=_crossattn(step0.text_cond)[rows],
        eps_empty=reference[[owner[r] for r in rows]],
        keep=[_keep_ids(p, owner[r], r, lay) for r in rows],
        bos=list(range(0, _crossattn(step0.text_cond).shape[1], CONTEXT)),
        target=step0.raw(run.threshold if run.threshold is not None else min(d.score for d in detections) / 2),
        scores=[float(wen_norm(eps_c[[r]] - reference[[owner[r]]])[0]) for r in rows],
        interrupted=_interrupted,
        model=_unet(),
        checkpoint=(),
    )
    intervention = _strategy(run.strategy_name, torch.is_inference_mode_enabled() is False)(case)
    _install(run, p, params, rows, case, intervention)
    reports: dict[int, Any] = {}
    for j, r in enumerate(rows):
        report = intervention.reports[j]
        report.unet_forwards += 2
        report.seconds = (time.perf_counter() - started) / len(rows)
        reports.setdefault(owner[r], report)
    return reports


def _score_after(run: Run, p: Any, x_out: torch.Tensor) -> None:
    """``d`` of the mitigated images, read from the host's own first-step batch (which used the new conditioning)."""
    step0 = run.step0
    lay = step0.layout
    eps = step0.to_eps(step0.x[: lay.n_cond], x_out[: lay.n_cond], step0.sigma[: lay.n_cond])
    after = image_scores(wen_norm(eps - run.reference[lay.image_of_rows()]), lay)
    offset = getattr(p, "iteration", 0) * getattr(p, "batch_size", lay.batch)
    for i in range(lay.batch):
        mitigation = run.results.get(offset + i, {}).get("mitigation")
        if mitigation is not None:
            mitigation["score_after"] = step0.judged(after[i])


def _keep_ids(p: Any, image: int, row: int, lay: BatchLayout) -> list[int]:

    sub = next(k for k, (r, _) in enumerate(lay.cond_rows[image]) if r == row)
    text = encoded_subprompt(p, image, sub)
    chunker = text_model()
    chunks = chunker.process_texts([text])[0][0]
    ids = [t for c in chunks for t in c.tokens]
    eos = getattr(chunker, "id_end", 49407)
    return _keep_positions(ids, eos)


def _install(run: Run, p: Any, params: Any, rows: list[int], case: Case, intervention: Intervention) -> None:
    """Make the intervention take effect from this call on: new cond rows, attention hooks, guidance schedules."""
    crossattn = _crossattn(run.step0.text_cond)
    for j, r in enumerate(rows):
        run.original_rows[r] = crossattn[r]
        run.mitigated_rows[r] = intervention.cond[j].to(crossattn.dtype)
    if intervention.attention is not None:
        lay = run.step0.layout
        _hook_stack().enter_context(
            rescaled_attention(
                cross_attention_modules(_unet()),
                rows,
                case.keep,
                intervention.attention,
                batch=lay.n_cond + lay.batch,
                bos=case.bos,
            )
        )
    if intervention.guidance:
        owner = {r: i for i, image_rows in enumerate(run.step0.layout.cond_rows) for r, _ in image_rows}
        for j, r in enumerate(rows):
            run.guidance.setdefault(owner[r], intervention.guidance[j])


def _substitute(run: Run, params: Any) -> None:
    """Replace the mitigated rows of ``text_cond`` in a new tensor, while the host still schedules the step-0 cond."""
    crossattn = _crossattn(params.text_cond)
    new = None
    for r, original in run.original_rows.items():
        if r < crossattn.shape[0] and crossattn[r].shape == original.shape and torch.equal(crossattn[r], original):
            new = crossattn.clone() if new is None else new
            new[r] = run.mitigated_rows[r]
    if new is not None:
        params.text_cond = _with_crossattn(params.text_cond, new)


def _apply_guidance(run: Run, denoiser: Any, params: Any) -> None:
    """Per-image guidance scale (Jain et al.): recombine the image's CFG pair with its own scale."""
    lay = run.step0.layout
    x_out = run.x_out
    if x_out.shape[0] != lay.n_cond + lay.batch:
        return
    denoised = params.x.clone()
    scale = float(getattr(denoiser.p, "cfg_scale", 7.5))
    total = max(getattr(denoiser, "total_steps", 1), 1)
    sigma = float(run.sigma[0])
    t = sigma if run.step0.timesteps else float(denoiser.inner_model.sigma_to_t(run.sigma[:1])[0])
    to_eps = 1.0 if run.step0.timesteps else 1.0 / sigma  # ||eps_c - eps_u|| = ||x0_c - x0_u|| / sigma
    for i, schedule in run.guidance.items():
        u = x_out[lay.n_cond + i]
        d_t = max(float((x_out[r] - u).float().norm()) for r, _ in lay.cond_rows[i]) * to_eps
        s = schedule.scale(denoiser.step, total, t, d_t, scale)
        denoised[i] = u + sum(w * s * (x_out[r] - u) for r, w in lay.cond_rows[i])
    params.x = denoised


def native_latent(unet: torch.nn.Module, sd_model: Any) -> tuple[int, int, int]:
    """The latent shape the loaded model was trained at (its ``x_T`` in the tab, the API and calibration; the size
    scores are normalized to): 64x64 (512 px), 96x96 for a v-prediction SD2 (768 px), 128x128 for SDXL (1024 px),
    or a test model's ``sample_size``."""
    config = getattr(unet, "config", None)
    if config is not None and hasattr(config, "sample_size"):  # a diffusers UNet (pixel-space test models)
        return int(config.in_channels), int(config.sample_size), int(config.sample_size)
    if getattr(sd_model, "is_sdxl", False):
        side = 128
    else:
        side = 96 if getattr(sd_model, "parameterization", "eps") == "v" else 64
    channels = getattr(unet, "in_channels", None) or getattr(config, "in_channels", None) or 4
    return int(channels), side, side


def _unet() -> torch.nn.Module:
    from modules import shared

    return shared.sd_model.model.diffusion_model


def _interrupted() -> bool:
    from modules import shared

    return bool(shared.state.interrupted or shared.state.skipped)


# --- reporting -----------------------------------------------------------------------------------------------------
def infotext(run: Run):
    """Per-image infotext values (the host calls them with the image's index within its batch)."""

    def value(key: str):
        def get(p=None, index=0, **_kw):
            try:
                offset = getattr(p, "iteration", 0) * getattr(p, "batch_size", 1)
                result = run.results.get(offset + index)
                return None if result is None else key_value(result, key)
            except Exception as err:  # shielded: the image keeps the rest of its infotext
                log_failure(f"writing {key} to the infotext")
                run.fail(f"writing {key} to the infotext", err)
                return None

        return get

    return {name: value(name) for name in INFOTEXT_KEYS}


INFOTEXT_KEYS = ("Memguard score", "Memguard verdict", "Memguard threshold", "Memguard mitigation")


def verdict(result: dict) -> str:
    """The image's verdict, one vocabulary for the infotext, the log, the audit log and the API: ``flagged``, ``ok``,
    ``uncalibrated`` (scored, no threshold to judge by) or ``unscored``."""
    if result["score"] is None:
        return "unscored"
    return "flagged" if result["flagged"] else ("uncalibrated" if result["threshold"] is None else "ok")


def key_value(result: dict, key: str) -> str | None:
    if key == "Memguard score":
        if result["score"] is None:
            return None
        tau = result["threshold"]
        return f"{result['score']:.4g}/{tau:.4g}" if tau is not None else f"{result['score']:.4g}"
    if key == "Memguard verdict":
        return verdict(result)
    if key == "Memguard threshold":  # where it came from, as one word the infotext needs no quotes for
        source = result.get("threshold_source") or ""
        if result["threshold"] is None or not source:
            return None
        origins = (
            ("manual threshold (request)", "request"),
            ("manual", "manual"),
            ("calibrated automatically", "auto"),
        )
        return next((word for start, word in origins if source.startswith(start)), "calibrated")
    if key == "Memguard mitigation":
        m = result.get("mitigation")
        if m is None:
            error = result.get("mitigation_error")
            return f"failed ({error.split(':')[0]})" if error else None
        above = " still above threshold" if still_above(m, result["threshold"]) else ""
        return f"{m['strategy']} {_fmt(m['score_before'])}->{_fmt(m['score_after'])}{above}"
    return None


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def summary_lines(run: Run) -> list[str]:
    """Readable lines for the generation's log (``p.comment``), plus one data line the panel script renders."""
    lines = [f"memguard: {n}" if not n.startswith("memguard") else n for n in run.notices]
    for result in sorted(run.results.values(), key=lambda r: r["index"]):
        if result["score"] is None:
            lines.append(f"memguard could not score image {result['index'] + 1}: {result['reason'] or 'unknown'}")
        elif result["flagged"]:
            words = ", ".join(w["text"] for w in sorted(result["words"], key=lambda w: -w["value"])[:3])
            line = (
                f"memguard: image {result['index'] + 1} (seed {result['seed']}) may reproduce a training image: "
                f"score {result['score']:.3g} > threshold {result['threshold']:.3g}"
            )
            if words:
                line += f"; driven by: {words}"
            m = result.get("mitigation")
            if m is not None and still_above(m, result["threshold"]):
                line += (
                    f"; mitigation ({m['strategy']}) did not bring it below the threshold: "
                    f"{_fmt(m['score_before'])} -> {_fmt(m['score_after'])}; edit those words"
                )
            elif m is not None:
                line += f"; mitigated ({m['strategy']}): {_fmt(m['score_before'])} -> {_fmt(m['score_after'])}"
            elif result.get("mitigation_error"):
                line += f"; memguard could not mitigate it ({result['mitigation_error']}): generated unmitigated"
            else:
                line += "; edit those words, or rerun with the Memorization guard script"
            lines.append(line)
    if run.results and all(r["threshold"] is None for r in run.results.values()):
        lines.append(f"memguard: scores recorded but not judged: {run.threshold_source}")
    for error in run.errors:
        lines.append(f"memguard could not score this generation: {error}")
    lines.append("memguard-data:" + json.dumps(payload(run), ensure_ascii=True, separators=(",", ":")))
    return lines


def payload(run: Run) -> dict:
    """The generation's results as data (the panel's data line; the API's ``info``): per image, in order, with its
    verdict; the faults; where the threshold came from."""
    results = [{**r, "verdict": verdict(r)} for r in sorted(run.results.values(), key=lambda r: r["index"])]
    return {
        "version": __version__,
        "results": results,
        "errors": run.errors,
        "source": run.threshold_source,
        "notices": run.notices,
    }
