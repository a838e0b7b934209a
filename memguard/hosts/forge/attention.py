"""Ren et al.'s attention edit on Forge: ``attn2`` *replace* patches on the pass's patcher edit the cond rows of the
flagged images, found from ``extra_options["cond_or_uncond"]``: on the projected keys, BOS times ``C`` and the
padding keys dropped, exactly; every other row is the host's attention (or the replace patch that was there). An
``attn2_patch`` could scale BOS (``to_k`` has no bias) but not drop keys for some rows of the call only, hence the
replace patch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...mitigate.base import AttentionEdit
from ...tokens import CONTEXT
from ..a1111.process import log_failure
from .denoiser import attention_function
from .hook import Hook


@dataclass
class AttentionPatch:
    """The edit in force (``edit``), each edited image's kept key positions (``keep``), and the ``attn2`` replace
    patches it chains to (``previous``). Mixed into the sampling pass, whose :class:`Hook` calls :meth:`attention`."""

    edit: AttentionEdit | None = None
    keep: dict[int, list[int]] = field(default_factory=dict)
    previous: dict | None = None

    def patch_attention(self, patcher: Any, key: int) -> None:
        """``attn2`` replace patches for every block (``(name, number)`` and any 3-key patch already there)."""
        if self.previous is not None:
            return
        hook = Hook(key, "attention")
        options = patcher.model_options.get("transformer_options", {})
        self.previous = dict(options.get("patches_replace", {}).get("attn2", {}))
        for name in ("input", "middle", "output"):
            for number in range(16):
                patcher.set_model_attn2_replace(hook, name, number)
        for block in self.previous:
            if len(block) == 3:
                patcher.set_model_attn2_replace(hook, *block)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        """Replace patch: the attention that was (previous patch or ``attention_function``), then the edited images'
        cond rows again over their kept keys with the BOS keys scaled (``q . C k = C (q . k)``)."""
        attend = attention_function()
        block = tuple(extra.get("block") or ())
        previous = (self.previous or {}).get((*block, extra.get("block_index", 0))) or (self.previous or {}).get(block)
        heads = extra["n_heads"]
        out = previous(q, k, v, extra) if previous is not None else attend(q, k, v, heads)
        if self.edit is None:
            return out
        try:
            edited = out.clone()
            for positions, rows in self.edited_rows(extra, q.shape[0], k.shape[1]).items():
                index = torch.tensor(rows, device=q.device)
                keys = k[index][:, list(positions)]
                keys[:, [j for j, pos in enumerate(positions) if pos % CONTEXT == 0]] *= self.edit.c_bos
                values = v[index][:, list(positions)]
                edited[index] = attend(q[index], keys, values, heads).to(out.dtype)
            return edited
        except Exception as err:  # drop the edit, keep sampling; after a fault memguard only watches
            log_failure("attention edit")
            self.attention_failed(err)
            return out

    def attention_failed(self, err: BaseException) -> None:
        self.edit = None

    def edited_rows(self, extra: dict, batch: int, length: int) -> dict[tuple[int, ...], list[int]]:
        """Rows of this call that are cond rows of edited images, grouped by their kept key positions."""
        marks = extra.get("cond_or_uncond") or []
        if not marks or self.edit is None:
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
