"""Inference-time mitigation by prompt-embedding optimization (Wen et al., ICLR 2024, Sec. 5.1).

Minimize ``L(e) = d(e) = || eps(x_T, e) - eps(x_T, e_empty) ||_2`` over the conditional embedding ``e`` (every
position but BOS) at the first step, on the generation's own ``x_T``, with AdamW (lr 0.05, weight decay 0.01), for at
most ``max_iters`` iterations, stopping once ``d`` falls below the target. Wen's released default is a target of 3
on the *batch* norm of 4 images (about 1.5 per image on SD1.4); memguard stops each image on its own per-image
``d``, with the calibrated detection threshold as the default target (an image stops when it would no longer be
flagged) and ``target_ratio`` to go further below it. An image that never reaches the target keeps its iterate of
lowest evaluated ``d`` (a step can overshoot), and reports that ``d``.

On SDXL (a case with ``pooled``) the pooled text vector ``p`` is optimized jointly, ``L(e, p)``: it enters every block
through the time embedding, so with ``e`` alone it keeps carrying the memorized caption; every evaluation passes each
row's own ``p`` (``Case.eps_model(x, e, rows, p)``), so the rows still above the target are evaluated on their own.

Only the embedding receives gradients (the model's parameters are frozen for the duration and no parameter gradient
is ever allocated). Memory is bounded by activation checkpointing (:func:`checkpoint_units`): by default the residual
blocks, spatial transformers and resamplers inside the blocks the host names are recomputed one at a time in the
backward pass, so it holds their inputs and one layer's activations. At 512 px on an SD1.5-sized UNet an iteration then
needs about as much memory above the weights as the plain first step (``bench/cost.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from .base import Case, Intervention, Report


@contextmanager
def checkpointed(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Recompute each module's activations in the backward pass instead of storing them (Chen et al. 2016)."""
    originals = []
    try:
        for m in modules:
            forward = m.forward

            def run(*args, _forward=forward, **kwargs):
                if not torch.is_grad_enabled():
                    return _forward(*args, **kwargs)
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

            originals.append((m, forward, "forward" in m.__dict__))
            m.forward = run
        yield
    finally:
        for m, forward, own in originals:
            if own:
                m.forward = forward
            else:
                del m.forward


# The UNet sub-modules recomputed one at a time at ``recompute="layers"`` (and inside each block at ``"nested"``):
# residual blocks, spatial transformers (norm, projections and transformer blocks together: recomputing them whole
# keeps one input per transformer instead of one per norm, attention and feed-forward), resamplers; diffusers' class
# names and the ldm ones A1111/Forge use.
LAYERS = {
    "ResnetBlock2D": "resnet",
    "ResBlock": "resnet",
    "Transformer2DModel": "transformer",
    "SpatialTransformer": "transformer",
    "Downsample2D": "resample",
    "Upsample2D": "resample",
    "Downsample": "resample",
    "Upsample": "resample",
}


# The attributes holding a UNet's top-level blocks (down, middle, up), by layout: ldm/sgm's ``UNetModel`` (A1111),
# Forge's ``IntegratedUNet2DConditionModel`` and reForge's ``ldm_patched`` one; diffusers' ``UNet2DConditionModel``.
BLOCKS = (("input_blocks", "middle_block", "output_blocks"), ("down_blocks", "mid_block", "up_blocks"))


def unet_blocks(network: object) -> list[torch.nn.Module]:
    """The UNet's top-level blocks in order, probed by attribute (:data:`BLOCKS`); ``[]`` for a layout not known."""
    for names in BLOCKS:
        down, middle, up = (getattr(network, name, None) for name in names)
        sequence = torch.nn.ModuleList | torch.nn.Sequential
        if isinstance(down, sequence) and isinstance(middle, torch.nn.Module) and isinstance(up, sequence):
            return [*down, middle, *up]
    return []


