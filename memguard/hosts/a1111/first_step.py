"""The first sampling step of a watched or guarded generation: read the host's CFG inputs, score every image
(Wen's ``d`` from the host's own batch where it has what is needed), explain the flagged ones on the typed words,
and, when guarding, run the first-step flow (:func:`memguard.flow.first_step`) on them. Shared by the Forge seam,
which feeds it Forge's predictions in A1111's batch layout through its own :class:`~memguard.hosts.denoiser.Denoiser`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import strategies
from ...detect import image_scores, row_scores, size_factor, wen_norm
from ...explain import explain, significance
from ...flow import FirstStep, bos_positions, first_step
from ...mitigate.base import Case, Intervention, RowsModel
from ...mitigate.embedding import unet_blocks
from ...result import ImageResult
from ..denoiser import Denoiser
from . import host
from .conditioning import crossattn, pooled_text, take, with_crossattn, with_pooled, with_rows
from .denoiser import CFGDenoiserAdapter
from .mitigation import install
from .process import log_failure
from .prompt_tokens import encoded_subprompt, host_tokens, keep_ids, typed_prompt
from .run import Run, Step0, batch_offset


def record_step0(run: Run, p: Any, params: Any) -> None:
    """Keep the host's first-step CFG inputs (``on_cfg_denoiser``) on the run."""
    from modules import shared

    native = host.native_latent(host.unet(), shared.sd_model)
    run.step0 = Step0(
        x=params.x,
        sigma=params.sigma,
        image_cond=params.image_cond,
        text_cond=params.text_cond,
        text_uncond=params.text_uncond,
        layout=host.layout(params.denoiser),
        timesteps=host.is_timesteps(params.denoiser),
        uncond_skipped=host.uncond_skipped(p, params.sigma),
        size_factor=size_factor(params.x.shape, native),
        size=image_size(p),
    )


def image_size(p: Any) -> tuple[int, int] | None:
    """The (width, height) the host conditions the first pass on (``setup_conds``: ``SdConditioning(width=p.width,
    height=p.height)``)."""
    width, height = getattr(p, "width", None), getattr(p, "height", None)
    return (int(width), int(height)) if width and height else None


def adapter(run: Run, denoiser: Any) -> CFGDenoiserAdapter:
    return CFGDenoiserAdapter(denoiser, run.at_step0().timesteps)


def needs_reference(p: Any, step0: Step0) -> bool:
    """Whether the host's uncond is not the empty reference (:func:`~.host.empty_cond`): a negative prompt, or no uncond
    pass at step 0. SDXL's (a dict conditioning) is the reference only for a negative prompt that is exactly ``""``
    (the host's ``force_zero_embeddings``); a blank one is encoded like ``""`` elsewhere."""
    negatives = getattr(p, "negative_prompts", None) or [getattr(p, "negative_prompt", "")]
    if isinstance(step0.text_cond, dict):
        return step0.uncond_skipped or any(n != "" for n in negatives)
    return step0.uncond_skipped or any(n.strip() for n in negatives)


def eps_model(denoiser: Denoiser, step0: Step0, batch_rows: list[int], base_cond: Any) -> RowsModel:
    """``eps(x, crossattn, rows, pooled)`` at the first step for the given batch rows (gradients allowed), the rest of
    ``base_cond`` (one row per batch row: SDXL's vector, an extension's prefix rows) kept: ``rows`` says which of them
    ``x`` holds (the first ``len(x)`` when None), each evaluated with its own; ``pooled`` (SDXL) their pooled text
    vectors in place of their own, the size/crop part of the vector kept."""
    sigma, image_cond = step0.sigma[batch_rows], step0.image_cond[batch_rows]

    def eps(
        x: torch.Tensor, cond: torch.Tensor, rows: Sequence[int] | None = None, pooled: torch.Tensor | None = None
    ) -> torch.Tensor:
        at = list(range(x.shape[0])) if rows is None else list(rows)
        full = with_crossattn(take(base_cond, at), cond) if base_cond is not None else cond
        if pooled is not None:
            full = with_pooled(full, pooled)
        return denoiser.eps(x, sigma[at], full, image_cond[at])

    return eps


def reference(denoiser: Denoiser, step0: Step0) -> torch.Tensor:
    """Empty-prompt eps on the unconditional rows' inputs: one extra batch of B rows."""
    lay = step0.layout
    rows = list(range(lay.n_cond, lay.n_cond + lay.batch))
    empty = host.empty_cond(lay.batch, step0.size)
    return denoiser.eps(step0.x[rows], step0.sigma[rows], empty, step0.image_cond[rows])


