"""Run memguard on a diffusers-format model directory (:class:`memguard.model.Model`): score, explain, calibrate,
generate with mitigation.

Sampling is DDIM (Song et al. 2021) with the model's own scheduler configuration and classifier-free
guidance ``eps = eps_u + s (eps_c - eps_u)`` (Ho & Salimans 2022); the unconditional prompt is the negative prompt
(empty by default: :meth:`Model.empty`, zeros on SDXL). On SDXL every row also carries its added conditioning
(:data:`memguard.model.Added`: pooled text, size/crop numbers) beside its context, stacked like it.

Seeds: image ``j`` of a prompt with seed ``s`` starts from
``torch.randn((1, C, H, W), generator=torch.Generator("cpu").manual_seed(s + j)) * init_noise_sigma``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch

from .added import RowsEps, join_added, take_added
from .detect import Detection, anisotropy, combined_score, judge, unscorable, wen_norm
from .explain import Explanation, explain, token_gradients
from .flow import bos_positions, first_step
from .mitigate.attention import cross_attention_modules, rescaled_attention
from .mitigate.base import Case, Intervention, Report, Strategy
from .model import CALIBRATION_FILE, Added, Model, ModelError
from .tokens import CONTEXT, Tokenized, tokenize_many

__all__ = ["CALIBRATION_FILE", "Generation", "Model", "ModelError", "explain_prompt", "sample", "score"]


def positions_kept(tokenized: Tokenized) -> list[int]:
    """BOS, prompt tokens and the first EOS of every chunk: what Ren et al.'s padding mask keeps."""
    kept: list[int] = []
    for k in range(tokenized.n_chunks):
        body = min(max(len(tokenized.tokens) - 75 * k, 0), 75)
        kept.extend(range(k * CONTEXT, k * CONTEXT + body + 2))
    return kept


@dataclass
class Generation:
    """One image: its prompt and seed, the first-step verdict, what mitigation did, and the final sample."""

    prompt: str
    seed: int
    detection: Detection
    image: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    mitigation: Report | None = None
    trajectory: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "score": self.detection.score,
            "threshold": self.detection.threshold,
            "flagged": self.detection.flagged,
            "detection": self.detection.to_dict(),
            "score_after": self.mitigation.score_after if self.mitigation else None,
            "mitigation": self.mitigation.to_dict() if self.mitigation else None,
        }


def _cfg(
    model: Model,
    x: torch.Tensor,
    t,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    edit_rows=None,
    edit=None,
    added: Added = None,
    added_u: Added = None,
):
    """``(eps_c, eps_u)`` in one batch when the lengths match (as the WebUI batches them), else two calls;
    ``added``/``added_u``: the rows' SDXL added conditioning."""
    context: AbstractContextManager = nullcontext()
    n = x.shape[0]
    same = cond.shape[1] == uncond.shape[1]
    if edit is not None and edit_rows:
        rows, keep = edit_rows
        bos = bos_positions(cond.shape[1])
        context = rescaled_attention(cross_attention_modules(model.unet), rows, keep, edit, 2 * n if same else n, bos)
    with context:
        if same:
            eps = model.eps(torch.cat([x, x]), t, torch.cat([cond, uncond]), join_added(added, added_u))
            return eps[:n], eps[n:]
        eps_c = model.eps(x, t, cond, added)
    return eps_c, model.eps(x, t, uncond, added_u)


def _rows(model: Model, prompts: str | Sequence[str], n: int) -> tuple[list[Tokenized], torch.Tensor]:
    """Tokenize and encode one prompt per image row (a single prompt is repeated); all must have as many chunks.

    The distinct prompts are tokenized in one tokenizer call and encoded in one text-encoder call."""
    texts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(texts) != n:
        raise ValueError(f"{len(texts)} prompts for {n} seeds")
    index: dict[str, int] = {}
    for text in texts:
        index.setdefault(text, len(index))
    toks = tokenize_many(model.tokenizer, list(index))
    if len({tok.n_chunks for tok in toks}) > 1:
        raise ValueError("prompts of one batch must have the same number of 75-token chunks; batch them by length")
    encoded = model.encode(toks)
    rows = [index[t] for t in texts]
    cond = encoded if rows == list(range(len(toks))) else encoded[torch.tensor(rows, device=encoded.device)]
    return [toks[i] for i in rows], cond


@dataclass
class _Guard:
    """The batch's conditioning and, once the first step has decided, the intervention on its target rows."""

    cond: torch.Tensor
    keep: list[list[int]]
    added: Added = None
    targets: list[int] = field(default_factory=list)
    intervention: Intervention | None = None

    @property
    def edit(self):
        return self.intervention.attention if self.intervention else None

    def edit_rows(self) -> tuple[list[int], list[list[int]]]:
        return self.targets, [self.keep[i] for i in self.targets]

    def scales(self, step: int, total: int, t, d: torch.Tensor, guidance: float) -> torch.Tensor:
        """Per-image guidance scale: the schedule's for mitigated images (Jain et al.), ``guidance`` for the rest."""
        scale = torch.full((len(self.cond),), float(guidance))
        if self.intervention is not None and self.intervention.guidance:
            for j, i in enumerate(self.targets):
                scale[i] = self.intervention.guidance[j].scale(step, total, float(t), float(d[i]), guidance)
        return scale