def checkpoint_units(modules: Sequence[torch.nn.Module], recompute: str = "layers") -> list[torch.nn.Module]:
    """The modules whose activations the backward pass recomputes instead of storing.

    ``"layers"`` (the default): the :data:`LAYERS` inside each given module (a module with none is kept whole): the
    backward pass keeps each layer's input and recomputes one layer at a time. ``"blocks"``: the modules as given (the
    host's, e.g. the UNet's top-level blocks): fewer inputs kept, but a whole block recomputed at once, every activation
    of it alive together (at 512 px on an SD1.5-sized UNet about twice the plain step's memory, against about the same
    for ``"layers"`` at the same compute: ``bench/cost.py``). ``"nested"``: both, a block's recomputation keeping only
    its layers' inputs, for a slightly lower peak at one more UNet forward per iteration. ``"none"``: every activation
    stored (about 5x).
    """
    if recompute == "none":
        return []
    if recompute == "blocks":
        return list(modules)
    if recompute not in ("layers", "nested"):
        raise ValueError(f"recompute must be 'nested', 'layers', 'blocks' or 'none', not {recompute!r}")
    units: list[torch.nn.Module] = []
    for module in modules:
        found = _layers(module)
        if recompute == "nested":
            units.append(module)
            units.extend(found)
        else:
            units.extend(found or [module])
    return units


def _layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    out = []
    for child in module.children():
        out.extend([child] if type(child).__name__ in LAYERS else _layers(child))
    return out


@contextmanager
def frozen(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter for the duration, then restore it."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass
class Embedding:
    """Wen et al.'s embedding optimization; see the module docstring."""

    lr: float = 0.05
    max_iters: int = 10
    target: float | None = None
    target_ratio: float = 1.0
    weight_decay: float = 0.01
    recompute: str = "layers"
    name: str = "embedding"

    def __call__(self, case: Case) -> Intervention:
        start = time.perf_counter()
        n = case.x.shape[0]
        target = (self.target if self.target is not None else case.target) * self.target_ratio
        reports = [Report(self.name, score_before=s) for s in case.scores]
        with ExitStack() as stack, torch.enable_grad():
            stack.enter_context(checkpointed(checkpoint_units(case.checkpoint, self.recompute)))
            if case.model is not None:
                stack.enter_context(frozen([case.model]))
            e = case.cond.detach().clone().float().requires_grad_(True)
            bos_vectors = e.detach()[:, case.bos].clone()
            params = [e]
            if case.pooled is not None:
                params.append(case.pooled.detach().clone().float().requires_grad_(True))
            best = [p.detach().clone() for p in params]  # per row, the iterate of the lowest d evaluated
            best_d = [float("inf")] * n
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
            active = torch.ones(n, dtype=torch.bool)
            bos = torch.tensor(case.bos, dtype=torch.long)
            for it in range(self.max_iters + 1):
                rows = active.nonzero().flatten()
                with torch.set_grad_enabled(it < self.max_iters):  # the last evaluation needs no graph
                    eps = case.eps_model(
                        case.x[rows], e[rows].to(case.cond.dtype), rows.tolist(), *self._pooled(case, params, rows)
                    )
                d = (eps.float() - case.eps_empty[rows].float()).flatten(1).norm(dim=1)
                for r, value in zip(rows.tolist(), d.detach().tolist()):
                    reports[r].unet_forwards += 1
                    if value < best_d[r]:
                        best_d[r] = value
                        for kept, p in zip(best, params):
                            kept[r] = p.detach()[r]
                done = d.detach() <= target
                active[rows[done]] = False
                if not active.any() or it == self.max_iters or case.interrupted():
                    break
                grads = torch.autograd.grad(d[~done].sum(), params)
                grads[0][:, bos] = 0
                for p, grad in zip(params, grads):
                    grad[~active] = 0
                    p.grad = grad
                opt.step()
                with torch.no_grad():
                    e[:, bos] = bos_vectors  # AdamW's weight decay would move BOS too; it stays as encoded
                for r in rows[~done].tolist():
                    reports[r].iterations += 1
                    reports[r].unet_backwards += 1
        elapsed = time.perf_counter() - start
        for r, rep in enumerate(reports):
            rep.seconds = elapsed / max(n, 1)
            rep.score_after = best_d[r] if best_d[r] < float("inf") else None
            if rep.score_after is not None and rep.score_after > target:
                rep.notes.append(f"stopped at {rep.iterations} iterations above the target {target:.3g}")
        return Intervention(
            cond=best[0].to(case.cond.dtype),
            pooled=None if case.pooled is None else best[1].to(case.pooled.dtype),
            reports=reports,
        )

    @staticmethod
    def _pooled(case: Case, params: list[torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The evaluated rows' pooled text vectors (SDXL), none without."""
        return () if case.pooled is None else (params[1][rows].to(case.pooled.dtype),)
