"""Issue 10: the audio-encoder pre-training and the VLMAE benchmark pipeline (benchmarks/bench_vlmae.py).

- Speakers: encoder pre-training, model training and test never share a speaker, checked from the FSDD
  file names ``{digit}_{speaker}_{index}.wav`` (independent of the builder's ``speaker`` column) on the
  builder's outputs and on what the pre-trained checkpoint records it was trained on.
- Pre-training learns: on synthetic tones (10 pitches = 10 "digits") the saved encoder's mean state lets
  a scikit-learn logistic regression recover the class on held-out clips.
- A smoke run of the whole benchmark on a few clips: its metrics agree with scikit-learn on the scored
  tables, the VLMAE weights cover exactly each clip's valid encoder positions, the encoder stays frozen.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from broaden.errors import DatasetError
from broaden.models.pretrain_audio import PretrainConfig, pretrain_audio_encoder, pretraining_info

REPO = Path(__file__).resolve().parents[1]
FILE_NAME = re.compile(r"(\d)_([a-z]+)_(\d+)\.wav$")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_vlmae
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return bench_vlmae


def _speakers(paths) -> set[str]:
    return {FILE_NAME.search(p).group(2) for p in paths}


TINY_ENCODER = dict(d_model=32, layers=1, heads=2, ffn_dim=64, epochs=1, batch_size=16, num_threads=1)
TINY_MODEL = dict(backbone="mome", width=32, layers=1, heads=2, vl_layers=1, max_text_length=12, num_frames=3,
                  frame_channels=1, frame_size=[28, 28], patch_size=14, att_dim=16, att_heads=1,
                  mlp_layers=2, mlp_hidden=16)
TINY_TRAIN = dict(lr=1e-3, batch_size=16, epochs=1, patience=1, eval_metric="loss", eval_fraction=0.25)


@pytest.fixture(scope="module")
def smoke(bench, data_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("vlmae-smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BROADEN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "broaden-cache"))
        results = bench.run_benchmark(work, data_dir=data_dir, seeds=(0, 1), heads=("none", "vlmae"),
                                      pretrain=PretrainConfig(**TINY_ENCODER), model=TINY_MODEL,
                                      train=TINY_TRAIN, limit=24, threads=1, progress=False)
    return work, results


# ------------------------------------------------------------------------------------ speakers
@pytest.mark.parametrize("seed", [0, 3])
def test_builder_roles_share_no_speaker_or_recording(data_dir, tmp_path, monkeypatch, seed):
    from broaden.datasets.avdigits import build_av_digits

    monkeypatch.setenv("BROADEN_CACHE_DIR", str(tmp_path / "cache"))
    manifest = build_av_digits(tmp_path, seed=seed, data_dir=data_dir)
    items = pq.read_table(tmp_path / "items.parquet", columns=["split", "audio_path", "recording"])
    pretrain = pq.read_table(tmp_path / "pretrain.parquet", columns=["id", "audio_path"])
    split = np.asarray(items["split"].to_pylist())
    paths = np.asarray(items["audio_path"].to_pylist())
    roles = {"pretrain": _speakers(pretrain["audio_path"].to_pylist()),
             "train": _speakers(paths[split == "train"]), "test": _speakers(paths[split == "test"])}
    assert all(len(s) == 2 for s in roles.values())
    assert not (roles["pretrain"] & roles["train"] or roles["pretrain"] & roles["test"]
                or roles["train"] & roles["test"])
    assert {k: set(v) for k, v in manifest["speakers"].items()} == roles
    assert not set(pretrain["id"].to_pylist()) & set(items["recording"].to_pylist())


def test_smoke_encoder_was_pretrained_on_pretrain_speakers_only(smoke):
    work, results = smoke
    info = pretraining_info(work / "encoder")
    pretrain = pq.read_table(work / "avd" / "pretrain.parquet")
    by_id = dict(zip(pretrain["id"].to_pylist(), pretrain["audio_path"].to_pylist()))
    assert info["recordings"] and set(info["recordings"]) <= set(by_id)
    used_speakers = _speakers([by_id[r] for r in info["recordings"]])
    assert set(info["speakers"]) == used_speakers
    for split in ("train", "test"):
        clips = pq.read_table(work / f"{split}.parquet", columns=["audio_path", "recording"])
        assert not used_speakers & _speakers(clips["audio_path"].to_pylist())
        assert not set(info["recordings"]) & set(clips["recording"].to_pylist())
    assert results["encoder"]["speakers"] == sorted(used_speakers)


# ----------------------------------------------------------------------------------- pre-training
def _tone_recordings(folder: Path, n: int, rng: np.random.Generator) -> pa.Table:
    """10 classes = 10 pitches (300 … 3000 Hz), random length / phase / noise; every 4th clip is held out."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n) % 10
    rows = []
    for i, y in enumerate(labels):
        t = np.arange(int(rng.uniform(0.2, 0.8) * 16_000)) / 16_000
        wave = 0.3 * np.sin(2 * np.pi * 300 * (y + 1) * t + rng.uniform(0, 6.3)) + 0.02 * rng.standard_normal(t.size)
        sf.write(folder / f"{y}_tone_{i}.wav", wave.astype(np.float32), 16_000, subtype="PCM_16")
        rows.append({"id": f"{y}_tone_{i}", "label": int(y), "split": "test" if i % 4 == 0 else "train",
                     "audio_path": f"{y}_tone_{i}.wav", "speaker": "tone"})
    return pa.Table.from_pylist(rows)