@torch.no_grad()
def sample(
    model: Model,
    prompts: str | Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = 50,
    guidance: float = 7.5,
    negative: str = "",
    threshold: float | None = None,
    strategy: Strategy | None = None,
    force: bool = False,
    score_steps: int = 1,
    stop_after: int | None = None,
    interrupted: Callable[[], bool] = lambda: False,
    watch: bool = True,
) -> list[Generation]:
    """Sample one image per seed with DDIM + CFG, score each at the first step, and mitigate the flagged ones.

    ``prompts`` is one prompt for all seeds or one per seed (a batch of prompts of equal chunk count).
    ``score_steps > 1`` averages ``d_t`` over the first steps for the reported score (the decision to mitigate is
    taken at the first step). ``stop_after`` ends sampling early (scanning needs only the first steps); the
    generations then carry no image. ``watch=False`` samples plainly, without scoring (the benchmarks' baseline).
    """
    n = len(seeds)
    toks, cond = _rows(model, prompts, n)
    empty, empty_added = model.empty().expand(n, -1, -1), model.empty_added(n)
    uncond, uncond_added = empty, empty_added
    if negative != "":
        negative_tok = model.tokenize(negative)
        uncond, uncond_added = model.encode(negative_tok).expand(n, -1, -1), model.added([negative_tok] * n)
    x = torch.cat([model.noise(s) for s in seeds])
    scheduler = model.scheduler(steps)
    timesteps = scheduler.timesteps
    last = len(timesteps) if stop_after is None else min(stop_after, len(timesteps))
    history = torch.zeros(n, last)
    guard = _Guard(cond, [positions_kept(tok) for tok in toks], model.added(toks))
    detections = unscorable(n, "memguard was not watching this generation")
    for step, t in enumerate(timesteps[:last]):
        eps_c, eps_u = _cfg(model, x, t, guard.cond, uncond, guard.edit_rows(), guard.edit, guard.added, uncond_added)
        if watch:
            extra = step < max(score_steps, 1) and negative != ""
            eps_e = model.eps(x, t, empty, empty_added) if extra else eps_u
            d = history[:, step] = wen_norm(eps_c - eps_e)
            if step == 0:
                first = (x, t, eps_c, eps_u, eps_e if extra else None, d)
                decided = first_step(
                    d.tolist(),
                    threshold,
                    extra_pass=extra,
                    steps=score_steps,
                    strategy=strategy,
                    force=force,
                    case=partial(_case, model, guard, first, interrupted=interrupted),
                    apply=partial(_apply, model, guard, first, uncond, uncond_added),
                )
                detections, guard.targets = decided.detections, decided.targets
                guard.intervention = decided.intervention
            scale = guard.scales(step, len(timesteps), t, d, guidance)
        else:
            scale = torch.full((n,), float(guidance))
        eps = eps_u + scale.to(x.device, x.dtype).view(-1, 1, 1, 1) * (eps_c - eps_u)
        x = scheduler.step(eps, t, x).prev_sample
        if interrupted():
            break
    if watch and score_steps > 1:
        _average(detections, history[:, : max(1, min(score_steps, last))], guard.targets, threshold)
    reports = dict(zip(guard.targets, guard.intervention.reports)) if guard.intervention else {}
    images = model.decode(x) if stop_after is None else None
    return [
        Generation(
            prompt=toks[i].prompt,
            seed=int(s),
            detection=detections[i],
            image=images[i] if images is not None else None,
            latent=x[i] if stop_after is None else None,
            mitigation=reports.get(i),
            trajectory=history[i].tolist(),
        )
        for i, s in enumerate(seeds)
    ]


def _case(model: Model, guard: _Guard, first: tuple, targets: list[int], target: float, *, interrupted) -> Case:
    """The strategy's input for the target images at the first step (``first``: its ``x, t, eps_c, eps_u, eps_e, d``;
    ``eps_e`` None where the host's uncond is the empty prompt's)."""
    x, t, _eps_c, eps_u, eps_e, d = first
    eps_e = eps_u if eps_e is None else eps_e
    return Case(
        eps_model=RowsEps(model, t, take_added(guard.added, targets)),
        x=x[targets],
        cond=guard.cond[targets],
        eps_empty=eps_e[targets],
        keep=[guard.keep[i] for i in targets],
        bos=bos_positions(guard.cond.shape[1]),
        target=target,
        scores=[float(d[i]) for i in targets],
        interrupted=interrupted,
        model=model.unet,
        checkpoint=model.blocks(),
        pooled=None if guard.added is None else guard.added["text_embeds"][targets],
    )


