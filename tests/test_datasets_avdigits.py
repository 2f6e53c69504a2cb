"""The av-digits benchmark builder: determinism, speaker disjointness, sizes and the labelling rule.

The rule is checked against independent sources: the FSDD file name of each recording, the MNIST IDX
files parsed as in their README, and a 1-NN digit reader (scikit-learn) that sees only the frames.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from broaden.cli import main
from broaden.datasets import images_from_column
from broaden.datasets.avdigits import DIGIT_WORDS, _ImagePool, build_av_digits
from broaden.errors import DatasetError

SPEAKERS = {"george", "jackson", "lucas", "nicolas", "theo", "yweweler"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BROADEN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "broaden-cache"))


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("avd-seed0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BROADEN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "broaden-cache"))
        manifest = build_av_digits(out, seed=0, data_dir=data_dir)
    return out, manifest, pq.read_table(out / "items.parquet"), pq.read_table(out / "pretrain.parquet")


@pytest.fixture(scope="module")
def mnist_ref(data_dir):
    def idx(fn):
        b = gzip.open(fn).read()
        nd = b[3]
        dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
        return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)

    return idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz"), idx(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


FILES = ("items.parquet", "pretrain.parquet", "manifest.json")


def test_same_seed_gives_byte_identical_files(built, data_dir, tmp_path):
    out, manifest, _, _ = built
    build_av_digits(tmp_path / "again", seed=0, data_dir=data_dir)
    assert {f: _sha(out / f) for f in FILES} == {f: _sha(tmp_path / "again" / f) for f in FILES}
    assert manifest["files"] == {f: _sha(out / f) for f in FILES[:2]}
    assert json.loads((out / "manifest.json").read_text()) == manifest
    build_av_digits(tmp_path / "other", seed=1, data_dir=data_dir)
    assert _sha(tmp_path / "other" / "items.parquet") != _sha(out / "items.parquet")


def test_speaker_roles_are_disjoint_and_respected(built):
    _, manifest, items, pretrain = built
    roles = {k: set(v) for k, v in manifest["speakers"].items()}
    assert roles["pretrain"].isdisjoint(roles["train"]) and roles["pretrain"].isdisjoint(roles["test"])
    assert roles["train"].isdisjoint(roles["test"])
    assert set().union(*roles.values()) == SPEAKERS
    split = np.asarray(items["split"].to_pylist())
    speakers = np.asarray(items["speaker"].to_pylist())
    assert set(speakers[split == "train"]) == roles["train"]
    assert set(speakers[split == "test"]) == roles["test"]
    assert set(pretrain["speaker"].to_pylist()) == roles["pretrain"]
    assert set(pretrain["id"].to_pylist()).isdisjoint(items["recording"].to_pylist())


def test_sizes_and_balance(built):
    _, manifest, items, pretrain = built
    assert items.num_rows == 2000 and pretrain.num_rows == 1000
    assert len(set(items["id"].to_pylist())) == 2000
    rows = items.select(["split", "audio_sensitive", "label"]).to_pylist()
    by = Counter((r["split"], r["audio_sensitive"], r["label"]) for r in rows)
    for split in ("train", "test"):
        assert by[(split, True, 0)] == by[(split, True, 1)] == 150
        assert by[(split, False, 0)] == by[(split, False, 1)] == 350
        assert manifest["sizes"][split] == {"clips": 1000, "audio_sensitive": 300, "odd": 500}


def test_audio_is_the_real_recording_of_the_content_digit(built):
    _, _, items, _ = built
    for r in items.select(["recording", "audio_path", "digit", "label", "speaker"]).to_pylist():
        digit, speaker, _ = re.fullmatch(r"(\d)_([a-z]+)_(\d+)", r["recording"]).groups()
        path = Path(r["audio_path"])
        assert path.is_file() and path.stem == r["recording"]
        assert int(digit) == r["digit"] and speaker == r["speaker"] and r["label"] == r["digit"] % 2


def test_frames_are_real_mnist_images_of_the_frame_digit(built, mnist_ref):
    _, _, items, _ = built
    X, y = mnist_ref
    ids = np.asarray(items["mnist_ids"].to_pylist())
    frames = images_from_column(items["frames"].combine_chunks().flatten()).reshape(len(ids), 3, 28, 28)
    np.testing.assert_array_equal(frames, X[ids])
    frame_digit = items["frame_digit"].to_numpy()
    assert (y[ids] == frame_digit[:, None]).all()
    assert all(len(set(row)) == 3 for row in ids)  # distinct images within a clip
    split = np.asarray(items["split"].to_pylist())
    assert set(ids[split == "train"].ravel()).isdisjoint(ids[split == "test"].ravel())
    assert len(np.unique(ids)) == ids.size  # the default sizes never need to reuse an image


def test_image_pool_uses_every_image_before_reusing_any():
    rng = np.random.default_rng(5)
    ids = np.arange(20)
    pool = _ImagePool(ids, ids % 2, rng)  # 10 images of digit 0, 10 of digit 1
    draws = [pool.take(0, 3) for _ in range(7)]  # 21 frames from 10 images: two refills
    assert all(len(set(d)) == 3 for d in draws)
    flat = np.concatenate(draws)
    assert set(flat) == set(range(0, 20, 2))
    for end in range(1, len(flat) + 1):  # usage counts never drift apart by more than one
        used = np.bincount(flat[:end] // 2, minlength=10)
        assert used.max() - used.min() <= 1
    with pytest.raises(DatasetError, match="only 10 MNIST images of digit 1 for 11 frames"):
        pool.take(1, 11)


def test_labelling_rule_visual_vs_audio_sensitive(built):
    _, _, items, _ = built
    t = items.to_pydict()
    digit, frame_digit = np.asarray(t["digit"]), np.asarray(t["frame_digit"])
    sensitive, label = np.asarray(t["audio_sensitive"]), np.asarray(t["label"])
    assert (frame_digit[~sensitive] == digit[~sensitive]).all()
    # Audio-sensitive: every content digit sees each frame digit equally often (30 clips -> 3 each).
    for split in ("train", "test"):
        m = sensitive & (np.asarray(t["split"]) == split)
        for d in range(10):
            assert Counter(frame_digit[m & (digit == d)].tolist()) == {e: 3 for e in range(10)}
        assert (frame_digit[m] % 2 == label[m]).mean() == 0.5
    # Captions name the frame digit or no digit at all, never the spoken one when they differ.
    words = re.compile(r"\b(" + "|".join(DIGIT_WORDS) + r")\b")
    named = [words.findall(text) for text in t["text"]]
    assert all(n in ([], [DIGIT_WORDS[e]]) for n, e in zip(named, frame_digit))
    share = np.mean([bool(n) for n in named])
    assert share == 0.5


def test_frames_alone_solve_visual_clips_but_not_audio_sensitive(built, mnist_ref):
    """A 1-NN digit reader on frames (reference images from the train clips only) reads parity."""
    from sklearn.neighbors import KNeighborsClassifier

    _, _, items, _ = built
    X, y = mnist_ref
    ids = np.asarray(items["mnist_ids"].to_pylist())
    split = np.asarray(items["split"].to_pylist())
    ref = np.unique(ids[split == "train"].ravel())
    knn = KNeighborsClassifier(n_neighbors=1).fit(X[ref].reshape(len(ref), -1), y[ref])
    test = split == "test"
    read = knn.predict(X[ids[test].ravel()].reshape(-1, 784)).reshape(-1, 3)
    votes = np.array([np.bincount(r, minlength=10).argmax() for r in read])
    correct = votes % 2 == np.asarray(items["label"].to_pylist())[test]
    sensitive = np.asarray(items["audio_sensitive"].to_pylist())[test]
    assert correct[~sensitive].mean() > 0.95
    assert 0.4 < correct[sensitive].mean() < 0.6


def test_cli_build_and_bad_parameters(tmp_path, data_dir, capsys):
    assert main(["datasets", "build", "av-digits", "--out", str(tmp_path / "cli"), "--seed", "3",
                 "--data-dir", str(data_dir), "--frames", "2", "--test-speakers", "1"]) == 0
    assert "1500 train / 500 test clips (450 / 150 audio-sensitive)" in capsys.readouterr().out
    items = pq.read_table(tmp_path / "cli" / "items.parquet")
    assert {len(x) for x in items["mnist_ids"].to_pylist()} == {2}
    assert main(["datasets", "build", "av-music", "--out", str(tmp_path / "x")]) == 2
    assert "unknown benchmark 'av-music'" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="need at least one speaker per role"):
        build_av_digits(tmp_path / "y", data_dir=data_dir, pretrain_speakers=3, test_speakers=3)
    with pytest.raises(DatasetError, match=r"audio_sensitive_fraction must lie in \[0, 1\]"):
        build_av_digits(tmp_path / "y", data_dir=data_dir, audio_sensitive_fraction=1.5)
    assert not (tmp_path / "y").exists()
