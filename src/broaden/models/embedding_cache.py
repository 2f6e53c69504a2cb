"""Embedding cache: a dataset's texts are encoded once per (encoder, text recipe) and reused.

Each entry is ``<tag>-<key>.npy`` (float32, rows in the order of the texts) and a JSON sidecar with the
encoder identity, the SHA-256 of the texts and of the ``.npy`` bytes. An entry is used only when both
checksums match, so an edited dataset, another encoder or a damaged file means a fresh encode — never
stale vectors. Files are written atomically; ``.npy`` is loaded with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from broaden.io import atomic_path, write_text

FORMAT_VERSION = 1


def embedding_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``<broaden cache>/embeddings`` (``BROADEN_CACHE_DIR`` or ~/.cache/broaden)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from broaden.datasets.locate import cache_dir as broaden_cache

    return broaden_cache() / "embeddings"


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = str(t).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))  # length prefix: ["ab","c"] and ["a","bc"] differ
        h.update(b)
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_encode(
    texts: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    *,
    encoder_id: str,
    tag: str,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Vectors for ``texts`` from the cache, or ``encode(unique_texts)`` once and stored.

    Duplicate texts are encoded once (a relevance set repeats each query hundreds of times).
    ``encoder_id`` must change whenever the encoder's output would (model, weights, max length).
    """
    texts = [str(t) for t in texts]
    digest = texts_digest(texts)
    key = hashlib.sha256(f"{encoder_id}\n{digest}".encode()).hexdigest()[:20]
    folder = embedding_cache_dir(cache_dir)
    npy, meta = folder / f"{tag}-{key}.npy", folder / f"{tag}-{key}.json"
    cached = _load(npy, meta, digest, encoder_id)
    if cached is not None:
        return cached
    unique, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    vectors = np.asarray(encode(unique.tolist()), dtype=np.float32)[inverse.reshape(-1)]
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, vectors, allow_pickle=False)
    sidecar = {"format_version": FORMAT_VERSION, "encoder": encoder_id, "tag": tag, "n": len(texts),
               "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0, "texts_sha256": digest,
               "npy_sha256": _file_digest(npy)}
    write_text(json.dumps(sidecar, indent=2), meta)
    return vectors


def _load(npy: Path, meta: Path, digest: str, encoder_id: str) -> np.ndarray | None:
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        if (info.get("format_version") != FORMAT_VERSION or info.get("texts_sha256") != digest
                or info.get("encoder") != encoder_id or info.get("npy_sha256") != _file_digest(npy)):
            return None
        vectors = np.load(npy, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return vectors if vectors.shape[0] == info.get("n") else None
