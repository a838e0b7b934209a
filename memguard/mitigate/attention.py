"""Inference-time mitigation by cross-attention rescaling (Ren et al., ECCV 2024, Sec. 5).

In every cross-attention layer, for the conditional rows of the mitigated images only, the pre-softmax logit of the
BOS key is multiplied by ``C`` (default 1.25) and the padding keys after each chunk's first EOS are masked out of the
softmax, which spreads attention away from the few trigger tokens a memorized prompt concentrates it on.

Both edits are exact and independent of the attention backend: ``q . (C k_BOS) = C (q . k_BOS)``, so the BOS logit is
scaled by a forward hook on the layer's key projection ``to_k``; masking a key out of the softmax is the same as
removing it, so the mitigated rows are re-run through the layer with the padding positions of their context left out,
and their outputs replace the layer's. Every other row is computed by the untouched layer call. ``attn2`` with
``to_k`` is the cross-attention module's name in diffusers, ldm, sgm and Forge alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .base import AttentionEdit, Case, Intervention, Report


def cross_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every ``attn2`` (cross-attention) module that has a ``to_k`` key projection."""
    return [m for name, m in model.named_modules() if name.split(".")[-1] == "attn2" and hasattr(m, "to_k")]


def _split_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None, object, object]:
    """Find the hidden states and the context of a cross-attention call, and where each was passed."""
    hidden_at: object = 0 if args else next((k for k in ("hidden_states", "x") if k in kwargs), None)
    context_at: object = next((k for k in ("encoder_hidden_states", "context") if kwargs.get(k) is not None), None)
    if context_at is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
        context_at = 1

    def pick(at: object) -> torch.Tensor | None:
        if at is None:
            return None
        return args[at] if isinstance(at, int) else kwargs[at]

    return pick(hidden_at), pick(context_at), hidden_at, context_at


def _replace(args: tuple, kwargs: dict, at: object, value: torch.Tensor) -> tuple[tuple, dict]:
    if isinstance(at, int):
        return (*args[:at], value, *args[at + 1 :]), kwargs
    return args, {**kwargs, at: value}


@contextmanager
def rescaled_attention(
    modules: Sequence[Any],
    rows: Sequence[int],
    keep: Sequence[Sequence[int]],
    edit: AttentionEdit,
    batch: int,
    bos: Sequence[int] = (0,),
) -> Iterator[dict]:
    """Apply ``edit`` to batch rows ``rows`` (with their kept key positions ``keep``) of every call of ``batch`` rows.

    Calls with another batch size (a host that splits its CFG batch) are left alone and counted in the yielded
    ``stats['skipped']``. The hooks are removed on exit, also when sampling raises.
    """
    stats = {"edited": 0, "skipped": 0}
    state: dict[str, list[int] | None] = {"bos": None}
    handles = []

    def scale_bos(_module, _args, out):
        if state["bos"] is None:
            return out
        out = out.clone()
        out[:, state["bos"]] *= edit.c_bos
        return out

    def rerun(module, args, kwargs, out):
        hidden, context, hidden_at, context_at = _split_call(args, kwargs)
        masked = kwargs.get("attention_mask") is not None or kwargs.get("mask") is not None
        if hidden is None or context is None or masked or hidden.shape[0] != batch or context.shape[0] != batch:
            stats["skipped"] += 1
            return out
        out = out.clone()
        groups: dict[tuple[int, ...], list[int]] = {}
        for r, positions in zip(rows, keep):
            groups.setdefault(tuple(positions) if edit.mask_padding else tuple(range(context.shape[1])), []).append(r)
        for positions, group in groups.items():
            index = torch.tensor(group, device=hidden.device)
            sub_args, sub_kwargs = _replace(args, kwargs, hidden_at, hidden[index])
            sub_args, sub_kwargs = _replace(sub_args, sub_kwargs, context_at, context[index][:, list(positions)])
            state["bos"] = [positions.index(b) for b in bos if b in positions]
            try:
                out[index] = module.forward(*sub_args, **sub_kwargs)
            finally:
                state["bos"] = None
        stats["edited"] += 1
        return out

    try:
        for m in modules:
            handles.append(m.to_k.register_forward_hook(scale_bos))
            handles.append(m.register_forward_hook(rerun, with_kwargs=True))
        yield stats
    finally:
        for h in handles:
            h.remove()


@dataclass
class Attention:
    """Ren et al.'s edit as a strategy: the conditioning is unchanged, the edit applies at every step."""

    c_bos: float = 1.25
    mask_padding: bool = True
    name: str = "attention"

    def __call__(self, case: Case) -> Intervention:
        edit = AttentionEdit(c_bos=self.c_bos, mask_padding=self.mask_padding)
        notes = [f"BOS logit x{self.c_bos:g}" + (", padding masked" if self.mask_padding else "")]
        reports = [Report(self.name, score_before=s, notes=list(notes)) for s in case.scores]
        return Intervention(cond=case.cond, pooled=case.pooled, reports=reports, attention=edit)
