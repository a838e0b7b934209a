"""``auto``: the strongest combination the host can afford.

With gradients available (the command line, A1111), Wen et al.'s embedding optimization pushed below the threshold,
then Jain et al.'s delayed guidance on the optimized conditioning; without gradients (Forge samples under
``torch.inference_mode``), Ren et al.'s attention edit with delayed guidance. When the optimization stops with an
image still above the threshold (its iteration budget spent), the attention edit is added as the next step. The
knobs were chosen on the miniature model's trade-off curves (``bench/mitigation.py``; docs/benchmarks.md, Mitigation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from .attention import Attention
from .base import Case, Intervention, merge, still_above
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
        if self.gradients and any(still_above(asdict(r), case.target) for r in first.reports):
            first = merge(first, self.attention(replace(case, cond=first.cond, pooled=first.pooled)))
            for report in first.reports:
                report.notes.append(f"above the threshold {case.target:.3g} after optimizing: attention edit added")
        return merge(first, self.guidance(replace(case, cond=first.cond, pooled=first.pooled)))
