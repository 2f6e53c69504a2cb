"""`broaden simulate --latent finetuned` (issue 16): each repeat fine-tunes the encoder on its initial labelled
set and runs on the [CLS] states. A tiny random BERT stands in for MiniLM."""
from __future__ import annotations

import json

import numpy as np
import pytest

from broaden.errors import DatasetError
from broaden.models.testing import WORDS, tiny_hf_encoder
from broaden.simulate import SimData, finetune, simulate


@pytest.fixture()
def tiny_encoder(tmp_path, monkeypatch):
    monkeypatch.setattr(finetune, "ENCODER", str(tiny_hf_encoder(tmp_path / "enc")))


def text_data(n=200, seed=0) -> SimData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    texts = [" ".join([*rng.choice(WORDS[:10], 3), "cat" if c else "dog"]) for c in y]
    return SimData("words", np.arange(n), y, rng.normal(size=(n, 4)), rng.random(n) < 0.2, 2, texts=texts)


def test_finetuned_features(tiny_encoder):
    data = text_data()
    rows = np.flatnonzero(~data.is_test)[:80]
    out = finetune.finetuned_data(data, rows, data.labels, seed=0, epochs=1)
    assert out.features.shape == (len(data.ids), 32) and np.isfinite(out.features).all()
    assert out.feature_info["kind"] == "finetuned" and out.feature_info["finetune_items"] == 80
    assert data.features.shape == (len(data.ids), 4)  # the input is left as it was


def test_simulate_finetuned_latent(tiny_encoder, tmp_path):
    results = simulate(text_data(), out=tmp_path / "sim", budget=20, initial=60, rounds=1, repeats=1, k=4,
                       latent="finetuned", classifier={"hidden": (16,), "max_epochs": 5}, print_results=False,
                       show_progress=False)
    assert "Stat-AL+LSB-LT" in results["groups"] and results["repeats_done"] == [0]
    record = json.loads((tmp_path / "sim" / "repeats" / "repeat-000.json").read_text())
    assert record["finetune"]["finetune_items"] == 60 and record["finetune"]["finetune_s"] > 0


def test_needs_texts():
    data = text_data()
    data.texts = None
    with pytest.raises(DatasetError, match="needs the items' texts"):
        finetune.finetuned_data(data, np.arange(10), data.labels, seed=0)