def score(run: Run, eps: torch.Tensor, ref: torch.Tensor | None, extra: bool, **flow: Any) -> FirstStep:
    """Judge every image from the batch's eps (its cond rows against ``ref``, or the host's uncond rows), in
    native-size units; keyword arguments run the rest of the first-step flow (:func:`memguard.flow.first_step`)."""
    step0 = run.at_step0()
    rows = row_scores(eps, step0.layout, ref) * step0.size_factor
    subs = [[float(rows[r]) for r, _ in image_rows] for image_rows in step0.layout.cond_rows]
    return first_step(image_scores(rows, step0.layout), run.threshold, extra_pass=extra, sub_scores=subs, **flow)


def watch(run: Run, p: Any, denoiser: Any, x_out: torch.Tensor) -> None:
    """``on_cfg_denoised`` at step 0: score from the host's own outputs (plus empty-prompt rows where needed)."""
    step0 = run.at_step0()
    lay = step0.layout
    model = adapter(run, denoiser)
    eps = step0.to_eps(step0.x[: x_out.shape[0]], x_out, step0.sigma[: x_out.shape[0]])
    extra = needs_reference(p, step0)
    ref = reference(model, step0) if extra else None
    outcome = score(run, eps, ref, extra)
    record(run, p, model, outcome, ref if ref is not None else eps[lay.n_cond : lay.n_cond + lay.batch])


def record(run: Run, p: Any, denoiser: Denoiser, outcome: FirstStep, ref: torch.Tensor) -> None:
    """Store an :class:`~memguard.result.ImageResult` per image (token significance for flagged images, what the
    mitigation did) under its index in the job."""
    step0 = run.at_step0()
    offset = batch_offset(p, step0.layout.batch)
    reports = by_image(step0, outcome)
    seeds = getattr(p, "seeds", None) or []
    prompts = getattr(p, "prompts", None) or []
    for i, det in enumerate(outcome.detections):
        words, note = explained(run, p, denoiser, i, ref, det) if det.flagged and run.explain else ([], None)
        mitigation = reports[i].to_dict() if i in reports else None
        if mitigation is not None:
            for key in ("score_before", "score_after"):
                mitigation[key] = step0.judged(mitigation[key])
        run.results[offset + i] = ImageResult(
            index=offset + i,
            seed=seeds[i] if i < len(seeds) else None,
            prompt=typed_prompt(p, i) if i < len(prompts) else "",
            score=det.score,
            d=None if det.score is None else step0.raw(det.score),
            threshold=det.threshold,
            threshold_source=run.threshold_source,
            flagged=det.flagged,
            extra_pass=det.extra_pass,
            reason=det.reason,
            sub_scores=det.sub_scores,
            words=words,
            note=note,
            mitigation=mitigation,
            mitigation_error=(outcome.failed or None) if i in outcome.targets else None,
        )


def record_unscored(run: Run, p: Any) -> None:
    """``process_batch`` of a job memguard does not apply to (``Run.not_applicable``): each image of the batch is
    ``unscored`` with that reason, so that its infotext and the panel say so."""
    seeds = getattr(p, "seeds", None) or []
    prompts = getattr(p, "prompts", None) or []
    count = len(seeds) or len(prompts) or int(getattr(p, "batch_size", 1) or 1)
    offset = batch_offset(p, count)
    for i in range(count):
        run.results[offset + i] = ImageResult(
            index=offset + i,
            seed=seeds[i] if i < len(seeds) else None,
            prompt=typed_prompt(p, i) if i < len(prompts) else "",
            score=None,
            d=None,
            threshold=None,
            threshold_source=run.threshold_source,
            flagged=False,
            reason=run.not_applicable or "",
        )


def by_image(step0: Step0, outcome: FirstStep) -> dict[int, Any]:
    """The intervention's reports (one per cond row) by image: each image's first row's."""
    if outcome.intervention is None:
        return {}
    rows = [r for i in outcome.targets for r, _ in step0.layout.cond_rows[i]]
    owner = step0.layout.image_of_rows()
    reports: dict[int, Any] = {}
    for j, r in enumerate(rows):
        reports.setdefault(owner[r], outcome.intervention.reports[j])
    return reports


def explained(run: Run, p: Any, denoiser: Denoiser, i: int, ref: torch.Tensor, det: Any) -> tuple[list, str | None]:
    """Words and note for flagged image ``i``; an explanation that fails leaves the verdict standing."""
    if host.interrupted():
        return [], "not explained: the generation was interrupted"
    try:
        return explain_image(run, p, denoiser, i, ref[i : i + 1], det.sub_scores)
    except Exception as err:
        log_failure(f"explaining image {i + 1}")
        return [], f"could not explain the score: {type(err).__name__}: {err}"


