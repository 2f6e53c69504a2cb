"""av-digits: an audio-sensitive benchmark of short "clips" built only from real MNIST and FSDD data.

Each clip has a content digit d, taken from one real FSDD recording (the clip's audio), and the binary
label ``d % 2`` (0 = even, 1 = odd). A clip also carries ``frames`` handwritten MNIST images of one
*frame digit* and a caption ``text`` that either names the frame digit or is neutral.

- Visual clips (``audio_sensitive = False``): the frame digit is d, so frames (and a naming caption)
  determine the label without audio.
- Audio-sensitive clips: the frame digit is drawn independently of d (each of 0-9 equally often per
  content digit), so frames and text are statistically independent of the label and only the audio
  decides it. Both kinds look alike from frames/text alone: a frames/text-only model is at chance there.

Speakers are split by the seed into three disjoint roles: audio-encoder pre-training (``pretrain.parquet``),
model training and test. MNIST images are halved by a hash of their id, so no image appears in both a
train and a test clip. Same seed and inputs -> byte-identical files (``manifest.json`` lists their SHA-256).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from broaden.datasets.loaders import hash_split, image_array, images_from_column, load_dataset
from broaden.datasets.registry import DATASETS, FSDD_SPEAKERS
from broaden.datasets.verify import sha256_file
from broaden.errors import DatasetError
from broaden.io import write_table, write_text

NAME = "av-digits"
CLASS_NAMES = ("even", "odd")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NAMING_CAPTIONS = ("a handwritten {w}", "frames showing the digit {w}", "someone writes {w} by hand")
NEUTRAL_CAPTIONS = ("a short handwritten-digit clip", "digits written by hand", "an untitled clip")
IMAGE_SALT = "av-digits-images"


def _split_speakers(rng: np.random.Generator, n_pretrain: int, n_test: int) -> dict[str, list[str]]:
    if n_pretrain < 1 or n_test < 1 or n_pretrain + n_test >= len(FSDD_SPEAKERS):
        raise DatasetError(
            f"{NAME}: need at least one speaker per role among FSDD's {len(FSDD_SPEAKERS)}; got "
            f"{n_pretrain} pre-training and {n_test} test speakers"
        )
    order = [FSDD_SPEAKERS[i] for i in rng.permutation(len(FSDD_SPEAKERS))]
    return {
        "pretrain": sorted(order[:n_pretrain]),
        "test": sorted(order[n_pretrain:n_pretrain + n_test]),
        "train": sorted(order[n_pretrain + n_test:]),
    }


class _ImagePool:
    """Hands out distinct images of a digit, in a seeded order, reshuffling only once all were used."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        self._rng = rng
        self._by_digit = {d: ids[labels == d] for d in range(10)}
        self._queue = {d: np.empty(0, np.int64) for d in range(10)}

    def take(self, digit: int, k: int) -> np.ndarray:
        pool = self._by_digit[digit]
        if len(pool) < k:
            raise DatasetError(f"{NAME}: only {len(pool)} MNIST images of digit {digit} for {k} frames")
        queue = self._queue[digit]
        if len(queue) < k:
            # A new round uses every image once; the ones still queued go last in it, so the clip that
            # straddles two rounds never shows one image twice.
            fresh = self._rng.permutation(pool)
            queued = np.isin(fresh, queue)
            queue = np.concatenate([queue, fresh[~queued], fresh[queued]])
        self._queue[digit] = queue[k:]
        return queue[:k]


def _lists(values: np.ndarray | pa.Array, width: int, n: int) -> pa.ListArray:
    """Rows of ``width`` consecutive values as a variable-size list column (the items' on-disk form)."""
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)


def _clips(recordings: pa.Table, split: str, pool: _ImagePool, images: np.ndarray,
           rng: np.random.Generator, *, frames: int, audio_sensitive_fraction: float,
           caption_fraction: float) -> pa.Table:
    """One clip per recording, in a seeded random order."""
    digits = recordings["label"].to_numpy()
    n = len(digits)
    sensitive = np.zeros(n, bool)
    frame_digit = digits.copy()
    named = np.zeros(n, bool)
    for d in range(10):
        rows = np.flatnonzero(digits == d)
        k = round(audio_sensitive_fraction * len(rows))
        chosen = rng.permutation(rows)[:k]
        sensitive[chosen] = True
        # Each frame digit equally often (up to rounding) for every content digit: independent of d.
        frame_digit[chosen] = rng.permutation(np.arange(k) % 10)
        for group in (np.setdiff1d(rows, chosen), chosen):
            named[rng.permutation(group)[: round(caption_fraction * len(group))]] = True
    templates = rng.integers(0, len(NAMING_CAPTIONS), size=n)
    texts = [
        (NAMING_CAPTIONS if nm else NEUTRAL_CAPTIONS)[t].format(w=DIGIT_WORDS[fd])
        for nm, t, fd in zip(named, templates, frame_digit)
    ]
    image_ids = np.stack([pool.take(int(fd), frames) for fd in frame_digit]).astype(np.int64).reshape(-1)
    table = pa.table({
        "id": pc.binary_join_element_wise("avd-", recordings["id"], ""),
        "label": digits % 2,
        "digit": digits,
        "frame_digit": frame_digit,
        "text": texts,
        "frames": _lists(image_array(images[image_ids]), frames, n),
        "mnist_ids": _lists(pa.array(image_ids), frames, n),
        "recording": recordings["id"],
        "audio_path": recordings["audio_path"],
        "speaker": recordings["speaker"],
        "audio_sensitive": sensitive,
        "split": pa.array([split] * n, pa.string()),
    })
    return table.take(rng.permutation(n))


