"""What a simulation runs on: features, oracle labels and the fixed test split of one dataset.

Text datasets go through a frozen sentence encoder (all-MiniLM-L6-v2 by default), cached once per
(dataset texts, encoder). A query–item relevance set is scored as a pair: query and item are embedded
separately and joined by cross features [u, v, |u−v|, u⊙v, cos(u, v)] — "query [SEP] title" through a
frozen bi-encoder leaves the classifier near the majority class. Images use their pixels (scaled to
0..1) unless an encoder is plugged in. The frozen latent that LSB can search is the classifier input.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from broaden.errors import DatasetError
from broaden.simulate.cache import cached_encode

TEXT_SEPARATOR = " | "


@dataclass
class SimData:
    """Everything the protocol needs, row-aligned (one row per item)."""

    name: str
    ids: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    is_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    task: str = "multiclass"
    texts: list[str] | None = None
    feature_info: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.ids)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.features = np.asarray(self.features, dtype=np.float32)
        self.is_test = np.asarray(self.is_test, dtype=bool)
        if not (len(self.labels) == len(self.features) == len(self.is_test) == n):
            raise DatasetError(f"{self.name}: ids, labels, features and split must have the same length")
        if self.labels.min() < 0 or self.labels.max() >= self.num_classes:
            raise DatasetError(f"{self.name}: labels must lie in 0..{self.num_classes - 1}")
        if not self.class_names:
            self.class_names = tuple(str(c) for c in range(self.num_classes))

    @property
    def discrepancy(self) -> str:
        """DESIGN §2: ordinal for graded or binary labels, nominal for unordered classes."""
        return "nominal" if self.task == "multiclass" else "ordinal"

    def subset(self, rows: np.ndarray) -> SimData:
        return SimData(self.name, self.ids[rows], self.labels[rows], self.features[rows], self.is_test[rows],
                       self.num_classes, self.class_names, self.task,
                       None if self.texts is None else [self.texts[i] for i in rows], dict(self.feature_info))


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[u, v, |u−v|, u⊙v, cos(u, v)] for row-aligned query and item embeddings."""
    cos = (u * v).sum(1, keepdims=True) / np.maximum(
        np.linalg.norm(u, axis=1, keepdims=True) * np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return np.concatenate([u, v, np.abs(u - v), u * v, cos], axis=1).astype(np.float32)


def stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted row indices of about ``n`` rows keeping the class proportions (fixed by ``seed``)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.round(counts * n / len(labels))).astype(int)
    for c, q in zip(classes, quota):
        keep.append(rng.choice(np.flatnonzero(labels == c), size=min(q, (labels == c).sum()), replace=False))
    return np.sort(np.concatenate(keep))


class TextEncoder:
    """A cached sentence encoder: ``encode(texts, tag)`` returns (n, d) float32, computing each text once."""

    def __init__(self, path: str | os.PathLike | None = None, *, cache_dir=None, batch_size: int = 64,
                 num_threads: int | None = None, progress: bool = True):
        from broaden.models.text import configured_max_length, resolve_model_path

        self.path = resolve_model_path(path)
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.progress = progress
        config = (self.path / "config.json").read_bytes()
        self.encoder_id = (f"{self.path.name}:{hashlib.sha256(config).hexdigest()[:16]}:"
                           f"max_length={configured_max_length(self.path)}")
        self._model = None

    @property
    def name(self) -> str:
        from broaden.models.text import minilm_path

        # The packaged MiniLM sits in a folder called "model", which says nothing in a report.
        return "all-MiniLM-L6-v2" if self.path == minilm_path() else self.path.name

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            from broaden.models.text import SentenceEncoder

            self._model = SentenceEncoder(self.path, num_threads=self.num_threads)
        return self._model.encode(texts, batch_size=self.batch_size, progress=self.progress)

    def encode(self, texts: list[str], tag: str) -> np.ndarray:
        return cached_encode(texts, self._encode, encoder_id=self.encoder_id, tag=tag, cache_dir=self.cache_dir)


def _text_column(table: pa.Table, name: str) -> list[str]:
    return [("" if v is None else str(v)) for v in table.column(name).to_pylist()]


def load_sim_data(
    dataset: str,
    *,
    data_dir: str | os.PathLike | None = None,
    encoder: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_items: int | None = None,
    subsample_seed: int = 0,
    progress: bool = True,
    text_encoder_factory: Callable[..., TextEncoder] = TextEncoder,
) -> SimData:
    """Load a registered dataset and turn it into :class:`SimData` (features cached on disk).

    ``max_items`` keeps a stratified subsample (same rows for the same seed) — the demo uses it so a cold
    cache encodes only what it needs.
    """
    from broaden.datasets import get_info, load_dataset

    info = get_info(dataset)
    table = load_dataset(info.name, data_dir)
    labels = table.column("label").to_numpy().astype(np.int64)
    if max_items:
        table = table.take(pa.array(stratified_subsample(labels, int(max_items), subsample_seed)))
        labels = table.column("label").to_numpy().astype(np.int64)
    ids = np.asarray(table.column("id").to_pylist())
    is_test = np.asarray(table.column("split").to_pylist()) == "test"
    tag = info.name + (f"-sub{max_items}s{subsample_seed}" if max_items else "")
    if info.pair:
        enc = text_encoder_factory(encoder, cache_dir=cache_dir, progress=progress)
        query_field, item_field = info.text_fields[:2]
        queries, items = _text_column(table, query_field), _text_column(table, item_field)
        u = enc.encode(queries, f"{tag}-{query_field}")
        v = enc.encode(items, f"{tag}-{item_field}")
        features = pair_features(u, v)
        texts = [f"{q}{TEXT_SEPARATOR}{t}" for q, t in zip(queries, items)]
        recipe = {"kind": "pair", "encoder": enc.name, "fields": [query_field, item_field],
                  "features": "[u, v, |u-v|, u*v, cos]"}
    elif info.text_fields:
        enc = text_encoder_factory(encoder, cache_dir=cache_dir, progress=progress)
        columns = [_text_column(table, f) for f in info.text_fields]
        # Fields joined by ". " read like one passage to a sentence encoder (title + description).
        joined = [". ".join(p for p in parts if p) for parts in zip(*columns)]
        features = enc.encode(joined, f"{tag}-{'+'.join(info.text_fields)}")
        texts = [TEXT_SEPARATOR.join(parts) for parts in zip(*columns)]
        recipe = {"kind": "text", "encoder": enc.name, "fields": list(info.text_fields)}
    elif info.image_field:
        from broaden.datasets import images_from_column

        images = images_from_column(table.column(info.image_field))
        features = images.reshape(len(images), -1).astype(np.float32) / 255.0
        texts = None
        recipe = {"kind": "image", "encoder": "pixels/255", "fields": [info.image_field]}
    else:
        raise DatasetError(
            f"{info.name}: simulate supports text, query-item pair and image datasets; this one is "
            f"{'audio' if info.audio_field else 'of another kind'} — build its features and call "
            "broaden.simulate.simulate(SimData(...)) instead"
        )
    return SimData(info.name, ids, labels, features, is_test, info.num_classes, info.class_names, info.task,
                   texts, {**recipe, "dim": int(features.shape[1])})
