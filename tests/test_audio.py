"""Audio front end: WAV reading and conversions, Whisper valid lengths, pooling and the encoder cache."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from broaden.models.audio import AudioError, WhisperAudio, load_audio, strided_mean, valid_positions
from broaden.models.audio_cache import AudioCache
from broaden.models.testing import tiny_whisper_config, write_wav


def sine(freq: float, seconds: float, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@pytest.fixture(scope="module")
def whisper():
    torch.manual_seed(0)
    return WhisperAudio.from_config(tiny_whisper_config())


# ------------------------------------------------------------------------------------------ reading
def test_resamples_8khz_to_16khz(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, sine(440, 1.0, 8000), 8000, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.size == 16000
    # Same tone at the new rate: compare with the analytic signal away from the filter's edge effects.
    np.testing.assert_allclose(wave[200:-200], sine(440, 1.0, 16000)[200:-200], atol=2e-3)
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * 16000 / wave.size == pytest.approx(440, abs=1)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = sine(300, 0.5, 16000), sine(700, 0.5, 16000)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: None, "not found"),
    (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "no audio samples"),
    (lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10), "not a readable audio file"),
    (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2], np.float32), 16000, subtype="FLOAT"), "NaN"),
])
def test_bad_files_raise_clear_errors(tmp_path, make, fragment):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=fragment) as info:
        load_audio(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------ valid lengths
@pytest.mark.parametrize("n", [1, 159, 160, 161, 8000, 16001, 47999, 48000, 70000])
def test_valid_positions_match_transformers(whisper, n):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    fe = whisper.feature_extractor
    frames = fe([np.zeros(n, np.float32)], sampling_rate=16000, return_attention_mask=True)["attention_mask"].sum()
    # transformers' own frame → encoder-position rule for Whisper (conv2 stride 2)
    expected = WhisperEncoder._get_feat_extract_output_lengths(None, torch.tensor(int(frames)))
    assert valid_positions(n, whisper.window_samples) == int(expected)


def test_window_is_derived_from_positions(whisper):
    assert whisper.window_samples == 150 * 2 * 160  # 3 s for the tiny config
    real = WhisperAudio.from_config(tiny_whisper_config(positions=1500))
    assert real.window_samples == 480_000 and valid_positions(16_000, real.window_samples) == 50
    with pytest.raises(AudioError, match="multiple of 50"):
        WhisperAudio.from_config(tiny_whisper_config(positions=64))


def test_strided_mean_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3)).astype(np.float32)
    lengths = torch.tensor([7, 4])
    pooled, new = strided_mean(torch.from_numpy(x), lengths, 3)
    assert new.tolist() == [3, 2]
    expected0 = [x[0, 0:3].mean(0), x[0, 3:6].mean(0), x[0, 6:7].mean(0)]
    expected1 = [x[1, 0:3].mean(0), x[1, 3:4].mean(0)]  # positions ≥ 4 are padding: never averaged in
    np.testing.assert_allclose(pooled[0].numpy(), expected0, atol=1e-6)
    np.testing.assert_allclose(pooled[1, :2].numpy(), expected1, atol=1e-6)


def test_encoder_outputs_are_the_valid_slice(whisper):
    waves = [sine(500, 0.7, 16000), sine(900, 2.2, 16000)]
    mel, lengths = whisper.features(waves)
    assert mel.shape == (2, 80, 300) and lengths.tolist() == [35, 110]
    with torch.no_grad():
        full = whisper.encoder(input_features=mel).last_hidden_state  # always 150 positions
    encoded = whisper.encode(waves)
    assert [e.shape for e in encoded] == [(35, 32), (110, 32)] and encoded[0].dtype == np.float16
    for e, f, n in zip(encoded, full, lengths.tolist()):
        np.testing.assert_allclose(e.astype(np.float32), f[:n].numpy(), atol=2e-2, rtol=1e-2)


def test_long_clips_are_cut_to_the_window(whisper):
    (seq,) = whisper.encode([sine(500, 5.0, 16000)])
    assert seq.shape[0] == 150


def test_from_pretrained_loads_a_local_checkpoint(tmp_path):
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(1)
    model = WhisperModel(WhisperConfig(**tiny_whisper_config())).eval()
    model.save_pretrained(tmp_path / "ckpt")
    audio = WhisperAudio.from_pretrained(tmp_path / "ckpt")
    mel, _ = audio.features([sine(440, 1.0, 16000)])
    with torch.no_grad():
        expected = model.encoder(input_features=mel).last_hidden_state
        got = audio.encoder(input_features=mel).last_hidden_state
    torch.testing.assert_close(got, expected)
    with pytest.raises(AudioError, match="config.json"):
        WhisperAudio.from_pretrained(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------- cache
def test_cache_encodes_each_clip_once(tmp_path, whisper):
    a = write_wav(tmp_path / "a.wav", sine(500, 0.5, 16000))
    b = write_wav(tmp_path / "b.wav", sine(900, 1.0, 16000), sample_rate=16000)
    cache = AudioCache(tmp_path / "cache", whisper)
    first = cache.get_many([a, b, a])
    assert cache.misses == 2 and cache.hits == 0
    direct = whisper.encode([load_audio(a), load_audio(b)])
    np.testing.assert_array_equal(first[0], direct[0])
    np.testing.assert_array_equal(first[1], direct[1])
    np.testing.assert_array_equal(first[2], direct[0])
    renamed = tmp_path / "renamed.wav"
    renamed.write_bytes(a.read_bytes())
    again = AudioCache(tmp_path / "cache", whisper).get_many([renamed, b])
    np.testing.assert_array_equal(again[0], direct[0])
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 2


def test_cache_misses_for_another_encoder_and_heals_corrupt_entries(tmp_path, whisper):
    a = write_wav(tmp_path / "a.wav", sine(500, 0.5, 16000))
    AudioCache(tmp_path / "cache", whisper).get_many([a])
    torch.manual_seed(5)
    other = WhisperAudio.from_config(tiny_whisper_config())
    cache = AudioCache(tmp_path / "cache", other)
    cache.get_many([a])
    assert cache.misses == 1
    for f in (tmp_path / "cache").rglob("*.safetensors"):
        f.write_bytes(b"corrupt")
    cache = AudioCache(tmp_path / "cache", whisper)
    (seq,) = cache.get_many([a])
    assert cache.misses == 1
    np.testing.assert_array_equal(seq, whisper.encode([load_audio(a)])[0])


def test_pooled_cache_stores_fewer_positions(tmp_path):
    torch.manual_seed(0)
    pooled = WhisperAudio.from_config(tiny_whisper_config(), pool_stride=4)
    a = write_wav(tmp_path / "a.wav", sine(500, 1.0, 16000))
    (seq,) = AudioCache(tmp_path / "cache", pooled).get_many([a])
    assert seq.shape == (13, 32)  # ceil(50 / 4)


def test_cache_reports_bad_files_per_item(tmp_path, whisper):
    good = write_wav(tmp_path / "good.wav", sine(500, 0.5, 16000))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"not audio at all")
    out = AudioCache(tmp_path / "cache", whisper).get_many([good, tmp_path / "missing.wav", corrupt])
    assert isinstance(out[0], np.ndarray)
    assert isinstance(out[1], AudioError) and "not found" in str(out[1])
    assert isinstance(out[2], AudioError) and "corrupt.wav" in str(out[2])


def test_real_fsdd_recordings_load_at_16khz(data_dir, whisper):
    recordings = sorted((data_dir / "fsdd" / "recordings").glob("*.wav"))[:6]
    if not recordings:
        pytest.skip("FSDD recordings not present")
    waves = [load_audio(p) for p in recordings]
    for path, wave in zip(recordings, waves):
        info = sf.info(str(path))
        assert info.samplerate == 8000 and wave.size == 2 * info.frames  # resampled 8 kHz → 16 kHz
    encoded = whisper.encode(waves)
    assert [e.shape[0] for e in encoded] == [int(valid_positions(w.size, whisper.window_samples)) for w in waves]