def test_pretrained_checkpoint_carries_what_it_learned(tmp_path, rng):
    from sklearn.linear_model import LogisticRegression

    from broaden.models.audio import WhisperAudio, load_audio

    table = _tone_recordings(tmp_path / "wav", 120, rng)
    pq.write_table(table, tmp_path / "wav" / "recordings.parquet")
    cfg = PretrainConfig(d_model=32, layers=1, heads=2, ffn_dim=64, window_seconds=1, epochs=20, batch_size=16,
                         lr=3e-3, speed_range=(1.0, 1.0), snr_db_range=None, num_threads=1)
    result = pretrain_audio_encoder(tmp_path / "wav" / "recordings.parquet", tmp_path / "enc", config=cfg,
                                    show_progress=False)
    assert result.n_train == 90 and result.n_val == 30
    assert result.val_accuracy >= 0.6  # chance is 0.1
    info = pretraining_info(tmp_path / "enc")
    assert info["recordings"] == table["id"].to_pylist() and info["speakers"] == ["tone"]
    # The saved folder is a plain HF Whisper checkpoint; its frozen mean state separates the pitches.
    audio = WhisperAudio.from_pretrained(tmp_path / "enc")
    assert audio.dim == 32 and audio.window_samples == 16_000
    waves = [load_audio(tmp_path / "wav" / p) for p in table["audio_path"].to_pylist()]
    feats = np.stack([s.astype(np.float32).mean(0) for s in audio.encode(waves)])
    y, held = table["label"].to_numpy(), np.asarray(table["split"].to_pylist()) == "test"
    probe = LogisticRegression(max_iter=2000).fit(feats[~held], y[~held])
    assert (probe.predict(feats[held]) == y[held]).mean() >= 0.6


def test_pretraining_rejects_a_table_without_speakers(tmp_path):
    table = pa.table({"id": ["a"], "label": [1], "split": ["train"], "audio_path": ["a.wav"]})
    with pytest.raises(DatasetError, match="speaker"):
        pretrain_audio_encoder(table, tmp_path / "enc", show_progress=False)
    assert not (tmp_path / "enc").exists()


# ------------------------------------------------------------------------------------ smoke run
def test_smoke_metrics_match_scikit_learn(smoke):
    from sklearn.metrics import f1_score, roc_auc_score

    work, results = smoke
    for run in results["runs"]:
        scored = pq.read_table(work / "runs" / f"{run['head']}-seed{run['seed']}" / "test_scored.parquet")
        y = scored["label"].to_numpy()
        s = 1 - np.array([p[0] for p in scored["probs"].to_pylist()])
        sensitive = scored["audio_sensitive"].to_numpy(zero_copy_only=False)
        assert scored.num_rows == 24
        for subset, mask in (("all", np.ones_like(sensitive)), ("audio_sensitive", sensitive)):
            got = run["metrics"][subset]
            assert got["n"] == mask.sum()
            assert got["auc"] == pytest.approx(roc_auc_score(y[mask], s[mask]))
            assert got["f1"] == pytest.approx(f1_score(y[mask], s[mask] >= 0.5, zero_division=0))
    for head in ("none", "vlmae"):
        aucs = [r["metrics"]["audio_sensitive"]["auc"] for r in results["runs"] if r["head"] == head]
        summary = results["summary"][head]["audio_sensitive"]["auc"]
        assert summary["mean"] == pytest.approx(np.mean(aucs))
        assert summary["std"] == pytest.approx(np.std(aucs, ddof=1))
    table = (work / "table.md").read_text()
    assert "audio-sensitive test clips" in table and "| vlmae |" in table


def test_smoke_attention_covers_each_clips_valid_positions(smoke):
    import soundfile as sf

    work, results = smoke
    scored = pq.read_table(work / "runs" / "vlmae-seed0" / "test_scored.parquet",
                           columns=["audio_path", "audio_attention"])
    for path, weights in zip(scored["audio_path"].to_pylist(), scored["audio_attention"].to_pylist()):
        info = sf.info(path)
        samples = math.ceil(info.frames * 16_000 / info.samplerate)  # after resampling to 16 kHz
        assert len(weights) == math.ceil(math.ceil(samples / 160) / 2)  # 100 Mel frames/s, conv stride 2
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert (work / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(results["attention"]["clips"]) >= 1


def test_smoke_encoder_stays_frozen_and_is_referenced(smoke):
    from safetensors import safe_open

    from broaden.models.audio import WhisperAudio

    work, _ = smoke
    digest = WhisperAudio.from_pretrained(work / "encoder").digest()
    for seed in (0, 1):
        model = work / "runs" / f"vlmae-seed{seed}" / "model"
        meta = json.loads((model / "config.json").read_text())
        assert meta["audio"]["weights"] == "external" and meta["audio"]["digest"] == digest
        with safe_open(str(model / "model.safetensors"), "pt") as f:
            assert not [k for k in f.keys() if k.startswith("audio.")]
