"""Dataset loaders, checksum verification, data-dir resolution, listing and (offline) fetching.

Expected counts are the ones each dataset README publishes; text, images and labels are compared with
independent parses (pandas, the README's IDX snippet, soundfile).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from broaden.cli import main
from broaden.datasets import (
    DATASETS,
    get_info,
    hash_split,
    images_from_column,
    load_dataset,
    resolve_data_dir,
    verify_dataset,
)
from broaden.datasets import fetch as fetch_mod
from broaden.datasets import verify as verify_mod
from broaden.datasets.listing import list_datasets
from broaden.errors import DatasetError


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep the checksum cache out of the user's home; shared per module so hashing happens once."""
    monkeypatch.setenv("BROADEN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "broaden-cache"))


@pytest.fixture(scope="module")
def tables(data_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BROADEN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "broaden-cache"))
        return {name: load_dataset(name, data_dir) for name in DATASETS}


def counts(table, col="label"):
    return dict(sorted(Counter(table[col].to_pylist()).items()))


# ------------------------------------------------------------------------------ rows and label sets
README_LABEL_COUNTS = {
    "clickbait": {0: 16001, 1: 15999},
    "ag_news": {0: 1900, 1: 1900, 2: 1900, 3: 1900},
    "crowdflower_search_relevance": {0: 774, 1: 1476, 2: 1737, 3: 6171},
    "mnist": dict(enumerate([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])),
    "fsdd": {d: 300 for d in range(10)},
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_loads_with_readme_counts(tables, name):
    t = tables[name]
    info = DATASETS[name]
    assert t.num_rows == info.num_rows == sum(README_LABEL_COUNTS[name].values())
    assert counts(t) == README_LABEL_COUNTS[name]
    assert t.schema.names[:3] == ["id", "label", "split"]
    assert len(set(t["id"].to_pylist())) == t.num_rows
    assert set(t["split"].to_pylist()) == {"train", "test"}
    assert t.schema.metadata[b"broaden.dataset"].decode() == name
    for field in (*info.text_fields, *info.extra_fields, info.image_field, info.audio_field):
        if field:
            assert field in t.schema.names


def test_clickbait_matches_readme_parse(tables, data_dir):
    t = tables["clickbait"]
    ref = {}
    for fname, label in (("clickbait_data.gz", 1), ("non_clickbait_data.gz", 0)):
        text = gzip.open(data_dir / "clickbait" / fname, "rt", encoding="utf-8").read()
        for line in text.split("\n"):
            if line.strip():
                ref[line] = label
    assert dict(zip(t["headline"].to_pylist(), t["label"].to_pylist())) == ref


def test_ag_news_matches_pandas(tables, data_dir):
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(data_dir / "ag_news" / "test.csv", header=None, names=["label", "title", "description"],
                     keep_default_na=False)
    t = tables["ag_news"]
    assert t["title"].to_pylist() == df["title"].tolist()
    assert t["description"].to_pylist() == df["description"].tolist()
    assert t["label"].to_pylist() == (df["label"] - 1).tolist()
    assert get_info("agnews").class_names == ("World", "Sports", "Business", "Tech")


def test_crowdflower_fields_and_fold_split(tables, data_dir):
    pd = pytest.importorskip("pandas")
    t = tables["crowdflower_search_relevance"]
    df = pd.concat([pd.read_csv(data_dir / "crowdflower_search_relevance" / "folds" / f"{i}-test.csv",
                                keep_default_na=False).assign(fold=i) for i in range(1, 11)])
    df = df.sort_values("id")
    assert t["id"].to_pylist() == df["id"].tolist()
    for col in ("query", "product_title", "product_description", "fold"):
        assert t[col].to_pylist() == df[col].tolist()
    np.testing.assert_array_equal(t["label"].to_numpy(), df["median_relevance"].to_numpy() - 1)
    # README: 2,444 empty descriptions, 261 queries, variance 0-1.47 with mean 0.378, fold sizes.
    assert sum(d == "" for d in t["product_description"].to_pylist()) == 2444
    assert len(set(t["query"].to_pylist())) == 261
    var = t["relevance_variance"].to_numpy()
    assert var.min() == 0 and round(var.max(), 2) == 1.47 and round(var.mean(), 3) == 0.378
    assert list(counts(t, "fold").values()) == [1015, 1016, 1014, 1016, 1015, 1016, 1017, 1017, 1016, 1016]
    test = t.filter(pc.equal(t["split"], "test"))
    assert set(test["fold"].to_pylist()) == {9, 10} and test.num_rows == 1016 + 1016
    assert get_info("crowdflower").task == "ordinal" and get_info("crowdflower").pair


def _readme_idx(fn):
    b = gzip.open(fn).read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def test_mnist_images_match_idx_reference(tables, data_dir):
    t = tables["mnist"]
    X = _readme_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    y = _readme_idx(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")
    images = images_from_column(t["image"])
    assert images.dtype == np.uint8 and images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(images, X)
    np.testing.assert_array_equal(t["label"].to_numpy(), y)


def test_fsdd_official_split_speakers_and_audio(tables, data_dir):
    sf = pytest.importorskip("soundfile")
    t = tables["fsdd"]
    assert counts(t, "speaker") == {s: 500 for s in
                                    ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")}
    split = np.asarray(t["split"].to_pylist())
    index = t["index"].to_numpy()
    assert (split == "test").sum() == 300 and set(index[split == "test"]) == set(range(5))
    row = t.slice(1234, 1).to_pylist()[0]
    path = Path(row["audio_path"])
    assert path.is_absolute() and path.name == f"{row['label']}_{row['speaker']}_{row['index']}.wav"
    assert path.stem == row["id"]
    audio, rate = sf.read(path)
    assert rate == 8000 and audio.ndim == 1 and 0.1 < len(audio) / rate < 2.3


def test_hash_split_is_documented_rule_and_split_filter(tables, data_dir):
    t = tables["ag_news"]
    ids = t["id"].to_pylist()
    expected = ["test" if int.from_bytes(hashlib.sha256(f"ag_news:{i}".encode()).digest()[:8], "big")
                < 0.2 * 2**64 else "train" for i in ids]
    assert t["split"].to_pylist() == expected
    assert 0.18 < expected.count("test") / len(ids) < 0.22
    # Stable under subsetting: the split depends on the id alone.
    assert hash_split(ids[100:110], "ag_news").to_pylist() == expected[100:110]
    train = load_dataset("ag_news", data_dir, split="train")
    assert train.num_rows == expected.count("train") and set(train["split"].to_pylist()) == {"train"}
    with pytest.raises(DatasetError, match="split must be one of"):
        load_dataset("ag_news", data_dir, split="validation")


# ---------------------------------------------------------------------------- data dir resolution
def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("BROADEN_DATA_DIR", raising=False)
    monkeypatch.delenv("BROADEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert resolve_data_dir() == tmp_path / "xdg" / "broaden" / "data"
    monkeypatch.setenv("BROADEN_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_env_data_dir_is_used_by_load(monkeypatch, data_dir):
    monkeypatch.setenv("BROADEN_DATA_DIR", str(data_dir))
    assert load_dataset("mnist", split="test").num_rows > 0


# ------------------------------------------------------------------------ checksum failures
def _copy_dataset(src: Path, dst_root: Path, name: str) -> Path:
    dst = dst_root / name
    shutil.copytree(src / name, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dst.chmod(0o755)
    return dst


def test_corrupted_file_is_named(tmp_path, data_dir):
    folder = _copy_dataset(data_dir, tmp_path, "clickbait")
    target = folder / "non_clickbait_data.gz"
    raw = bytearray(target.read_bytes())
    raw[1000] ^= 0xFF  # same size: only the digest can catch it
    target.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"non_clickbait_data\.gz has SHA-256 [0-9a-f]{64}, expected 4baa2a3c"):
        load_dataset("clickbait", tmp_path)


def test_truncated_file_reports_size(tmp_path, data_dir):
    folder = _copy_dataset(data_dir, tmp_path, "mnist")
    target = folder / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz has 4532 bytes, expected 4542"):
        load_dataset("mnist", tmp_path)


def test_missing_file_and_missing_folder(tmp_path, data_dir):
    folder = _copy_dataset(data_dir, tmp_path, "crowdflower_search_relevance")
    (folder / "folds" / "7-test.csv").unlink()
    with pytest.raises(DatasetError, match=r"file .*folds/7-test\.csv is missing"):
        load_dataset("crowdflower", tmp_path)
    with pytest.raises(DatasetError, match=r"dataset 'ag_news' not found: .*ag_news does not exist"):
        load_dataset("ag_news", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", tmp_path)


def _fsdd_farm(data_dir: Path, root: Path) -> Path:
    """An FSDD folder of symlinks to the real recordings (cheap to build), with a real SHA256SUMS copy."""
    folder = root / "fsdd"
    (folder / "recordings").mkdir(parents=True)
    shutil.copyfile(data_dir / "fsdd" / "SHA256SUMS", folder / "SHA256SUMS")
    for wav in (data_dir / "fsdd" / "recordings").iterdir():
        (folder / "recordings" / wav.name).symlink_to(wav)
    return folder


def test_fsdd_manifest_catches_bad_recording_and_bad_manifest(tmp_path, data_dir):
    folder = _fsdd_farm(data_dir, tmp_path / "a")
    bad = folder / "recordings" / "3_theo_17.wav"
    raw = bytearray(bad.read_bytes())
    bad.unlink()
    raw[-1] ^= 0x01
    bad.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"recordings/3_theo_17\.wav has SHA-256"):
        load_dataset("fsdd", tmp_path / "a")
    bad.unlink()
    bad.symlink_to(data_dir / "fsdd" / "recordings" / bad.name)
    verify_dataset("fsdd", tmp_path / "a")
    (folder / "recordings" / "5_lucas_2.wav").unlink()
    with pytest.raises(DatasetError, match=r"5_lucas_2\.wav is missing"):
        verify_dataset("fsdd", tmp_path / "a")

    folder = _fsdd_farm(data_dir, tmp_path / "b")
    sums = folder / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("recordings/0_george_0.wav", "recordings/0_george_X.wav"))
    with pytest.raises(DatasetError, match=r"SHA256SUMS has SHA-256 .* expected 04e1baae"):
        load_dataset("fsdd", tmp_path / "b")


def test_digest_cache_skips_rehash_until_file_changes(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("BROADEN_CACHE_DIR", str(tmp_path / "cache"))
    folder = _copy_dataset(data_dir, tmp_path, "ag_news")
    calls = []
    real = verify_mod.sha256_file
    monkeypatch.setattr(verify_mod, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    verify_dataset("ag_news", tmp_path)
    assert sorted(calls) == ["classes.txt", "test.csv"]
    assert (tmp_path / "cache" / "checksums.json").is_file()
    calls.clear()
    verify_dataset("ag_news", tmp_path)  # a new process would read the same JSON cache
    assert calls == []
    target = folder / "classes.txt"
    target.write_text(target.read_text().replace("Tech", "Tekk"))
    with pytest.raises(DatasetError, match="classes.txt has SHA-256"):
        verify_dataset("ag_news", tmp_path)
    assert calls == ["classes.txt"]


# ---------------------------------------------------------------------------------- list command
def test_list_reports_verified_missing_and_corrupt(tmp_path, data_dir, capsys):
    statuses = {s.info.name: s for s in list_datasets(data_dir)}
    assert all(s.verified for s in statuses.values())
    assert statuses["fsdd"].files_present == statuses["fsdd"].files_expected == 3001

    folder = _copy_dataset(data_dir, tmp_path, "clickbait")
    (folder / "clickbait_data.gz").write_bytes(b"not gzip")
    statuses = {s.info.name: s for s in list_datasets(tmp_path)}
    assert not statuses["clickbait"].verified and "clickbait_data.gz has 8 bytes" in statuses["clickbait"].problem
    assert statuses["mnist"].problem == "not present" and statuses["mnist"].files_present == 0

    assert main(["datasets", "list", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("verified") == len(DATASETS)


# ---------------------------------------------------------------------------- fetch (no network)
@pytest.fixture
def offline_mirror(monkeypatch, data_dir):
    """Serve registry URLs from the local data dir; any real network access fails the test."""
    served: dict[str, bytes] = {}
    for info in DATASETS.values():
        for spec in info.files:
            served[spec.url] = (data_dir / info.name / spec.path).read_bytes()
        for rel in info.manifest_entries:
            served[info.manifest_url.format(path=rel)] = (data_dir / info.name / rel).read_bytes()

    def fake_open(url):
        if url not in served:
            raise OSError(f"404 {url}")
        return io.BytesIO(served[url])

    def no_network(*a, **k):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(fetch_mod, "_urlopen", fake_open)
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    return served


def test_fetch_downloads_verifies_and_is_idempotent(tmp_path, offline_mirror, data_dir):
    folder = fetch_mod.fetch_dataset("mnist", tmp_path)
    assert folder == tmp_path / "mnist"
    np.testing.assert_array_equal(images_from_column(load_dataset("mnist", tmp_path)["image"])[:5],
                                  _readme_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")[:5])
    assert fetch_mod.fetch_dataset("mnist", tmp_path) == folder
    assert [p.name for p in tmp_path.iterdir()] == ["mnist"]  # no staging folder left behind


def test_fetch_fsdd_rebuilds_published_manifest(tmp_path, offline_mirror, data_dir):
    assert main(["datasets", "fetch", "fsdd", "--data-dir", str(tmp_path)]) == 0
    assert (tmp_path / "fsdd" / "SHA256SUMS").read_bytes() == (data_dir / "fsdd" / "SHA256SUMS").read_bytes()
    assert load_dataset("fsdd", tmp_path).num_rows == 3000


def test_fetch_rejects_bad_download_and_keeps_existing_files(tmp_path, offline_mirror):
    url = DATASETS["clickbait"].files[0].url
    offline_mirror[url] = offline_mirror[url][:-1] + bytes([offline_mirror[url][-1] ^ 0xFF])
    with pytest.raises(DatasetError, match="downloaded file has SHA-256"):
        fetch_mod.fetch_dataset("clickbait", tmp_path)
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "ag_news").mkdir()
    (tmp_path / "ag_news" / "classes.txt").write_text("mine\n")
    with pytest.raises(DatasetError, match="classes.txt exists and differs"):
        fetch_mod.fetch_dataset("ag_news", tmp_path)
    assert (tmp_path / "ag_news" / "classes.txt").read_text() == "mine\n"
    assert not (tmp_path / "ag_news" / "test.csv").exists()


def test_fetch_cli_reports_unknown_dataset(capsys):
    assert main(["datasets", "fetch", "imagenet"]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
