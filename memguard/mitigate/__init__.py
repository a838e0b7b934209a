"""Mitigation strategies behind one interface (``base.Strategy``): embedding, attention, guidance, auto."""

from .attention import Attention
from .auto import Auto
from .base import AttentionEdit, Case, Intervention, Report, Strategy
from .embedding import Embedding
from .guidance import Guidance

__all__ = ["Attention", "AttentionEdit", "Auto", "Case", "Embedding", "Guidance", "Intervention", "Report", "Strategy"]
