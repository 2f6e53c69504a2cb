"""Turn each verified dataset folder into one tidy Arrow table: ``id``, ``label``, ``split``, raw fields.

Labels are 0..C-1 (graded relevance 1-4 and AG's 1-4 become 0-3). Text stays exactly as published
(AG keeps its HTML-entity residue and backslash line breaks) so that nothing is decided for the user.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from broaden.datasets.registry import (
    CROWDFLOWER_TEST_FOLDS,
    FSDD_MAX_TEST_INDEX,
    HASH_TEST_FRACTION,
    DatasetInfo,
    FileSpec,
    get_info,
)
from broaden.datasets.verify import dataset_folder, listed_files, verify_dataset
from broaden.errors import DatasetError

SPLITS = ("train", "test")
MNIST_SHAPE = (28, 28)


def hash_split(ids: Sequence, salt: str, test_fraction: float = HASH_TEST_FRACTION) -> pa.Array:
    """Deterministic train/test assignment from the id alone (stable under row reordering or subsetting).

    An id is ``test`` when the first 8 bytes of ``sha256(f"{salt}:{id}")``, read big-endian, fall below
    ``test_fraction * 2**64``.
    """
    threshold = int(test_fraction * 2**64)
    is_test = [
        int.from_bytes(hashlib.sha256(f"{salt}:{i}".encode()).digest()[:8], "big") < threshold for i in ids
    ]
    return split_column(np.asarray(is_test, dtype=bool))


def split_column(is_test: np.ndarray) -> pa.Array:
    return pa.array(np.where(is_test, "test", "train"), type=pa.string())


# ----------------------------------------------------------------------------------------- readers
_TEXT_CONVERT = dict(strings_can_be_null=False, quoted_strings_can_be_null=False)


def _read_csv(path: Path, column_types: dict, column_names: list[str] | None = None) -> pa.Table:
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=column_names),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=column_types, **_TEXT_CONVERT),
        )
    except (pa.ArrowInvalid, KeyError) as exc:
        raise DatasetError(f"{path}: cannot parse as CSV with columns {list(column_types)} ({exc})") from exc


def _read_clickbait(folder: Path, info: DatasetInfo, files: Sequence[FileSpec]) -> pa.Table:
    headlines, labels = [], []
    for fname, label in (("clickbait_data.gz", 1), ("non_clickbait_data.gz", 0)):
        with gzip.open(folder / fname, "rt", encoding="utf-8") as fh:
            # Headlines are separated by blank lines; stripping only the line break keeps the text raw.
            lines = [line.rstrip("\r\n") for line in fh]
        kept = [line for line in lines if line.strip()]
        headlines += kept
        labels += [label] * len(kept)
    ids = np.arange(len(headlines), dtype=np.int64)
    return pa.table({"id": ids, "label": np.asarray(labels, np.int64), "headline": headlines})


def _read_ag_news(folder: Path, info: DatasetInfo, files: Sequence[FileSpec]) -> pa.Table:
    names = [n.strip() for n in (folder / "classes.txt").read_text(encoding="utf-8").splitlines() if n.strip()]
    if tuple(names) != info.class_names:
        raise DatasetError(f"{folder / 'classes.txt'}: expected classes {info.class_names}, found {names}")
    t = _read_csv(folder / "test.csv", {"class": pa.int64(), "title": pa.string(), "description": pa.string()},
                  ["class", "title", "description"])
    label = pc.subtract(t["class"], 1)
    ids = np.arange(t.num_rows, dtype=np.int64)
    return pa.table({"id": ids, "label": label, "title": t["title"], "description": t["description"]})


def _read_crowdflower(folder: Path, info: DatasetInfo, files: Sequence[FileSpec]) -> pa.Table:
    types = {"id": pa.int64(), "query": pa.string(), "product_title": pa.string(),
             "product_description": pa.string(), "median_relevance": pa.int64(),
             "relevance_variance": pa.float64()}
    parts = []
    for spec in files:
        fold = int(re.match(r"folds/(\d+)-test\.csv$", spec.path).group(1))
        t = _read_csv(folder / spec.path, types)
        parts.append(t.append_column("fold", pa.array(np.full(t.num_rows, fold, np.int64))))
    t = pa.concat_tables(parts)
    t = t.take(pc.sort_indices(t, [("id", "ascending")]))
    return pa.table({
        "id": t["id"],
        "label": pc.subtract(t["median_relevance"], 1),
        "query": t["query"],
        "product_title": t["product_title"],
        "product_description": t["product_description"],
        "relevance_variance": t["relevance_variance"],
        "fold": t["fold"],
    })


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's big-endian format, gzip-compressed) as a numpy uint8 array."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def image_array(images: np.ndarray) -> pa.Array:
    """(n, 28, 28) uint8 images as a fixed_size_list<fixed_size_list<uint8, 28>, 28> column."""
    n, h, w = images.shape
    rows = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1), type=pa.uint8()), w)
    return pa.FixedSizeListArray.from_arrays(rows, h)


def images_from_column(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Inverse of :func:`image_array`: an image column (nested lists) as an (n, H, W) uint8 array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if len(col) == 0:
        return np.zeros((0, *MNIST_SHAPE), np.uint8)
    h = len(col[0])
    flat = col.flatten().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.uint8, copy=False).reshape(len(col), h, -1)


def _read_mnist(folder: Path, info: DatasetInfo, files: Sequence[FileSpec]) -> pa.Table:
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    if images.shape[1:] != MNIST_SHAPE or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{folder}: images {images.shape} do not match labels {labels.shape}")
    ids = np.arange(len(labels), dtype=np.int64)
    return pa.table({"id": ids, "label": labels.astype(np.int64), "image": image_array(images)})


_FSDD_NAME = re.compile(r"recordings/(\d)_([A-Za-z]+)_(\d+)\.wav$")


def _read_fsdd(folder: Path, info: DatasetInfo, files: Sequence[FileSpec]) -> pa.Table:
    rows = []
    for spec in files:
        m = _FSDD_NAME.match(spec.path)
        if m is None:
            raise DatasetError(f"{folder / info.manifest.path}: unexpected entry {spec.path!r}")
        rows.append((int(m.group(1)), m.group(2), int(m.group(3)), spec.path))
    rows.sort()
    digit, speaker, index, rel = (list(c) for c in zip(*rows))
    root = folder.resolve()
    return pa.table({
        "id": [Path(r).stem for r in rel],
        "label": np.asarray(digit, np.int64),
        "audio_path": [str(root / r) for r in rel],
        "speaker": speaker,
        "index": np.asarray(index, np.int64),
    })


def _fsdd_split(t: pa.Table, info: DatasetInfo) -> pa.Array:
    return split_column(t["index"].to_numpy() <= FSDD_MAX_TEST_INDEX)


def _crowdflower_split(t: pa.Table, info: DatasetInfo) -> pa.Array:
    return split_column(np.isin(t["fold"].to_numpy(), CROWDFLOWER_TEST_FOLDS))


def _hash_split(t: pa.Table, info: DatasetInfo) -> pa.Array:
    return hash_split(t["id"].to_pylist(), info.name)


_READERS: dict[str, tuple[Callable, Callable]] = {
    "clickbait": (_read_clickbait, _hash_split),
    "ag_news": (_read_ag_news, _hash_split),
    "crowdflower_search_relevance": (_read_crowdflower, _crowdflower_split),
    "mnist": (_read_mnist, _hash_split),
    "fsdd": (_read_fsdd, _fsdd_split),
}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    split: str | None = None,
    *,
    verify: bool = True,
) -> pa.Table:
    """Load a real dataset as a table with ``id``, ``label`` (0..C-1), ``split`` and its raw fields.

    The data directory is ``data_dir``, else ``BROADEN_DATA_DIR``, else the user cache folder. Files are
    checked against their published SHA-256 first (cached by path, size and mtime); ``split`` keeps only
    ``"train"`` or ``"test"`` rows. The schema metadata carries the dataset name and class names.
    """
    info = get_info(name)
    if split is not None and split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS} or None, got {split!r}")
    folder = dataset_folder(info.name, data_dir)
    # A missing folder goes through verification too, for its clear "not found" message.
    if verify or not folder.is_dir():
        files = verify_dataset(info.name, data_dir)
    else:
        files = listed_files(info, folder)
    reader, splitter = _READERS[info.name]
    table = reader(folder, info, files)
    table = table.add_column(2, "split", splitter(table, info))
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    return table.replace_schema_metadata({
        b"broaden.dataset": info.name.encode(),
        b"broaden.class_names": json.dumps(list(info.class_names)).encode(),
        b"broaden.task": info.task.encode(),
    })
