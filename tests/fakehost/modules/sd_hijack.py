"""Mirrors the parts of ``modules/sd_hijack.py`` (``StableDiffusionModelHijack``, ``model_hijack``) that
processing and the text encoder wrapper use: ``comments``, ``extra_generation_params``, ``clear_comments``,
``fixes``, ``embedding_db`` and ``get_prompt_lengths``.

Simplification: no textual-inversion embeddings (``embedding_db.find_embedding_at_position`` never finds one), no
attention optimisations, no circular padding.
"""

from __future__ import annotations

from typing import Any


class EmbeddingDatabase:
    """Empty textual-inversion database (mirrors ``textual_inversion.EmbeddingDatabase``'s lookup API)."""

    def __init__(self) -> None:
        self.word_embeddings: dict = {}
        self.ids_lookup: dict = {}

    def load_textual_inversion_embeddings(self, force_reload: bool = False) -> None:
        """No embeddings directory is scanned."""

    def find_embedding_at_position(self, tokens: list[int], offset: int) -> tuple[Any, Any]:
        return None, None


class StableDiffusionModelHijack:
    def __init__(self) -> None:
        self.fixes: Any = None
        self.layers: Any = None
        self.circular_enabled = False
        self.clip: Any = None
        self.optimization_method: str | None = None
        self.extra_generation_params: dict = {}
        self.comments: list[str] = []
        self.embedding_db = EmbeddingDatabase()

    def hijack(self, m: Any) -> None:
        """The double builds ``m.cond_stage_model`` already wrapped; remember it as ``clip``."""
        self.clip = m.cond_stage_model

    def undo_hijack(self, m: Any) -> None:
        self.clip = None

    def apply_circular(self, enable: bool) -> None:
        self.circular_enabled = enable

    def clear_comments(self) -> None:
        self.comments = []
        self.extra_generation_params = {}

    def get_prompt_lengths(self, text: str) -> tuple[Any, Any]:
        if self.clip is None:
            return "-", "-"
        _, token_count = self.clip.process_texts([text])
        return token_count, self.clip.get_target_prompt_token_count(token_count)


model_hijack = StableDiffusionModelHijack()