def build_av_digits(
    out: str | os.PathLike,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    *,
    frames: int = 3,
    audio_sensitive_fraction: float = 0.3,
    caption_fraction: float = 0.5,
    pretrain_speakers: int = 2,
    test_speakers: int = 2,
) -> dict:
    """Build av-digits into ``out``: ``items.parquet``, ``pretrain.parquet`` and ``manifest.json``.

    Every FSDD recording of a train or test speaker becomes one clip; the pre-training speakers'
    recordings are listed, unchanged, in ``pretrain.parquet`` for the audio encoder. Returns the manifest.
    """
    if frames < 1:
        raise DatasetError(f"{NAME}: frames must be at least 1, got {frames}")
    for label, value in (("audio_sensitive_fraction", audio_sensitive_fraction),
                         ("caption_fraction", caption_fraction)):
        if not 0.0 <= value <= 1.0:
            raise DatasetError(f"{NAME}: {label} must lie in [0, 1], got {value}")
    rng = np.random.default_rng(seed)
    fsdd = load_dataset("fsdd", data_dir)
    mnist = load_dataset("mnist", data_dir)
    images = images_from_column(mnist["image"])  # row i holds MNIST id i
    mnist_ids = mnist["id"].to_numpy()
    mnist_labels = mnist["label"].to_numpy()
    image_half = np.asarray(hash_split(mnist_ids.tolist(), IMAGE_SALT, test_fraction=0.5).to_pylist())

    roles = _split_speakers(rng, pretrain_speakers, test_speakers)
    parts = []
    for split in ("train", "test"):
        recordings = fsdd.filter(pc.is_in(fsdd["speaker"], pa.array(roles[split])))
        half = image_half == split
        pool = _ImagePool(mnist_ids[half], mnist_labels[half], rng)
        parts.append(_clips(recordings, split, pool, images, rng, frames=frames,
                            audio_sensitive_fraction=audio_sensitive_fraction,
                            caption_fraction=caption_fraction))
    items = pa.concat_tables(parts)
    pretrain = fsdd.filter(pc.is_in(fsdd["speaker"], pa.array(roles["pretrain"])))

    out = Path(out)
    write_table(items, out / "items.parquet")
    write_table(pretrain, out / "pretrain.parquet")
    manifest = {
        "name": NAME,
        "seed": seed,
        "rule": "label = spoken digit % 2 (0 even, 1 odd); visual clips show the spoken digit in every frame; "
                "audio-sensitive clips show a frame digit drawn independently of the spoken digit; the caption "
                "names the frame digit or is neutral",
        "class_names": list(CLASS_NAMES),
        "parameters": {"frames": frames, "audio_sensitive_fraction": audio_sensitive_fraction,
                       "caption_fraction": caption_fraction, "pretrain_speakers": pretrain_speakers,
                       "test_speakers": test_speakers},
        "speakers": roles,
        "sizes": _sizes(items, pretrain),
        "sources": {name: _source_digests(name) for name in ("mnist", "fsdd")},
        "files": {f: sha256_file(out / f) for f in ("items.parquet", "pretrain.parquet")},
    }
    write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", out / "manifest.json")
    return manifest


def _sizes(items: pa.Table, pretrain: pa.Table) -> dict:
    sizes = {"pretrain_recordings": pretrain.num_rows}
    split = np.asarray(items["split"].to_pylist())
    sensitive = items["audio_sensitive"].to_numpy(zero_copy_only=False)
    label = items["label"].to_numpy()
    for s in ("train", "test"):
        m = split == s
        sizes[s] = {"clips": int(m.sum()), "audio_sensitive": int((m & sensitive).sum()),
                    "odd": int((m & (label == 1)).sum())}
    return sizes


def _source_digests(name: str) -> dict[str, str]:
    info = DATASETS[name]
    specs: Sequence = list(info.files) + ([info.manifest] if info.manifest else [])
    return {s.path: s.sha256 for s in specs}


#: Builders reachable as ``broaden datasets build NAME``.
BUILDERS = {NAME: build_av_digits}


def build_dataset(name: str, out: str | os.PathLike, seed: int = 0,
                  data_dir: str | os.PathLike | None = None, **options) -> dict:
    """Build the benchmark dataset ``name`` (see :data:`BUILDERS`) into ``out``; returns its manifest."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise DatasetError(f"unknown benchmark {name!r}; can build: {', '.join(BUILDERS)}") from None
    return builder(out, seed, data_dir, **options)
