"""Mirrors ``backend/sampling/condition.py`` of Forge: the compiled conditioning entries ``sampling_function`` works on.

``compile_conditions(cond)`` turns a conditioning tensor (SD1) or ``{"crossattn", "vector"}`` dict (SDXL) into a
one-entry list ``[{"cross_attn": ..., "model_conds": {"c_crossattn": ConditionCrossAttn, "y": Condition}}]``;
``compile_weighted_conditions(cond, cond_composition)`` makes one entry per AND part ``k`` (the rows of every image's
``k``-th part) whose ``strength`` is that part's weight. ``ConditionCrossAttn`` batches contexts of different lengths
by repeating them to their least common multiple.
"""

from __future__ import annotations

import math

import torch


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        repeats = [math.ceil(batch_size / tensor.shape[0])] + [1] * (tensor.ndim - 1)
        return tensor.repeat(repeats)[:batch_size]
    return tensor


class Condition:
    def __init__(self, cond: torch.Tensor):
        self.cond = cond

    def process_cond(self, batch_size: int, device, **kwargs) -> Condition:
        return self.__class__(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other: Condition) -> bool:
        return self.cond.shape == other.cond.shape

    def concat(self, others: list[Condition]) -> torch.Tensor:
        return torch.cat([self.cond] + [o.cond for o in others])


class ConditionCrossAttn(Condition):
    def can_concat(self, other: Condition) -> bool:
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 == s2:
            return True
        if s1[0] != s2[0] or s1[2] != s2[2]:
            return False
        return math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) <= 4

    def concat(self, others: list[Condition]) -> torch.Tensor:
        conds = [self.cond] + [o.cond for o in others]
        length = math.lcm(*(c.shape[1] for c in conds))
        return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in conds])


def compile_conditions(cond):
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return [{"cross_attn": cond, "model_conds": {"c_crossattn": ConditionCrossAttn(cond)}}]
    return [
        {
            "cross_attn": cond["crossattn"],
            "pooled_output": cond["vector"],
            "model_conds": {"c_crossattn": ConditionCrossAttn(cond["crossattn"]), "y": Condition(cond["vector"])},
        }
    ]


def compile_weighted_conditions(cond, weights: list[list[tuple[int, float]]]) -> list[dict]:
    results = []
    for part in map(list, zip(*weights)):
        rows = [row for row, _ in part]
        feed = {k: v[rows] for k, v in cond.items()} if isinstance(cond, dict) else cond[rows]
        entry = compile_conditions(feed)
        entry[0]["strength"] = part[-1][1]
        results += entry
    return results
