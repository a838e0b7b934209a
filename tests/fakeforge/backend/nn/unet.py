"""Mirrors the parts of ``backend/nn/unet.py`` of Forge that patches see: ``IntegratedUNet2DConditionModel.forward(x,
timesteps, context, control, transformer_options)`` and the cross-attention section of
``BasicTransformerBlock._forward``.

The network is memguard's diffusers ``UNet2DConditionModel`` (so module names stay diffusers', e.g.
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k``; Forge's top-level blocks, ``input_blocks``,
``middle_block``, ``output_blocks``, are views of its layers grouped as Forge builds them); ``transformer_options``
reach every attention module through ``cross_attention_kwargs`` and an attention processor per module that plays
Forge's block:

* ``extra_options`` = the transformer options without ``patches`` / ``patches_replace``, plus ``block`` (the ldm name
  Forge's UNet sets, ``("input", id)`` / ``("middle", 0)`` / ``("output", id)``), ``block_index`` (the transformer's
  index in its block), ``n_heads`` and ``dim_head``;
* cross-attention (``attn2``): every ``attn2_patch`` ``fn(n, context, value, extra_options) -> (n, context, value)``
  runs first (``value`` starts as ``context``); then the ``attn2`` replace patch keyed ``(name, id, block_index)`` or
  ``(name, id)``, if any, gets ``(to_q(n), to_k(context), to_v(value), extra_options)``; otherwise
  ``CrossAttention.forward``: ``to_q(n)``, ``to_k(context)``, ``to_v(value or context)``, ``attention_function``;
  then ``to_out``. ``attn2_output_patch`` ``fn(out, extra_options)`` last.
* self-attention (``attn1``) is plain (attn1 patches are not mirrored).

Called without options (``unet(x, t, encoder_hidden_states=...)``) the processors compute exactly what diffusers'
SDPA processor does. SDXL's ``y`` (the vector) is the UNet's ``label_emb`` input: diffusers' ``add_embedding``, fed
through ``added_cond_kwargs`` (the SDXL engine double made ``add_time_proj`` the identity: ``y`` is embedded already).
"""

from __future__ import annotations

import torch
from backend import attention
from modules.sd_models import ldm_blocks


class _BlockAttention:
    """Attention processor of one diffusers ``Attention`` module, playing Forge's transformer block around it."""

    def __init__(self, block: tuple[str, int], block_index: int):
        self.block = block
        self.block_index = block_index

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, transformer_options=None
    ):
        heads = attn.heads
        if encoder_hidden_states is None:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
            return attn.to_out[1](attn.to_out[0](attention.attention_function(q, k, v, heads)))

        options = transformer_options or {}
        extra = {k: v for k, v in options.items() if k not in ("patches", "patches_replace")}
        extra.update(
            block=self.block, block_index=self.block_index, n_heads=heads, dim_head=attn.to_q.out_features // heads
        )
        patches = options.get("patches", {})
        replace = options.get("patches_replace", {}).get("attn2", {})

        n, context, value = hidden_states, encoder_hidden_states, None
        if "attn2_patch" in patches:
            value = context
            for patch in patches["attn2_patch"]:
                n, context, value = patch(n, context, value, extra)
        key = (*self.block, self.block_index)
        if key not in replace:
            key = self.block
        if key in replace:
            value = context if value is None else value
            out = replace[key](attn.to_q(n), attn.to_k(context), attn.to_v(value), extra)
        else:
            q, k = attn.to_q(n), attn.to_k(context)
            v = attn.to_v(context if value is None else value)
            out = attention.attention_function(q, k, v, heads)
        out = attn.to_out[1](attn.to_out[0](out))
        for patch in patches.get("attn2_output_patch", []):
            out = patch(out, extra)
        return out


def _ldm_blocks(unet) -> list[tuple[object, tuple[str, int]]]:
    """Each diffusers ``Transformer2DModel`` with the ldm block name Forge's UNet gives it."""
    found = []
    for d, down in enumerate(unet.down_blocks):
        per = len(down.resnets) + 1
        found += [(t, ("input", 1 + d * per + a)) for a, t in enumerate(getattr(down, "attentions", None) or [])]
    found += [(t, ("middle", 0)) for t in getattr(unet.mid_block, "attentions", None) or []]
    for u, up in enumerate(unet.up_blocks):
        per = len(up.resnets)
        found += [(t, ("output", u * per + a)) for a, t in enumerate(getattr(up, "attentions", None) or [])]
    return found


class IntegratedUNet2DConditionModel(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet
        for transformer, block in _ldm_blocks(unet):
            for index, tb in enumerate(transformer.transformer_blocks):
                for attn in (tb.attn1, tb.attn2):
                    if attn is not None:
                        attn.set_processor(_BlockAttention(block, index))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def input_blocks(self) -> torch.nn.ModuleList:
        """Forge's top-level blocks (``input_blocks``, ``middle_block``, ``output_blocks``, built as ldm's): views of
        the wrapped UNet's layers, grouped by the A1111 double's ``modules.sd_models.ldm_blocks``."""
        return ldm_blocks(self.unet)[0]

    @property
    def middle_block(self) -> torch.nn.Module:
        return ldm_blocks(self.unet)[1]

    @property
    def output_blocks(self) -> torch.nn.ModuleList:
        return ldm_blocks(self.unet)[2]

    @property
    def config(self):
        """Forge's network is a diffusers ``ConfigMixin`` (``register_to_config``: ``in_channels``, ...); the double's
        config is the wrapped diffusers UNet's, which also has the pixel-space test model's ``sample_size``."""
        return self.unet.config

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        kwargs = {"transformer_options": transformer_options or {}}
        added = None
        if y is not None:  # SDXL: label_emb(y) is diffusers' add_embedding (see modules/sd_models_xl.py's double)
            config = self.unet.config
            pooled = int(config.projection_class_embeddings_input_dim) - 6 * int(config.addition_time_embed_dim)
            added = {"text_embeds": y[:, :pooled], "time_ids": y[:, pooled:]}
        return self.unet(
            x, timesteps, encoder_hidden_states=context, cross_attention_kwargs=kwargs, added_cond_kwargs=added
        ).sample