def explain_image(
    run: Run, p: Any, denoiser: Denoiser, image: int, ref: torch.Tensor, sub_scores: list[float]
) -> tuple[list[dict], str | None]:
    """Token significance (``memguard.explain.significance``) for the image's strongest sub-prompt, as word dicts
    over the typed prompt, and the note saying when it came from occlusion instead of Wen's gradient."""
    step0 = run.at_step0()
    image_rows = step0.layout.cond_rows[image]
    sub = max(range(len(image_rows)), key=lambda k: sub_scores[k] if k < len(sub_scores) else 0.0)
    row = image_rows[sub][0]
    cond = take(with_rows(step0.text_cond, run.mitigated_rows, run.mitigated_pooled), [row])

    def model(x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # n copies of this image's row
        n = x.shape[0]
        return eps_model(denoiser, step0, [row] * n, take(cond, [0] * n))(x, context)

    tokens = host_tokens(encoded_subprompt(p, image, sub), typed_prompt(p, image))
    empty = crossattn(host.empty_cond(1, step0.size)).to(step0.x.device)
    positions = [t.position for t in tokens.tokens]
    values, note = significance(model, step0.x[[row]], crossattn(cond).detach().clone(), ref, empty, positions)
    return explain(tokens, values).to_dict()["words"], note


def mitigate(run: Run, p: Any, params: Any) -> None:
    """``on_cfg_denoiser`` at step 0 of a guarded generation: score with one extra CFG batch, then the first-step flow
    on the targets, whose new rows the host samples with from this call on (:func:`~.mitigation.install`)."""
    step0 = run.at_step0()
    model = adapter(run, params.denoiser)
    lay = step0.layout
    cond_rows = list(range(lay.n_cond))
    eps_c = eps_model(model, step0, cond_rows, step0.text_cond)(step0.x[cond_rows], crossattn(step0.text_cond))
    ref = reference(model, step0)

    def case(targets: list[int], target: float) -> Case:
        return case_for(run, p, model, host.unet(), targets, target, eps_c, ref)

    def apply(targets: list[int], built: Case, intervention: Intervention) -> int:
        install(run, rows_of(step0, targets), built, intervention)
        return 2  # the first step evaluated again by the host with the intervention in force

    gradients = torch.is_inference_mode_enabled() is False
    outcome = score(
        run,
        torch.cat([eps_c, ref]),
        None,
        True,
        strategy=lambda c: strategies.build(run.strategy_name, gradients=gradients)(c),
        force=run.force,
        case=case,
        apply=apply,
        abandon=run.abandon_mitigation,
    )
    run.reference = ref
    record(run, p, model, outcome, ref)


def rows_of(step0: Step0, targets: list[int]) -> list[int]:
    """The cond rows (every ``AND`` part) of the target images."""
    return [r for i in targets for r, _ in step0.layout.cond_rows[i]]


def case_for(
    run: Run,
    p: Any,
    model: Denoiser,
    network: torch.nn.Module,
    targets: list[int],
    target: float,
    eps_c: torch.Tensor,
    ref: torch.Tensor,
) -> Case:
    """The strategy's :class:`~memguard.mitigate.base.Case` for the target images' cond rows (A1111 and Forge):
    ``target`` the score to get below (native-size units), ``eps_c`` the cond rows' first-step eps, ``ref`` the empty
    prompt's per image, ``network`` the UNet to freeze, whose top-level blocks (ldm's ``input_blocks``,
    ``middle_block``, ``output_blocks`` on both WebUIs) hold the layers recomputed in backward passes."""
    step0 = run.at_step0()
    lay = step0.layout
    rows = rows_of(step0, targets)
    owner = lay.image_of_rows()
    context, text = crossattn(step0.text_cond), pooled_text(step0.text_cond)
    scores = [float(wen_norm(eps_c[[r]] - ref[[owner[r]]])[0]) for r in rows]
    return Case(
        eps_model=eps_model(model, step0, rows, take(step0.text_cond, rows)),
        x=step0.x[rows],
        cond=context[rows],
        eps_empty=ref[[owner[r] for r in rows]],
        keep=[keep_ids(p, owner[r], r, lay) for r in rows],
        bos=bos_positions(context.shape[1]),
        target=step0.raw(target),
        scores=scores,
        interrupted=host.interrupted,
        model=network,
        pooled=None if text is None else text[rows],
        checkpoint=unet_blocks(network),
    )


def score_after(run: Run, p: Any, x_out: torch.Tensor) -> None:
    """``d`` of the mitigated images, read from the host's own first-step batch (which used the new conditioning)."""
    step0, ref = run.at_step0(), run.reference
    if ref is None:
        return
    lay = step0.layout
    eps = step0.to_eps(step0.x[: lay.n_cond], x_out[: lay.n_cond], step0.sigma[: lay.n_cond])
    after = image_scores(wen_norm(eps - ref[lay.image_of_rows()]), lay)
    offset = batch_offset(p, lay.batch)
    for i in range(lay.batch):
        result = run.results.get(offset + i)
        if result is not None and result.mitigation is not None:
            result.mitigation["score_after"] = step0.judged(after[i])
