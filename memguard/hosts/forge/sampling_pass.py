"""memguard on one Forge sampling pass: the post-CFG function on the pass's cloned UNet patcher scores the first step
from Forge's own cond/uncond predictions, runs the first-step flow (``memguard.flow``) on the flagged images of a
guarded generation and swaps their recomputed prediction into ``denoised``; later steps get the attention edit (its
replace patches) and the guidance schedule. Scoring, results and explanation are the A1111 seam's
(``a1111.first_step``), fed with Forge's predictions in A1111's batch layout through :class:`ForgeDenoiser`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ... import strategies
from ...algebra import BatchLayout, eps_from_x0
from ...detect import size_factor, wen_norm
from ...mitigate.base import Case, Intervention
from ..a1111 import first_step as shared
from ..a1111.conditioning import crossattn, pooled_text, take, with_rows
from ..a1111.host import native_latent
from ..a1111.process import log_failure
from ..a1111.run import ATTR, Run, Step0
from .attention import AttentionPatch
from .denoiser import ForgeDenoiser, clone, host_scale, image_d, schedule
from .hook import KEYS

log = logging.getLogger("memguard")


@dataclass(kw_only=True)
class Pass(AttentionPatch):
    """The run, the processing object, the cloned patcher (``unet``) and the one it replaced (``base``); registered in
    ``hook.LIVE`` under ``key`` for as long as the processing object holds it."""

    run: Run
    p: Any
    unet: Any
    base: Any
    key: int = field(default_factory=lambda: next(KEYS))

    @property
    def sampling(self) -> Any:
        """The patcher Forge samples with (``sampling_function`` reads ``forge_objects.unet`` at every call): memguard's
        clone, or the clone another extension made of it after memguard's ``install`` (FreeU, ControlNet, ...)."""
        objects = getattr(self.p.sd_model, "forge_objects", None)
        return getattr(objects, "unet", None) or self.unet

    def model(self, images: list[int] = (), role: int = 0) -> ForgeDenoiser:  # type: ignore[assignment]
        return ForgeDenoiser(self.sampling, list(images), role)

    def attention_failed(self, err: BaseException) -> None:
        self.run.fail("attention edit", err)
        self.edit = None

    # --- the post-CFG function -----------------------------------------------------------------------------------
    def post_cfg(self, args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        run, p = self.run, self.p
        denoiser = getattr(getattr(p, "sampler", None), "model_wrap_cfg", None)
        if getattr(p, ATTR, None) is not run or denoiser is None or getattr(p, "is_hr_pass", False):
            return denoised
        what = ("scoring" if run.mode == "watch" else "mitigation") if denoiser.step == 0 else "guidance schedule"
        try:
            if denoiser.step == 0:
                with torch.inference_mode(False), torch.no_grad():
                    return self.first_step(denoiser, args)
            return self.guide(denoiser, args) if run.guidance else denoised
        except Exception as err:  # memguard must never fail the generation; after a fault it only watches
            log_failure(what)
            run.fail(what, err)
            self.edit = None
            return denoised

    def first_step(self, denoiser: Any, args: dict) -> torch.Tensor:
        run, p = self.run, self.p
        x, sigma = clone(args["input"]), clone(args["sigma"])
        cond_x0, uncond_x0 = clone(args["cond_denoised"]), clone(args["uncond_denoised"])
        step0 = run.step0 = self.step0(denoiser, x, sigma, uncond_x0)
        lay = step0.layout
        eps_u = eps_from_x0(x, uncond_x0, sigma)
        if lay.n_cond == lay.batch:
            eps_c = eps_from_x0(x, cond_x0, sigma)
        else:  # AND: Forge averaged each image's parts; score every part (one batch of cond rows)
            rows = list(range(lay.n_cond))
            eps_c = shared.eps_model(self.model(), step0, rows, step0.text_cond)(
                step0.x[rows], crossattn(step0.text_cond)
            )
        extra = shared.needs_reference(p, step0)
        ref = shared.reference(self.model(role=1), step0) if extra else eps_u
        out = {"denoised": args["denoised"]}
        flow: dict[str, Any] = {}
        if run.mode == "mitigate":
            extra_rows = int(extra) + int(lay.n_cond != lay.batch)  # UNet rows this took per image beyond the host's

            def case(targets: list[int], target: float) -> Case:
                network = self.unet.model.diffusion_model
                return shared.case_for(run, p, self.model(), network, targets, target, eps_c, ref)

            def apply(targets: list[int], built: Case, intervention: Intervention) -> int:
                out["denoised"], recomputed = self.apply(denoiser, args, targets, built, intervention, eps_c, ref)
                return int(recomputed) + extra_rows

            flow = dict(strategy=self.strategy, force=run.force, case=case, apply=apply, abandon=run.abandon_mitigation)
        outcome = shared.score(run, torch.cat([eps_c, eps_u]), ref if extra else None, extra, **flow)
        if outcome.failed:
            self.edit = None
            out["denoised"] = args["denoised"]
        run.reference = ref
        shared.record(run, p, self.model(), outcome, ref)
        return out["denoised"]

    def step0(self, denoiser: Any, x: torch.Tensor, sigma: torch.Tensor, uncond_x0: torch.Tensor) -> Step0:
        """The first step in A1111's batch layout (cond rows per AND part, then one uncond row per image)."""
        from modules import prompt_parser

        extra = denoiser.sampler.sampler_extra_args
        conds_list, text_cond = prompt_parser.reconstruct_multicond_batch(extra["cond"], denoiser.step)
        layout = BatchLayout.from_conds_list(conds_list)
        rows = layout.image_of_rows() + list(range(layout.batch))
        image_cond = extra.get("image_cond")
        image_cond = clone(image_cond) if torch.is_tensor(image_cond) else x.new_zeros(x.shape[0], 5, 1, 1)
        native = native_latent(self.unet.model.diffusion_model, self.p.sd_model)
        return Step0(
            x=x[rows],
            sigma=sigma[rows],
            image_cond=image_cond[rows],
            text_cond=clone(text_cond),
            text_uncond=None,
            layout=layout,
            timesteps=False,
            uncond_skipped=not bool(torch.any(uncond_x0)),
            size_factor=size_factor(x.shape, native),
            size=shared.image_size(self.p),
        )

    # --- mitigation ----------------------------------------------------------------------------------------------
    def strategy(self, case: Case) -> Intervention:
        """The chosen strategy; gradient ones under ``inference_mode(False)``; where Forge's weights refuse a backward
        pass, the attention edit (``auto``: attention and guidance) with a note saying so."""
        name = self.run.strategy_name
        if name not in ("embedding", "auto"):
            return strategies.build(name, gradients=False)(case)
        try:
            with torch.enable_grad():
                return strategies.build(name, gradients=True)(case)
        except Exception as err:
            used = "attention" if name == "embedding" else "attention+guidance"
            first = str(err).splitlines()[0] if str(err) else ""
            note = f"embedding optimization is unavailable on Forge ({type(err).__name__}: {first}); used {used}"
            log.warning("memguard: %s", note)
            intervention = strategies.build("attention" if name == "embedding" else "auto", gradients=False)(case)
            for report in intervention.reports:
                report.notes.insert(0, note)
            if hasattr(self.p, "comment"):
                self.p.comment(f"memguard: {note}")
            return intervention

    def apply(
        self,
        denoiser: Any,
        args: dict,
        targets: list[int],
        case: Case,
        intervention: Intervention,
        eps_c: torch.Tensor,
        ref: torch.Tensor,
    ) -> tuple[torch.Tensor, bool]:
        """Install the intervention, recompute the targets' first-step prediction with it in force (unless it changes
        nothing there yet) and put it into ``denoised``; the reports get the re-scored ``d``. Returns the new
        ``denoised`` and whether the first step was recomputed."""
        run, step0 = self.run, self.run.at_step0()
        lay = step0.layout
        owner = lay.image_of_rows()
        rows = shared.rows_of(step0, targets)
        self.install(rows, owner, case, intervention)
        images, at = [owner[r] for r in rows], {r: j for j, r in enumerate(rows)}
        c, u, sigma = args["cond_denoised"], args["uncond_denoised"], args["sigma"]
        recompute = intervention.attention is not None or any(r in run.mitigated_rows for r in rows)
        if recompute:
            cond = take(with_rows(step0.text_cond, run.mitigated_rows, run.mitigated_pooled), rows)
            x0 = self.model(images).x0(step0.x[rows], step0.sigma[rows], cond, step0.image_cond[rows])
            after = wen_norm(eps_from_x0(step0.x[rows], x0, step0.sigma[rows]) - ref[images])
        else:
            after = wen_norm(eps_c[rows] - ref[images])
        denoised = args["denoised"].clone()
        t = float(schedule(self.unet.model).timestep(sigma[:1])[0])
        for i in targets:
            parts = lay.cond_rows[i]
            c_new = (
                torch.stack([w * x0[at[r]] for r, w in parts]).sum(0) / sum(w for _, w in parts) if recompute else c[i]
            )
            k = host_scale(denoised[i], c[i], u[i])
            s = k
            if i in run.guidance and not step0.uncond_skipped:
                s = run.guidance[i].scale(0, max(denoiser.total_steps or 1, 1), t, image_d(c_new, u[i], sigma[i]), k)
            denoised[i] = denoised[i] + k * (c_new - c[i]) + (s - k) * (c_new - u[i])
            intervention.reports[at[parts[0][0]]].score_after = max(float(after[at[r]]) for r, _ in parts)
        return denoised, recompute

    def install(self, rows: list[int], owner: list[int], case: Case, intervention: Intervention) -> None:
        run = self.run
        context = crossattn(run.at_step0().text_cond)
        text = pooled_text(run.at_step0().text_cond)
        for j, r in enumerate(rows):
            new = intervention.cond[j].to(context.dtype)
            if intervention.pooled is not None and text is not None:
                new_text = intervention.pooled[j].to(text.dtype)
                if not torch.equal(new_text, text[r]):
                    run.mitigated_pooled[r] = new_text
            if not torch.equal(new, context[r]) or r in run.mitigated_pooled:
                run.original_rows[r], run.mitigated_rows[r] = context[r], new
            if intervention.guidance:
                run.guidance.setdefault(owner[r], intervention.guidance[j])
            if intervention.attention is not None:  # AND parts of one image: the union of their kept positions
                self.keep[owner[r]] = sorted(set(self.keep.get(owner[r], [])) | set(case.keep[j]))
        if intervention.attention is not None:
            self.edit = intervention.attention
            self.patch_attention(self.sampling, self.key)

    def guide(self, denoiser: Any, args: dict) -> torch.Tensor:
        """Per-image guidance schedule: ``u + s_i (c - u)`` where the schedule departs from the host's scale."""
        denoised, c, u, sigma = args["denoised"], args["cond_denoised"], args["uncond_denoised"], args["sigma"]
        if not torch.any(u):  # the host skipped its uncond here (scale 1): nothing to recombine
            return denoised
        out = denoised.clone()
        total = max(denoiser.total_steps or 1, 1)
        t = float(schedule(self.unet.model).timestep(sigma[:1])[0])
        for i, guidance in self.run.guidance.items():
            k = host_scale(denoised[i], c[i], u[i])
            s = guidance.scale(denoiser.step, total, t, image_d(c[i], u[i], sigma[i]), k)
            out[i] = denoised[i] + (s - k) * (c[i] - u[i])
        return out
