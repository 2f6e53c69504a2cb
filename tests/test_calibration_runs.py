"""`broaden train` fits temperature scaling on its validation split and `broaden score` applies it (issue 17
item 3): text runs (frozen and fine-tuned) and a config run, on the tiny models the other tests use."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from broaden.calibration import CALIBRATION_FILE, TEMPERATURE_KEY, TemperatureScaler
from broaden.io import labels_array, list_matrix, write_table
from tests.test_textrun import _score, _train, files  # noqa: F401  (fixture)


def _probs(table) -> np.ndarray:
    return list_matrix(table.column("probs"), dtype=np.float64)


def _rescaled(raw: np.ndarray, t: float) -> np.ndarray:
    """softmax(z / T) from p = softmax(z): log p differs from z by a per-row constant, which softmax ignores."""
    z = np.log(raw) / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_text_run_stores_a_temperature_and_score_applies_it(files, tmp_path, capsys, mode):  # noqa: F811
    run = _train(files, tmp_path / "run", "--encoder", mode, "--epochs", "1", "--eval-fraction", "0.3")
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((run / "model" / CALIBRATION_FILE).read_text())
    t = record["temperature"]
    assert printed["calibration"]["temperature"] == t and t > 0
    assert record["n"] >= 10 and record["nll_after"] <= record["nll_before"] + 1e-12
    calibrated = _score(run, files, tmp_path / "cal.parquet", "--precision", "fp32")
    raw = _score(run, files, tmp_path / "raw.parquet", "--precision", "fp32", "--no-calibration")
    assert "calibrated with temperature" in capsys.readouterr().err
    np.testing.assert_allclose(_probs(calibrated), _rescaled(_probs(raw), t), atol=2e-5)
    assert float(pq.read_schema(tmp_path / "cal.parquet").metadata[TEMPERATURE_KEY]) == t
    assert TEMPERATURE_KEY not in (pq.read_schema(tmp_path / "raw.parquet").metadata or {})


def test_no_validation_split_means_no_temperature(files, tmp_path, capsys):  # noqa: F811
    run = _train(files, tmp_path / "run", "--eval-fraction", "0")
    assert json.loads(capsys.readouterr().out)["calibration"] is None
    assert not (run / "model" / CALIBRATION_FILE).exists()
    _score(run, files, tmp_path / "s.parquet")
    assert "uncalibrated" in capsys.readouterr().err


@pytest.mark.parametrize("resumed", [False, True])
def test_config_run_fits_on_its_eval_split_and_score_applies_it(tmp_path, resumed):
    from broaden.models.config import run_config_from_dict
    from broaden.models.score import score
    from broaden.models.testing import tiny_hf_encoder, tone_items
    from broaden.models.train import _split, train

    tiny_hf_encoder(tmp_path / "bert")
    table = tone_items(tmp_path / "data", n=40, seed=6).rename_columns(["id", "label", "title", "frames", "audio_path"])
    items = write_table(table, tmp_path / "data" / "items.parquet")
    cfg = run_config_from_dict({
        "out": str(tmp_path / "run"), "data": {"train": str(items), "text_fields": ["title"]},
        "model": dict(backbone="hf-text", hf_path=str(tmp_path / "bert"), num_frames=2, frame_channels=1,
                      frame_size=[8, 8], patch_size=None, mlp_hidden=16),
        "train": dict(epochs=2, lr=1e-3, eval_fraction=0.3, num_threads=1, seed=3, batch_size=8)})
    if resumed:  # stop in epoch 2 (4 steps an epoch) and resume: the best model may predate this process
        assert train(cfg, show_progress=False, max_steps=5).stop_reason == "max_steps"
    result = train(cfg, show_progress=False)
    t = result.calibration["temperature"]
    assert json.loads((tmp_path / "run/model" / CALIBRATION_FILE).read_text())["temperature"] == t

    raw = score(tmp_path / "run", items, tmp_path / "raw.parquet", show_progress=False, num_threads=1,
                calibrate=False)
    cal = score(tmp_path / "run", items, tmp_path / "cal.parquet", show_progress=False, num_threads=1)
    assert (raw.temperature, cal.temperature) == (None, t)
    p_raw, p_cal = _probs(pq.read_table(raw.out)), _probs(pq.read_table(cal.out))
    np.testing.assert_allclose(p_cal, _rescaled(p_raw, t), atol=2e-5)
    assert float(pq.read_schema(cal.out).metadata[TEMPERATURE_KEY]) == t
    # T is the NLL minimiser on the held-out rows, refitted here from the uncalibrated scores.
    _, held_out = _split(pq.read_table(items), "label", 0.3, 3)
    ids = pq.read_table(raw.out).column("id").to_pylist()
    rows = [ids.index(i) for i in held_out.column("id").to_pylist()]
    y = labels_array(held_out.column("label"))
    assert TemperatureScaler(logits=False).fit(p_raw[rows], y).temperature_ == pytest.approx(t, rel=1e-3)
