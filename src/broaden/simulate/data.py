"""What a simulation runs on: features, oracle labels and the fixed test split of one dataset.

Text datasets go through a frozen sentence encoder (all-MiniLM-L6-v2 by default), cached once per
(dataset texts, encoder). A query–item relevance set is scored as a pair: query and item are embedded
separately and joined by cross features [u, v, |u−v|, u⊙v, cos(u, v)] — "query [SEP] title" through a
frozen bi-encoder leaves the classifier near the majority class. Images use their pixels (scaled to
0..1) unless an encoder is plugged in. The frozen latent that LSB can search is the classifier input.

One loader path: :func:`sim_data_from_table` turns any table (id, label, text fields / a ready embedding /
an image column, optional split, other columns kept) into :class:`SimData`; :func:`load_own_data` reads
a user's CSV / JSONL / Parquet file into it and :func:`load_sim_data` a registered dataset.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from broaden.datafiles import DATA_FILE_SUFFIXES, RowRef as _Where, check_ids as _check_ids, \
    first_null as _first_null, label_indices as _label_indices, nonempty_texts as _nonempty_texts, \
    read_data_file, require_columns, text_column as _text_column
from broaden._lazy import renamed
from broaden.errors import DatasetError
from broaden.models.features import pair_features
from broaden.models.embedding_cache import cached_encode

__all__ = ["DATA_FILE_SUFFIXES", "SimData", "TextEncoder", "load_own_data", "load_sim_data", "pair_features",
           "read_data_file", "sim_data_from_table", "stratified_subsample"]

TEXT_SEPARATOR = " | "
SPLIT_VALUES = ("train", "test")


@dataclass
class SimData:
    """Everything the protocol needs, row-aligned (one row per item).

    ``columns`` holds the data's other columns (e.g. ``group``, ``time``, ``orig_label``) so a scenario
    can define a sub-population from them.
    """

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
    columns: dict[str, np.ndarray] = field(default_factory=dict)

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
        self.columns = {k: np.asarray(v) for k, v in self.columns.items()}
        for key, values in self.columns.items():
            if len(values) != n:
                raise DatasetError(f"{self.name}: column {key!r} has {len(values)} rows, the data {n}")

    @property
    def discrepancy(self) -> str:
        """DESIGN §2: ordinal for graded or binary labels, nominal for unordered classes."""
        return "nominal" if self.task == "multiclass" else "ordinal"

    def subset(self, rows: np.ndarray) -> SimData:
        return replace(self, ids=self.ids[rows], labels=self.labels[rows], features=self.features[rows],
                       is_test=self.is_test[rows], texts=None if self.texts is None else [self.texts[i] for i in rows],
                       feature_info=dict(self.feature_info), columns={k: v[rows] for k, v in self.columns.items()})

    def regroup(self, groups: Sequence[Sequence[int | str]], names: Sequence[str] | None = None) -> SimData:
        """Merge classes: ``[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]`` makes MNIST "0–4 vs 5–9".

        Classes are given by index or name, each exactly once. The original labels stay in
        ``columns["orig_label"]`` (so a sub-population can be "original digit 4"); two groups make the
        task binary, ordered contiguous groups keep an ordinal task ordinal.
        """
        resolved = [[self._class_index(c) for c in g] for g in groups]
        flat = [c for g in resolved for c in g]
        if len(resolved) < 2 or any(not g for g in resolved) or sorted(flat) != list(range(self.num_classes)):
            missing = sorted(set(range(self.num_classes)) - set(flat))
            repeated = sorted({c for c in flat if flat.count(c) > 1})
            raise DatasetError(
                f"{self.name}: class groups must be at least two non-empty groups naming each of the "
                f"{self.num_classes} classes exactly once (missing {missing}, repeated {repeated})")
        names = list(names) if names else ["+".join(self.class_names[c] for c in g) for g in resolved]
        if len(names) != len(resolved):
            raise DatasetError(f"{self.name}: {len(names)} group names for {len(resolved)} class groups")
        mapping = np.empty(self.num_classes, dtype=np.int64)
        for j, g in enumerate(resolved):
            mapping[g] = j
        ordered = flat == list(range(self.num_classes))
        task = "binary" if len(resolved) == 2 else ("ordinal" if self.task == "ordinal" and ordered else "multiclass")
        # A second regroup keeps the first originals: "original digit 4" stays meaningful.
        columns = {**self.columns, "orig_label": self.columns.get("orig_label", self.labels)}
        return replace(self, labels=mapping[self.labels], num_classes=len(resolved), class_names=tuple(names),
                       task=task, feature_info=dict(self.feature_info), columns=columns)

    def _class_index(self, c: int | str) -> int:
        if isinstance(c, str) and c in self.class_names:
            return self.class_names.index(c)
        try:
            index = int(c)
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < self.num_classes:
            raise DatasetError(f"{self.name}: unknown class {c!r} in class groups "
                               f"(classes: {', '.join(self.class_names)}, or 0..{self.num_classes - 1})")
        return index


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

    @renamed(progress="show_progress")
    def __init__(self, path: str | os.PathLike | None = None, *, cache_dir=None, batch_size: int = 64,
                 num_threads: int | None = None, show_progress: bool = True):
        from broaden.models.text import configured_max_length, resolve_model_path

        self.path = resolve_model_path(path)
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.show_progress = show_progress
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
        return self._model.encode(texts, batch_size=self.batch_size, show_progress=self.show_progress)

    def encode(self, texts: list[str], tag: str) -> np.ndarray:
        return cached_encode(texts, self._encode, encoder_id=self.encoder_id, tag=tag, cache_dir=self.cache_dir)




def _split(table: pa.Table, split_col: str | None, labels: np.ndarray, test_share: float, split_seed: int,
           where: _Where) -> np.ndarray:
    """``is_test`` from a train/test column, else a seeded stratified random ``test_share`` per class."""
    if split_col is not None:
        values = np.asarray([str(v).strip().lower() if v is not None else "" for v in
                             table.column(split_col).to_pylist()], dtype=object)
        bad = ~np.isin(values, SPLIT_VALUES)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{where(split_col, row)}: split {table.column(split_col)[row].as_py()!r} "
                               f"is not one of {', '.join(SPLIT_VALUES)}")
        is_test = values == "test"
    else:
        if not 0 < test_share < 1:
            raise DatasetError(f"{where.source}: test share must lie strictly between 0 and 1, got {test_share}")
        rng = np.random.default_rng(split_seed)
        is_test = np.zeros(len(labels), dtype=bool)
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            is_test[rng.choice(rows, size=int(round(len(rows) * test_share)), replace=False)] = True
    if is_test.all() or not is_test.any():
        raise DatasetError(f"{where.source}: the data needs both train and test rows "
                           f"({int(is_test.sum())} of {len(is_test)} are test)")
    return is_test


def _embedding_matrix(col: pa.ChunkedArray, where: _Where, column: str) -> np.ndarray:
    """A list-of-floats column as (n, d) float32; a missing, short or non-finite row is named."""
    from broaden.io import list_matrix

    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise DatasetError(f"{where.source}: column {column!r} holds {col.type}, not a list of floats per row")
    if (row := _first_null(col)) is not None:
        raise DatasetError(f"{where(column, row)}: missing embedding")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DatasetError(f"{where(column, row)}: embedding has {lengths[row]} values, row 1 has {lengths[0]}")
    if len(lengths) and lengths[0] == 0:
        raise DatasetError(f"{where(column, 0)}: empty embedding")
    try:
        features = list_matrix(col, width=int(lengths[0]) if len(lengths) else None)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise DatasetError(f"{where.source}: column {column!r}: embedding values must be numbers ({exc})") from exc
    if not np.isfinite(features).all():
        row = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
        raise DatasetError(f"{where(column, row)}: embedding has a NaN or infinite value")
    return features


@renamed(progress="show_progress")
def sim_data_from_table(
    table: pa.Table,
    *,
    name: str,
    id_col: str = "id",
    label_col: str = "label",
    text_cols: Sequence[str] | None = None,
    pair: bool = False,
    embedding_col: str | None = None,
    image_col: str | None = None,
    split_col: str | None = None,
    class_names: Sequence[str] | None = None,
    task: str | None = None,
    test_share: float = 0.2,
    split_seed: int = 0,
    keep_cols: Sequence[str] | None = None,
    max_items: int | None = None,
    subsample_seed: int = 0,
    encoder: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    text_encoder_factory: Callable[..., TextEncoder] = TextEncoder,
    source: str | None = None,
) -> SimData:
    """Turn one table into :class:`SimData` — the single path for registered datasets and own data.

    Features come from ``embedding_col`` (ready vectors), else ``text_cols`` through the cached frozen
    encoder (``pair``: the first two are query and item, joined by :func:`pair_features`), else
    ``image_col`` pixels. Labels are class indices or class names (sorted unless ``class_names`` is
    given). ``split_col`` holds train/test; without it a seeded stratified ``test_share`` is test.
    Other columns (``keep_cols``, default all unused ones) go to ``SimData.columns``. ``max_items`` keeps
    a stratified subsample. Errors name ``source`` (the file), the column and the row.
    """
    source = source or name
    text_cols = list(text_cols or ())
    needed = [id_col, label_col, *text_cols, *(c for c in (embedding_col, image_col, split_col) if c)]
    require_columns(table, needed, source)
    if not (embedding_col or text_cols or image_col):
        raise DatasetError(f"{source}: name the features — text column(s), an embedding column or an image column")
    if pair and not embedding_col and len(text_cols) < 2:
        raise DatasetError(f"{source}: a query–item pair needs two text columns (query, item), got {text_cols}")
    where = _Where(source, table.column(id_col).to_pylist(), np.arange(table.num_rows))
    labels, class_names = _label_indices(table.column(label_col), class_names, where, label_col)
    if max_items:
        rows = stratified_subsample(labels, int(max_items), subsample_seed)
        table, labels, where = table.take(pa.array(rows)), labels[rows], where.take(rows)
    if (row := _first_null(table.column(id_col))) is not None:
        raise DatasetError(f"{where(id_col, row)}: missing id")
    ids = np.asarray(table.column(id_col).to_pylist())
    _check_ids(ids, where, id_col)
    is_test = _split(table, split_col, labels, test_share, split_seed, where)
    tag = name + (f"-sub{max_items}s{subsample_seed}" if max_items else "")
    columns = [_text_column(table, f) for f in text_cols]
    if pair and not embedding_col:
        enc = text_encoder_factory(encoder, cache_dir=cache_dir, show_progress=show_progress)
        (query_field, item_field), (queries, items) = text_cols[:2], columns[:2]
        _nonempty_texts(queries, where, query_field)
        _nonempty_texts(items, where, item_field)
        features = pair_features(enc.encode(queries, f"{tag}-{query_field}"), enc.encode(items, f"{tag}-{item_field}"))
        texts = [f"{q}{TEXT_SEPARATOR}{t}" for q, t in zip(queries, items)]
        recipe = {"kind": "pair", "encoder": enc.name, "fields": [query_field, item_field],
                  "features": "[u, v, |u-v|, u*v, cos]"}
    else:
        texts = [TEXT_SEPARATOR.join(parts) for parts in zip(*columns)] if columns else None
        if embedding_col:
            features = _embedding_matrix(table.column(embedding_col), where, embedding_col)
            recipe = {"kind": "embedding", "encoder": "given", "fields": [embedding_col]}
        elif text_cols:
            enc = text_encoder_factory(encoder, cache_dir=cache_dir, show_progress=show_progress)
            # Fields joined by ". " read like one passage to a sentence encoder (title + description).
            joined = [". ".join(p for p in parts if p) for parts in zip(*columns)]
            features = enc.encode(_nonempty_texts(joined, where, "+".join(text_cols)),
                                  f"{tag}-{'+'.join(text_cols)}")
            recipe = {"kind": "text", "encoder": enc.name, "fields": list(text_cols)}
        else:
            from broaden.datasets import images_from_column

            images = images_from_column(table.column(image_col))
            features = images.reshape(len(images), -1).astype(np.float32) / 255.0
            recipe = {"kind": "image", "encoder": "pixels/255", "fields": [image_col]}
    used = {id_col, label_col, split_col, embedding_col, image_col, *text_cols}
    kept = [c for c in table.column_names if c not in used] if keep_cols is None else list(keep_cols)
    if unknown := [c for c in kept if c not in table.column_names]:
        raise DatasetError(f"{source}: missing column(s) to keep {', '.join(map(repr, unknown))}")
    task = task or ("binary" if len(class_names) == 2 else "multiclass")
    return SimData(name, ids, labels, features, is_test, len(class_names), class_names, task, texts,
                   {**recipe, "dim": int(features.shape[1])},
                   {c: table.column(c).to_numpy() for c in kept})


def own_data_path(dataset: object) -> Path | None:
    """``dataset`` as a data file path, or None for a registered name (names hold no '/' nor a suffix)."""
    if isinstance(dataset, os.PathLike) or (isinstance(dataset, str) and (
            os.sep in dataset or "/" in dataset or Path(dataset).suffix.lower() in DATA_FILE_SUFFIXES)):
        return Path(dataset)
    return None


@renamed(progress="show_progress")
def load_own_data(
    path: str | os.PathLike,
    *,
    id_col: str = "id",
    text_cols: Sequence[str] | str | None = None,
    **options,
) -> SimData:
    """Your own data (CSV / JSONL / Parquet) as :class:`SimData`; see :func:`own_data_from_table`."""
    path = Path(path)
    text_cols = [text_cols] if isinstance(text_cols, str) else list(text_cols or ())
    table = read_data_file(path, [id_col, *text_cols])
    return own_data_from_table(table, name=path.stem, source=str(path), id_col=id_col, text_cols=text_cols,
                               **options)


@renamed(progress="show_progress")
def own_data_from_table(
    table: pa.Table,
    *,
    name: str = "data",
    id_col: str = "id",
    label_col: str = "label",
    text_cols: Sequence[str] | str | None = None,
    embedding_col: str | None = None,
    split_col: str | None = None,
    **options,
) -> SimData:
    """Own data already in memory as :class:`SimData`, with the defaults of a data file.

    Defaults: the features are the ``embedding`` column when there is one and no ``text_cols`` are
    named, else the ``text`` column; a ``split`` column, when present, fixes train/test.
    """
    text_cols = [text_cols] if isinstance(text_cols, str) else list(text_cols or ())
    if not text_cols and embedding_col is None:
        embedding_col = "embedding" if "embedding" in table.column_names else None
    if not text_cols and "text" in table.column_names:
        text_cols = ["text"]  # with an embedding these are only shown (reports, cluster terms), not encoded
    if split_col is None and "split" in table.column_names:
        split_col = "split"
    return sim_data_from_table(table, name=name, id_col=id_col, label_col=label_col, text_cols=text_cols,
                               embedding_col=embedding_col, split_col=split_col, **options)


@renamed(progress="show_progress")
def load_sim_data(
    dataset: str,
    *,
    data_dir: str | os.PathLike | None = None,
    encoder: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_items: int | None = None,
    subsample_seed: int = 0,
    show_progress: bool = True,
    text_encoder_factory: Callable[..., TextEncoder] = TextEncoder,
) -> SimData:
    """Load a registered dataset and turn it into :class:`SimData` (features cached on disk).

    ``max_items`` keeps a stratified subsample (same rows for the same seed) — the demo uses it so a cold
    cache encodes only what it needs.
    """
    from broaden.datasets import get_info, load_dataset

    info = get_info(dataset)
    if not (info.text_fields or info.image_field):
        raise DatasetError(
            f"{info.name}: simulate supports text, query-item pair and image datasets; this one is "
            f"{'audio' if info.audio_field else 'of another kind'} — build its features and call "
            "broaden.simulate.simulate(SimData(...)) instead"
        )
    return sim_data_from_table(
        load_dataset(info.name, data_dir), name=info.name, text_cols=info.text_fields, pair=info.pair,
        image_col=None if info.text_fields else info.image_field, split_col="split", class_names=info.class_names,
        task=info.task, max_items=max_items, subsample_seed=subsample_seed, encoder=encoder, cache_dir=cache_dir,
        show_progress=show_progress, text_encoder_factory=text_encoder_factory)
