"""``auto``: the strongest combination the host can afford.

With gradients available (the command line, A1111), Wen et al.'s embedding optimization pushed below the threshold,
then Jain et al.'s delayed guidance on the optimized conditioning; without gradients (Forge samples under
``torch.inference_mode``), Ren et al.'s attention edit with delayed guidance. The knobs were chosen on the miniature
model's trade-off curves (``bench/mitigation.py``; README, Results).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .attention import Attention
from .base import Case, Intervention, merge
from .embedding import Embedding
from .guidance import Guidance


@dataclass
class Auto:
    gradients: bool = True
    embedding: Embedding = field(default_factory=lambda: Embedding(max_iters=20, target_ratio=0.25))
    attention: Attention = field(default_factory=Attention)
    guidance: Guidance = field(default_factory=Guidance)
    name: str = "auto"

    def __call__(self, case: Case) -> Intervention:
        first = self.embedding(case) if self.gradients else self.attention(case)
        return merge(first, self.guidance(replace(case, cond=first.cond)))
