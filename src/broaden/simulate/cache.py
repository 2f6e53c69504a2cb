"""The embedding cache now lives in :mod:`broaden.models.embedding_cache` (beside the encoders, so
``broaden train`` can use it without depending on simulate); this name stays for existing imports."""
from __future__ import annotations

from broaden.models.embedding_cache import cached_encode, embedding_cache_dir, texts_digest

__all__ = ["cached_encode", "embedding_cache_dir", "texts_digest"]