def _apply(
    model: Model,
    guard: _Guard,
    first: tuple,
    uncond,
    uncond_added: Added,
    targets: list[int],
    _case: Case,
    intervention: Intervention,
) -> int:
    """Sample the targets with the intervention from now on and evaluate their first step again with it in force:
    their rows of ``eps_c``, ``eps_u`` and ``d`` replaced in place, ``score_after`` in their reports. Two UNet rows
    each."""
    x, t, eps_c, eps_u, eps_e, d = first
    guard.cond = guard.cond.clone()
    guard.cond[targets] = intervention.cond.to(guard.cond.dtype)
    if guard.added is not None and intervention.pooled is not None:
        pooled = guard.added["text_embeds"].clone()
        pooled[targets] = intervention.pooled.to(pooled.dtype)
        guard.added = {**guard.added, "text_embeds": pooled}
    rows = (list(range(len(targets))), [guard.keep[i] for i in targets])
    added, added_u = take_added(guard.added, targets), take_added(uncond_added, targets)
    new_c, new_u = _cfg(
        model, x[targets], t, guard.cond[targets], uncond[targets], rows, intervention.attention, added, added_u
    )
    eps_c[targets], eps_u[targets] = new_c, new_u
    after = wen_norm(new_c - (eps_e[targets] if eps_e is not None else new_u))
    for j, report in enumerate(intervention.reports):
        report.score_after = float(after[j])
        d[targets[j]] = after[j]
    return 2


def _average(detections: list[Detection], window: torch.Tensor, targets: list[int], threshold: float | None) -> None:
    """The reported score of every unmitigated image as the mean ``d_t`` over the first steps (``score_steps``)."""
    mean = window.mean(dim=1)
    for i, det in enumerate(detections):
        if det.scorable and i not in targets:
            det.score = float(mean[i])
            det.flagged = bool(threshold is not None and det.score > threshold)


@torch.no_grad()
def score(
    model: Model,
    prompts: str | Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = 50,
    guidance: float = 7.5,
    score_steps: int = 1,
    threshold: float | None = None,
    method: str = "wen",
    gammas: tuple[float, float] = (1.0, 2.0),
) -> list[Detection]:
    """First-step verdicts without sampling the rest: Wen's ``d`` or, with ``method="asthana"``, norm + angle."""
    gens = sample(
        model,
        prompts,
        seeds,
        steps=steps,
        guidance=guidance,
        threshold=threshold,
        score_steps=score_steps,
        stop_after=score_steps,
    )
    if method == "wen":
        return [g.detection for g in gens]
    if method != "asthana":
        raise ValueError(f"unknown score method {method!r}: use 'wen' or 'asthana'")
    toks, cond = _rows(model, prompts, len(seeds))
    x = torch.cat([model.noise(s) for s in seeds])
    t_low = model.scheduler(steps).timesteps[-3]
    empty = model.empty().expand(len(seeds), -1, -1)
    eps_c, eps_u = _cfg(model, x, t_low, cond, empty, added=model.added(toks), added_u=model.empty_added(len(seeds)))
    norms = torch.tensor([g.trajectory[0] for g in gens])
    return judge(combined_score(norms, anisotropy(eps_u, eps_c), *gammas).tolist(), threshold, method="asthana")


def score_prompts(
    model: Model,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] = lambda n: None,
    **kwargs,
) -> list[list[Detection]]:
    """:func:`score` for many prompts: every (prompt, seed) row batched ``batch_size`` at a time, grouped by chunk
    count; returns one list of detections (one per seed) per prompt, in input order."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for i, tok in enumerate(tokenize_many(model.tokenizer, prompts)):
        groups.setdefault(tok.n_chunks, []).extend((i, s) for s in seeds)
    out: list[list[Detection]] = [[] for _ in prompts]
    for rows in groups.values():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            dets = score(model, [prompts[i] for i, _ in batch], [s for _, s in batch], **kwargs)
            for (i, _), det in zip(batch, dets):
                out[i].append(det)
            progress(len(batch))
    return out


def explain_prompt(
    model: Model, prompt: str, seeds: Sequence[int], *, steps: int = 50, guidance: float = 7.5, explain_steps: int = 1
) -> Explanation:
    """Token significance (Wen et al. Sec. 4) at the first step, or averaged over the first ``explain_steps``."""
    n = len(seeds)
    tok = model.tokenize(prompt)
    cond = model.encode(tok).expand(n, -1, -1)
    empty = model.empty().expand(n, -1, -1)
    added, empty_added = model.added([tok] * n), model.empty_added(n)
    x = torch.cat([model.noise(s) for s in seeds])
    scheduler = model.scheduler(steps)
    grads = []
    for t in scheduler.timesteps[:explain_steps]:
        with torch.no_grad():
            eps_c, eps_u = _cfg(model, x, t, cond, empty, added=added, added_u=empty_added)
        grads.append(token_gradients(RowsEps(model, t, added), x, cond, eps_u))
        with torch.no_grad():
            x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return explain(tok, torch.stack(grads).mean(dim=0))
