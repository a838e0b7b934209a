"""Mirrors ``backend/attention.py`` of Forge: one global ``attention_function(q, k, v, heads, mask=None)`` chosen at
import. The double always picks the PyTorch SDPA variant (``attention_pytorch``): ``q``/``k``/``v`` are
``(batch, tokens, heads * dim_head)``, split into heads, attended with ``scaled_dot_product_attention``, merged back.
"""

from __future__ import annotations

import torch


def attention_pytorch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask=None) -> torch.Tensor:
    b, _, inner = q.shape
    dim_head = inner // heads
    q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


attention_function = attention_pytorch
