"""The Stable Diffusion WebUI Forge seam (``lllyasviel/stable-diffusion-webui-forge``, Forge 2 on WebUI 1.10).

Reading (Forge's source; behaviour mirrored, no code taken):

* ``modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward`` passes the *unbatched* ``x`` (one row per image) to
  ``on_cfg_denoiser`` (read back), never fires ``on_cfg_denoised``, and hands over to
  ``backend/sampling/sampling_function.py: sampling_function``, which reads ``forge_objects.unet`` on every call;
* ``sampling_function_inner`` gets the cond and uncond **x0 predictions** from ``calc_cond_uncond_batch`` (the AND
  parts of an image averaged by weight; the uncond left out, as zeros, when the scale is 1), combines them, then
  calls each ``model_options["sampler_post_cfg_function"]`` with ``{denoised, cond_denoised, uncond_denoised, sigma,
  input, model, ...}`` and samples on with what it returns. With ``x = x0 + sigma * eps``,
  ``eps_c - eps_u = (uncond_denoised - cond_denoised) / sigma``;
* ``modules/processing.py: process_images_inner`` resets ``sd_model.forge_objects`` before every sampling pass and
  then calls AlwaysVisible scripts' ``process_before_every_sampling``: patches go on a ``clone()`` of
  ``forge_objects.unet`` put back there (the pattern of ``extensions-builtin/sd_forge_sag``) and vanish with the pass;
* sampling runs under ``torch.inference_mode()``; ``sd_model.cond_stage_model`` is None (prompts are chunked by
  ``text_processing_engine``, the same ``process_texts`` API).

What memguard does (only while a :class:`a1111.Run` is attached to the processing object, as on A1111):

* watch: the companion's ``process_before_every_sampling`` (:func:`install`) adds a post-CFG function to a clone of
  the pass's UNet patcher. At the first step of the first pass it scores every image from the host's own two
  predictions and returns ``denoised`` untouched. Extra UNet work only where the host's uncond is not the empty
  prompt: one batch of empty-prompt rows when the negative prompt is set or the host skipped its uncond (scale 1 at
  the first step: skip-early CFG, NGMS, CFG 1), one batch of cond rows when a prompt has AND parts (Forge averaged
  them). ``disable_cfg1_optimization`` is left alone: forcing the uncond would cost a pass at every scale-1 step and
  change the watched images.
* mitigate: at the same point the flagged images get the strategy's intervention, their first-step prediction is
  recomputed with it in force (one extra batch of their cond rows; none for a guidance schedule alone) and swapped
  into ``denoised``; later steps:
  - attention (Ren et al.): ``attn2`` *replace* patches on the clone edit the cond rows of the flagged images, found
    from ``extra_options["cond_or_uncond"]``: on the projected keys, BOS times ``C`` and the padding keys dropped,
    exactly; every other row is the host's attention (or the replace patch that was there). An ``attn2_patch`` could
    scale BOS (``to_k`` has no bias) but not drop keys for some rows of the call only, hence the replace patch;
  - guidance schedule (Jain et al.): the post-CFG function moves each flagged image to ``u + s_i (c - u)``, with the
    host's own scale (read off ``denoised``) wherever the schedule has handed over;
  - embedding (Wen et al.) needs gradients: tried with ``torch.inference_mode(False)`` and ``enable_grad`` on cloned
    inputs; when Forge's weights are inference tensors it raises, and the attention edit (``auto``: attention and
    guidance) is used instead, with a note saying embedding optimization is unavailable on Forge. Optimized rows
    are substituted into ``CFGDenoiserParams.text_cond`` from ``on_cfg_denoiser`` (``a1111._substitute``).

Scoring, verdicts, token significance, results, infotext and reports are the A1111 seam's, fed with Forge's
predictions in A1111's batch layout (``a1111.Step0``) and a denoiser stand-in (:class:`_Model`) that calls Forge's
``KModel.apply_model`` (so memguard's own passes see the patcher's transformer options, but no ControlNet residuals
and no ``model_function_wrapper``). Failures are recorded and shown; they never fail or alter the generation.
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from ..algebra import BatchLayout, eps_from_x0
from ..detect import size_factor, wen_norm
from ..mitigate.base import AttentionEdit, Case, Intervention
from ..tokens import CONTEXT
from . import a1111

log = logging.getLogger("memguard")
PASS_ATTR = "_memguard_forge_pass"
_live: weakref.WeakValueDictionary[int, Pass] = weakref.WeakValueDictionary()
_keys = itertools.count(1)


def is_forge() -> bool:
    """Whether the WebUI is Forge: its ``modules_forge`` package imports (probed, never read from a version)."""
    try:
        import modules_forge  # noqa: F401
    except ImportError:
        return False
    return True


def register() -> None:
    """Register the one CFG callback Forge needs (mitigated conditioning); call once at script load."""
    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="memguard")


def on_cfg_denoiser(params: Any) -> None:
    """Give the mitigated images their optimized conditioning rows (Forge reads ``text_cond`` back)."""
    p = getattr(params.denoiser, "p", None)
    run = getattr(p, a1111.ATTR, None)
    if run is None or not run.mitigated_rows or getattr(p, "is_hr_pass", False):
        return
    a1111._guard(run, "substituting the mitigated conditioning", a1111._substitute, run, params)


def install(p: Any) -> None:
    """``process_before_every_sampling`` body: memguard's post-CFG function on a clone of the pass's UNet patcher."""
    run = getattr(p, a1111.ATTR, None)
    if run is None or run.mode == "report" or getattr(p, "is_hr_pass", False):
        return
    a1111._guard(run, "preparing Forge's sampler", _install, run, p)


def _install(run: a1111.Run, p: Any) -> None:
    objects = getattr(p.sd_model, "forge_objects", None)
    if objects is None:
        raise RuntimeError("the loaded model has no forge_objects; this is not Forge's sampling path")
    run.reset_batch()
    state = Pass(run=run, p=p, unet=objects.unet.clone(), base=objects.unet)
    _live[state.key] = state
    state.unet.set_model_sampler_post_cfg_function(Hook(state.key, "post_cfg"))
    objects.unet = state.unet
    setattr(p, PASS_ATTR, state)


def release(p: Any) -> None:
    """Put back the UNet patcher memguard replaced (Forge would reset it before its next pass anyway)."""
    state = getattr(p, PASS_ATTR, None)
    if state is None or state.p is not p:  # nothing, or a copy of the processing object (ADetailer's postprocess)
        return
    delattr(p, PASS_ATTR)
    objects = getattr(p.sd_model, "forge_objects", None)
    if objects is not None and objects.unet is state.unet:
        objects.unet = state.base


@dataclass(frozen=True)
class Hook:
    """What memguard leaves in Forge's model options: the key of a live :class:`Pass` and the name of its method.

    Forge's ``UnetPatcher.clone()`` deep-copies the model options (``backend/patcher/unet.py``), and FreeU, SAG, PAG,
    ControlNet and most other extensions clone the patcher memguard's clone has become; so the hook holds neither the
    pass nor the run nor the processing object (locks, models), only a key. A copy that outlives its pass (its
    generation ended) finds nothing and steps aside: the host's ``denoised`` or plain attention.
    """

    key: int
    name: str

    def __call__(self, *args: Any) -> Any:
        state = _live.get(self.key)
        if state is not None:
            return getattr(state, self.name)(*args)
        if self.name == "post_cfg":
            return args[0]["denoised"]
        q, k, v, extra = args
        return attention_function()(q, k, v, extra["n_heads"])


def schedule(model: Any) -> Any:
    """The model's noise schedule (``timestep(sigma)``, ``sigma(t)``): Forge's ``KModel.predictor``, reForge's
    ComfyUI-style ``BaseModel.model_sampling``."""
    found = getattr(model, "predictor", None)
    return found if found is not None else model.model_sampling


def attention_function() -> Any:
    """The host's attention over projected ``q, k, v`` with ``heads`` heads: Forge's
    ``backend.attention.attention_function``, or reForge's ``ldm_patched.ldm.modules.attention.optimized_attention``
    (reForge has ``modules_forge`` but ComfyUI's ``ldm_patched`` backend; same call)."""
    try:
        from backend.attention import attention_function as found
    except ImportError:
        from ldm_patched.ldm.modules.attention import optimized_attention as found
    return found


def _clone(value: Any) -> Any:
    """A normal (non-inference) copy of a tensor or a dict of tensors, made outside inference mode."""
    if isinstance(value, dict):
        return {k: v.clone() for k, v in value.items()}
    return value.clone()


def _host_scale(denoised: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> float:
    """The guidance scale ``k`` the host applied to one image, read off ``denoised = u + k (c - u)`` (this covers the
    hires scale, skip-early CFG, NGMS and AND weights alike). 1 when the host skipped the uncond (zeros)."""
    delta = (cond - uncond).double().flatten()
    norm = float(delta @ delta)
    return float((denoised - uncond).double().flatten() @ delta) / norm if norm > 0 else 1.0


def _d(cond: torch.Tensor, uncond: torch.Tensor, sigma: torch.Tensor) -> float:
    """``||eps_c - eps_u||`` of one image from its two x0 predictions."""
    return float((cond - uncond).float().norm() / sigma)


@dataclass
class _Model:
    """What a1111's helpers call a denoiser: ``inner_model(x, sigma, cond=...)`` is Forge's x0 prediction
    (``backend/modules/k_model.py: KModel.apply_model``) with the transformer options of ``unet``, the patcher that
    samples (other extensions' patches included), the rows marked as one cond (``role`` 0) or uncond (1) chunk of the
    images ``images`` (so memguard's attention edit finds its rows)."""

    unet: Any
    images: list[int] = field(default_factory=list)
    role: int = 0

    def inner_model(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if "c_crossattn" in cond:
            crossattn = cond["c_crossattn"][0]
        else:  # SDXL: {"crossattn", "vector"}
            crossattn, kwargs["y"] = cond["crossattn"], cond["vector"]
        image_cond = (cond.get("c_concat") or [None])[0]
        if torch.is_tensor(image_cond) and image_cond.shape[0] == x.shape[0] and image_cond.shape[2:] == x.shape[2:]:
            kwargs["c_concat"] = image_cond
        n = x.shape[0]
        options = dict(self.unet.model_options.get("transformer_options", {}))
        options.update(
            cond_or_uncond=[self.role],
            sigmas=sigma,
            cond_indices=list(range(n)) if self.role == 0 else [],
            uncond_indices=[] if self.role == 0 else list(range(n)),
            memguard_images=self.images,
        )
        return self.unet.model.apply_model(x, sigma, c_crossattn=crossattn, transformer_options=options, **kwargs)


@dataclass
class Pass:
    """memguard on one sampling pass: the cloned patcher (``unet``), the one it replaced (``base``), the attention
    edit with each edited image's kept key positions, and the ``attn2`` replace patches it chains to. Registered in
    ``_live`` under ``key`` for as long as the processing object holds it (see :class:`Hook`)."""

    run: a1111.Run
    p: Any
    unet: Any
    base: Any
    edit: AttentionEdit | None = None
    keep: dict[int, list[int]] = field(default_factory=dict)
    previous: dict | None = None
    key: int = field(default_factory=lambda: next(_keys))

    @property
    def sampling(self) -> Any:
        """The patcher Forge samples with (``sampling_function`` reads ``forge_objects.unet`` at every call): memguard's
        clone, or the clone another extension made of it after memguard's ``install`` (FreeU, ControlNet, ...)."""
        objects = getattr(self.p.sd_model, "forge_objects", None)
        return getattr(objects, "unet", None) or self.unet

    def model(self, images: list[int] = (), role: int = 0) -> _Model:
        return _Model(self.sampling, list(images), role)

    # --- the post-CFG function -----------------------------------------------------------------------------------
    def post_cfg(self, args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        run, p = self.run, self.p
        denoiser = getattr(getattr(p, "sampler", None), "model_wrap_cfg", None)
        if getattr(p, a1111.ATTR, None) is not run or denoiser is None or getattr(p, "is_hr_pass", False):
            return denoised
        what = ("scoring" if run.mode == "watch" else "mitigation") if denoiser.step == 0 else "guidance schedule"
        try:
            if denoiser.step == 0:
                with torch.inference_mode(False), torch.no_grad():
                    return self._first_step(denoiser, args)
            return self._guide(denoiser, args) if run.guidance else denoised
        except Exception as err:  # memguard must never fail the generation; after a fault it only watches
            a1111.log_failure(what)
            run.fail(what, err)
            self.edit = None
            return denoised

    def _first_step(self, denoiser: Any, args: dict) -> torch.Tensor:
        run, p = self.run, self.p
        x, sigma = _clone(args["input"]), _clone(args["sigma"])
        cond_x0, uncond_x0 = _clone(args["cond_denoised"]), _clone(args["uncond_denoised"])
        step0 = run.step0 = self._step0(denoiser, x, sigma, uncond_x0)
        lay = step0.layout
        eps_u = eps_from_x0(x, uncond_x0, sigma)
        if lay.n_cond == lay.batch:
            eps_c = eps_from_x0(x, cond_x0, sigma)
        else:  # AND: Forge averaged each image's parts; score every part (one batch of cond rows)
            rows = list(range(lay.n_cond))
            eps_model = a1111._eps_model(self.model(), step0, rows, step0.text_cond)
            eps_c = eps_model(step0.x[rows], a1111._crossattn(step0.text_cond))
        extra = a1111._needs_reference(p, step0)
        reference = a1111._reference(self.model(role=1), step0) if extra else eps_u
        detections = a1111._score(run, torch.cat([eps_c, eps_u]), reference if extra else None, extra)
        targets = [i for i, d in enumerate(detections) if d.scorable and (run.force or d.flagged)]
        denoised, reports, failed = args["denoised"], {}, ""
        if run.mode == "mitigate" and targets:
            extra_rows = int(extra) + int(lay.n_cond != lay.batch)  # UNet rows this took per image beyond the host's
            (denoised, reports), failed = a1111.try_intervention(
                run,
                lambda: self._mitigate(denoiser, args, targets, detections, eps_c, reference, extra_rows),
                (denoised, reports),
            )
            if failed:
                self.edit = None
        run.reference = reference
        a1111._record(run, p, self.model(), detections, reference, reports)
        if failed:
            a1111.mark_unmitigated(run, p, targets, failed, lay.batch)
        return denoised

    def _step0(self, denoiser: Any, x: torch.Tensor, sigma: torch.Tensor, uncond_x0: torch.Tensor) -> a1111.Step0:
        """The first step in A1111's batch layout (cond rows per AND part, then one uncond row per image)."""
        from modules import prompt_parser

        extra = denoiser.sampler.sampler_extra_args
        conds_list, text_cond = prompt_parser.reconstruct_multicond_batch(extra["cond"], denoiser.step)
        layout = BatchLayout.from_conds_list(conds_list)
        rows = layout.image_of_rows() + list(range(layout.batch))
        image_cond = extra.get("image_cond")
        image_cond = _clone(image_cond) if torch.is_tensor(image_cond) else x.new_zeros(x.shape[0], 5, 1, 1)
        native = a1111.native_latent(self.unet.model.diffusion_model, self.p.sd_model)
        return a1111.Step0(
            x=x[rows],
            sigma=sigma[rows],
            image_cond=image_cond[rows],
            text_cond=_clone(text_cond),
            text_uncond=None,
            layout=layout,
            timesteps=False,
            uncond_skipped=not bool(torch.any(uncond_x0)),
            size_factor=size_factor(x.shape, native),
        )

    # --- mitigation ----------------------------------------------------------------------------------------------
    def _mitigate(self, denoiser, args, targets, detections, eps_c, reference, extra_rows) -> tuple[torch.Tensor, dict]:
        started = time.perf_counter()
        run, p, step0 = self.run, self.p, self.run.step0
        lay = step0.layout
        owner = lay.image_of_rows()
        rows = [r for i in targets for r, _ in lay.cond_rows[i]]
        crossattn = a1111._crossattn(step0.text_cond)
        scored = [d.score for d in detections if d.scorable]
        case = Case(
            eps_model=a1111._eps_model(self.model(), step0, rows, a1111._take(step0.text_cond, rows)),
            x=step0.x[rows],
            cond=crossattn[rows],
            eps_empty=reference[[owner[r] for r in rows]],
            keep=[a1111._keep_ids(p, owner[r], r, lay) for r in rows],
            bos=list(range(0, crossattn.shape[1], CONTEXT)),
            target=step0.raw(run.threshold if run.threshold is not None else min(scored) / 2),
            scores=[float(wen_norm(eps_c[[r]] - reference[[owner[r]]])[0]) for r in rows],
            interrupted=a1111._interrupted,
            model=self.unet.model.diffusion_model,
        )
        intervention = self._strategy(case)
        self._install(rows, owner, case, intervention)

        # the first step again for these images with the intervention in force, unless it changes nothing there yet
        images, at = [owner[r] for r in rows], {r: j for j, r in enumerate(rows)}
        c, u, sigma = args["cond_denoised"], args["uncond_denoised"], args["sigma"]
        recompute = intervention.attention is not None or any(r in run.mitigated_rows for r in rows)
        if recompute:
            cond = a1111._condition(a1111._take(a1111._current_cond(run, step0), rows), step0.image_cond[rows])
            x0 = self.model(images).inner_model(step0.x[rows], step0.sigma[rows], cond=cond)
            after = wen_norm(eps_from_x0(step0.x[rows], x0, step0.sigma[rows]) - reference[images])
        else:
            after = wen_norm(eps_c[rows] - reference[images])
        denoised = args["denoised"].clone()
        t = float(schedule(self.unet.model).timestep(sigma[:1])[0])
        reports = {}
        for i in targets:
            parts = lay.cond_rows[i]
            c_new = sum(w * x0[at[r]] for r, w in parts) / sum(w for _, w in parts) if recompute else c[i]
            k = _host_scale(denoised[i], c[i], u[i])
            s = k
            if i in run.guidance and not step0.uncond_skipped:
                s = run.guidance[i].scale(0, max(denoiser.total_steps or 1, 1), t, _d(c_new, u[i], sigma[i]), k)
            denoised[i] = denoised[i] + k * (c_new - c[i]) + (s - k) * (c_new - u[i])
            report = intervention.reports[at[parts[0][0]]]
            report.score_after = max(float(after[at[r]]) for r, _ in parts)
            report.unet_forwards += int(recompute) + extra_rows
            report.seconds = (time.perf_counter() - started) / len(rows)
            reports[i] = report
        return denoised, reports

    def _strategy(self, case: Case) -> Intervention:
        """The chosen strategy; gradient ones under ``inference_mode(False)``, else the attention edit (see above)."""
        name = self.run.strategy_name
        if name not in ("embedding", "auto"):
            return a1111._strategy(name, False)(case)
        try:
            with torch.enable_grad():
                return a1111._strategy(name, True)(case)
        except Exception as err:
            used = "attention" if name == "embedding" else "attention+guidance"
            first = str(err).splitlines()[0] if str(err) else ""
            note = f"embedding optimization is unavailable on Forge ({type(err).__name__}: {first}); used {used}"
            log.warning("memguard: %s", note)
            intervention = a1111._strategy("attention" if name == "embedding" else "auto", False)(case)
            for report in intervention.reports:
                report.notes.insert(0, note)
            if hasattr(self.p, "comment"):
                self.p.comment(f"memguard: {note}")
            return intervention

    def _install(self, rows: list[int], owner: list[int], case: Case, intervention: Intervention) -> None:
        run = self.run
        crossattn = a1111._crossattn(run.step0.text_cond)
        for j, r in enumerate(rows):
            new = intervention.cond[j].to(crossattn.dtype)
            if not torch.equal(new, crossattn[r]):
                run.original_rows[r], run.mitigated_rows[r] = crossattn[r], new
            if intervention.guidance:
                run.guidance.setdefault(owner[r], intervention.guidance[j])
            if intervention.attention is not None:  # AND parts of one image: the union of their kept positions
                self.keep[owner[r]] = sorted(set(self.keep.get(owner[r], [])) | set(case.keep[j]))
        if intervention.attention is not None:
            self.edit = intervention.attention
            self._patch_attention()

    def _patch_attention(self) -> None:
        """``attn2`` replace patches for every block (``(name, number)`` and any 3-key patch already there)."""
        if self.previous is not None:
            return
        patcher, hook = self.sampling, Hook(self.key, "attention")
        options = patcher.model_options.get("transformer_options", {})
        self.previous = dict(options.get("patches_replace", {}).get("attn2", {}))
        for name in ("input", "middle", "output"):
            for number in range(16):
                patcher.set_model_attn2_replace(hook, name, number)
        for key in self.previous:
            if len(key) == 3:
                patcher.set_model_attn2_replace(hook, *key)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        """Replace patch: the attention that was (previous patch or ``attention_function``), then the edited images'
        cond rows again over their kept keys with the BOS keys scaled (``q . C k = C (q . k)``)."""
        attend = attention_function()
        block = tuple(extra.get("block") or ())
        previous = self.previous.get((*block, extra.get("block_index", 0))) or self.previous.get(block)
        heads = extra["n_heads"]
        out = previous(q, k, v, extra) if previous is not None else attend(q, k, v, heads)
        if self.edit is None:
            return out
        try:
            edited = out.clone()
            for positions, rows in self._edited_rows(extra, q.shape[0], k.shape[1]).items():
                index = torch.tensor(rows, device=q.device)
                keys = k[index][:, list(positions)]
                keys[:, [j for j, pos in enumerate(positions) if pos % CONTEXT == 0]] *= self.edit.c_bos
                values = v[index][:, list(positions)]
                edited[index] = attend(q[index], keys, values, heads).to(out.dtype)
            return edited
        except Exception as err:  # drop the edit, keep sampling; after a fault memguard only watches
            a1111.log_failure("attention edit")
            self.run.fail("attention edit", err)
            self.edit = None
            return out

    def _edited_rows(self, extra: dict, batch: int, length: int) -> dict[tuple[int, ...], list[int]]:
        """Rows of this call that are cond rows of edited images, grouped by their kept key positions."""
        marks = extra.get("cond_or_uncond") or []
        if not marks:
            return {}
        chunk = batch // len(marks)
        images = extra.get("memguard_images")
        images = list(range(chunk)) if images is None else images  # the host's calls: every image, in order
        groups: dict[tuple[int, ...], list[int]] = {}
        for c, mark in enumerate(marks):
            if mark != 0:  # an uncond chunk
                continue
            for j, image in enumerate(images[:chunk]):
                kept = self.keep.get(image)
                if kept is not None:
                    positions = tuple(kept) if self.edit.mask_padding else tuple(range(length))
                    groups.setdefault(positions, []).append(c * chunk + j)
        return groups

    def _guide(self, denoiser: Any, args: dict) -> torch.Tensor:
        """Per-image guidance schedule: ``u + s_i (c - u)`` where the schedule departs from the host's scale."""
        denoised, c, u, sigma = args["denoised"], args["cond_denoised"], args["uncond_denoised"], args["sigma"]
        if not torch.any(u):  # the host skipped its uncond here (scale 1): nothing to recombine
            return denoised
        out = denoised.clone()
        total = max(denoiser.total_steps or 1, 1)
        t = float(schedule(self.unet.model).timestep(sigma[:1])[0])
        for i, guidance in self.run.guidance.items():
            k = _host_scale(denoised[i], c[i], u[i])
            s = guidance.scale(denoiser.step, total, t, _d(c[i], u[i], sigma[i]), k)
            out[i] = denoised[i] + (s - k) * (c[i] - u[i])
        return out
