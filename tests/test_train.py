"""Training: configs, the loop, early stopping, class weights, frozen parts, resume, and the audio-only task."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from broaden.io import write_table
from broaden.models.config import ConfigError, load_run_config, run_config_from_dict
from broaden.models.testing import tiny_hf_encoder, tiny_tokenizer, tiny_whisper_config, tone_items
from broaden.models.train import ItemError, _class_weights, _Trainer, train


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-assets")
    tiny_tokenizer(root / "tok")
    tiny_hf_encoder(root / "bert")
    write_table(tone_items(root / "data", n=48, seed=1), root / "data" / "items.parquet")
    return root


def run_dict(assets, out, **sections) -> dict:
    model = dict(tokenizer=str(assets / "tok"), hf_path=str(assets / "bert"), width=32, layers=2, heads=2,
                 vl_layers=1, num_frames=2, frame_channels=1, frame_size=[8, 8], patch_size=4, fusion="vlmae",
                 whisper_config=tiny_whisper_config(), att_dim=16, mlp_hidden=16, max_text_length=12)
    # One thread: on a shared 2-core machine, tiny models run several times faster than with two.
    train_ = dict(lr=3e-3, batch_size=16, epochs=2, eval_fraction=0.25, audio_cache=str(assets / "cache"),
                  num_threads=1, patience=2)
    return {"out": str(out), "data": {"train": str(assets / "data" / "items.parquet")},
            "model": model | sections.get("model", {}), "train": train_ | sections.get("train", {})}


def weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ------------------------------------------------------------------------------------------ configs
def test_toml_and_yaml_configs_agree(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('out = "runs/a"\n[data]\ntrain = "items.parquet"\ntext_fields = ["title", "body"]\n'
                    '[model]\nbackbone = "hf-text"\nfusion = "avgpool"\nwhisper_path = "whisper"\n'
                    '[train]\nlr = 1e-4\nclass_weights = "balanced"\n')
    yaml = tmp_path / "run.yaml"
    yaml.write_text("out: runs/a\ndata:\n  train: items.parquet\n  text_fields: [title, body]\n"
                    "model:\n  backbone: hf-text\n  fusion: avgpool\n  whisper_path: whisper\n"
                    "train:\n  lr: 1.0e-4\n  class_weights: balanced\n")
    a, b = load_run_config(toml), load_run_config(yaml)
    assert a == b
    assert a.out == str(tmp_path / "runs" / "a") and a.train_data == str(tmp_path / "items.parquet")
    assert a.model.whisper_path == str(tmp_path / "whisper") and a.columns.text_fields == ["title", "body"]
    assert (a.train.batch_size, a.train.epochs, a.train.lr) == (64, 5, 1e-4)  # paper defaults kept


@pytest.mark.parametrize("text, fragment", [
    ('out = "r"\n[data]\ntrain = "x"\n[train]\nlearning_rate = 1\n', "learning_rate"),
    ('out = "r"\n[data]\ntrain = "x"\n[model]\nfusion = "concat"\n', "fusion"),
    ('[data]\ntrain = "x"\n', "out"),
    ('out = "r"\n[data]\ntrain = "x"\n[train]\nclass_weights = "equal"\n', "class_weights"),
    ('out = "r"\n[data]\ntrain = "x"\n[train]\npatience = 0\n', "patience"),
    ('out = "r"\n[data]\ntrain = "x"\n[train]\neval_batch_size = 0\n', "eval_batch_size"),
    ('out = "r"\n[data\n', "cannot parse"),
])
def test_bad_configs_name_the_problem(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_run_config(path)
    assert str(path) in str(info.value)


def test_balanced_class_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 0, 1, 1, 2, 0, 1, 0])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(_class_weights("balanced", y, 3).numpy(), expected, rtol=1e-6)
    with pytest.raises(ConfigError, match="class_weights"):
        _class_weights([1.0, 2.0], y, 3)


# --------------------------------------------------------------------------------------------- loop
def test_training_writes_model_history_and_checkpoint(assets, tmp_path):
    result = train(run_config_from_dict(run_dict(assets, tmp_path / "run")), show_progress=False)
    assert result.stop_reason == "max_epochs" and result.epochs_run == 2 and len(result.history) == 2
    for name in ("model/config.json", "model/model.safetensors", "checkpoint/state.json",
                 "checkpoint/optimizer.safetensors", "history.json", "run_config.json"):
        assert (tmp_path / "run" / name).is_file(), name
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"loss", "auc", "accuracy", "multiclass_loss"} <= set(history[0]["eval"])
    best = min(h["eval"]["loss"] for h in history)
    assert result.best_metric == pytest.approx(best)


def test_early_stopping_when_the_metric_stops_improving(assets, tmp_path):
    cfg = run_config_from_dict(run_dict(assets, tmp_path / "run",
                                        train=dict(epochs=5, patience=1, min_delta=10.0)))
    result = train(cfg, show_progress=False)
    # Epoch 1 always counts; no later epoch can improve the loss by 10, so epoch 2 triggers the stop.
    assert result.stop_reason == "early_stop" and result.epochs_run == 2 and result.best_epoch == 1
    assert [h["improved"] for h in result.history] == [True, False]


@pytest.mark.parametrize("backbone, frozen_prefix, model_kw", [
    ("mome", "audio.", {}),
    ("hf-text", "backbone.", {"freeze_text": True, "fusion": "none"}),
])
def test_frozen_encoder_weights_do_not_change(assets, tmp_path, backbone, frozen_prefix, model_kw):
    cfg = run_config_from_dict(run_dict(assets, tmp_path / "run",
                                        model=dict(backbone=backbone, dropout=0.1) | model_kw,
                                        train=dict(epochs=1)))
    trainer = _Trainer(cfg, show_progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run(resume=False, max_steps=None)
    after = trainer.model.state_dict()
    frozen = [k for k in before if k.startswith(frozen_prefix)]
    trained = [k for k in before if k.startswith("head.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)


def test_interrupted_run_resumes_to_the_same_weights(assets, tmp_path):
    sections = dict(model=dict(dropout=0.2), train=dict(epochs=2, batch_size=8))
    full = train(run_config_from_dict(run_dict(assets, tmp_path / "full", **sections)), show_progress=False)
    part = train(run_config_from_dict(run_dict(assets, tmp_path / "part", **sections)), show_progress=False,
                 max_steps=3)  # stops mid-epoch 1 (5 batches per epoch)
    assert part.stop_reason == "max_steps"
    state = json.loads((tmp_path / "part" / "checkpoint" / "state.json").read_text())["state"]
    assert (state["epoch"], state["step"]) == (0, 3)
    resumed = train(run_config_from_dict(run_dict(assets, tmp_path / "part", **sections)), show_progress=False)
    assert resumed.epochs_run == 2 and resumed.history == full.history
    for folder in ("model", "checkpoint/model"):
        a, b = weights(tmp_path / "full" / folder), weights(tmp_path / "part" / folder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_config(assets, tmp_path):
    train(run_config_from_dict(run_dict(assets, tmp_path / "run", train=dict(epochs=1))), show_progress=False)
    changed = run_config_from_dict(run_dict(assets, tmp_path / "run", train=dict(epochs=1, lr=1e-2)))
    with pytest.raises(ConfigError, match="different config"):
        train(changed, show_progress=False)
    assert train(changed, show_progress=False, resume=False).epochs_run == 1


def test_bad_training_items_fail_loudly_or_are_skipped_and_listed(assets, tmp_path):
    table = pq.read_table(assets / "data" / "items.parquet")
    paths = table.column("audio_path").to_pylist()
    paths[3] = "missing.wav"
    bad = table.set_column(table.schema.get_field_index("audio_path"), "audio_path", pa.array(paths))
    write_table(bad, assets / "data" / "bad.parquet")
    raw = run_dict(assets, tmp_path / "run", train=dict(epochs=1, eval_fraction=0.0))
    raw["data"]["train"] = str(assets / "data" / "bad.parquet")
    with pytest.raises(ItemError, match="item3.*not found"):
        train(run_config_from_dict(raw), show_progress=False)
    raw["train"]["skip_bad_items"] = True
    result = train(run_config_from_dict(raw), show_progress=False)
    assert result.skipped_items == 1
    errors = pq.read_table(tmp_path / "run" / "errors_train.parquet").to_pylist()
    assert errors[0]["id"] == "item3" and "missing.wav" in errors[0]["error"]


def test_cli_train(assets, tmp_path):
    from broaden.cli import main

    raw = run_dict(assets, tmp_path / "run")
    path = tmp_path / "run.json"
    path.write_text(json.dumps(raw))
    assert main(["train", str(path), "--set", "train.epochs=1", "--set", "model.fusion=avgpool", "--quiet"]) == 0
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["model"]["fusion"] == "avgpool"
    assert main(["train", str(tmp_path / "nope.toml")]) == 2


# ------------------------------------------------------------------------------- audio-only task
def test_fusion_heads_use_the_audio(assets, tmp_path):
    """Label = which tone the clip holds; text and frames are noise: only audio fusion can learn it."""
    from broaden.models.score import score

    write_table(tone_items(tmp_path / "train", n=96, seed=2), tmp_path / "train" / "items.parquet")
    write_table(tone_items(tmp_path / "test", n=64, seed=3), tmp_path / "test" / "items.parquet")
    accuracy = {}
    for fusion in ("none", "avgpool", "vlmae"):
        raw = run_dict(assets, tmp_path / fusion, model=dict(fusion=fusion, dropout=0.0),
                       train=dict(epochs=4, patience=4, lr=3e-3, eval_fraction=0.0))
        raw["data"]["train"] = str(tmp_path / "train" / "items.parquet")
        train(run_config_from_dict(raw), show_progress=False)
        out = score(tmp_path / fusion, tmp_path / "test" / "items.parquet", tmp_path / f"{fusion}.parquet",
                    show_progress=False, audio_cache=assets / "cache", num_threads=1)
        scored = pq.read_table(out.out)
        pred = np.argmax(np.stack(scored.column("probs").to_numpy(zero_copy_only=False)), axis=1)
        accuracy[fusion] = float((pred == scored.column("label").to_numpy()).mean())
    assert accuracy["none"] <= 0.7, accuracy
    assert accuracy["avgpool"] >= 0.9 and accuracy["vlmae"] >= 0.9, accuracy
    assert min(accuracy["avgpool"], accuracy["vlmae"]) - accuracy["none"] >= 0.25, accuracy


# ------------------------------------------------------------------------------------ edge cases
def test_eval_split_falls_back_to_random_when_too_small_to_stratify():
    from broaden.models.train import _split

    # 3 classes, 20 rows, 10 %: 2 eval rows cannot hold every class, so sklearn's stratified split refuses.
    table = pa.table({"id": [f"r{i}" for i in range(20)], "label": [0, 1, 2] * 6 + [0, 1]})
    train_part, eval_part = _split(table, "label", 0.1, seed=0)
    assert (train_part.num_rows, eval_part.num_rows) == (18, 2)
    ids = train_part.column("id").to_pylist() + eval_part.column("id").to_pylist()
    assert sorted(ids) == sorted(table.column("id").to_pylist())
    # a fraction that rounds up to every row still leaves one row to train on
    train_part, eval_part = _split(table.slice(0, 2), "label", 0.9, seed=0)
    assert (train_part.num_rows, eval_part.num_rows) == (1, 1)


@pytest.mark.parametrize("train_kw, fragment", [
    (dict(eval_metric="auc"), "undefined on the 8 eval item"),  # AUC needs both classes in the eval set
    (dict(eval_metric="aucc"), "not one of"),
])
def test_eval_metric_that_can_never_rank_an_epoch_fails_before_training(assets, tmp_path, monkeypatch, train_kw,
                                                                       fragment):
    def no_step(self, rows):
        raise AssertionError("an optimisation step ran before the eval metric was checked")

    monkeypatch.setattr(_Trainer, "step", no_step)
    items = pq.read_table(assets / "data" / "items.parquet")
    one_class = items.filter(pc.equal(items.column("label"), 0)).slice(0, 8)
    write_table(one_class, assets / "data" / "eval_one_class.parquet")
    raw = run_dict(assets, tmp_path / "run", model=dict(fusion="none"), train=train_kw)
    raw["data"]["eval"] = str(assets / "data" / "eval_one_class.parquet")
    with pytest.raises(ConfigError, match=fragment):
        train(run_config_from_dict(raw), show_progress=False)


def test_no_usable_training_item_is_a_clear_error(assets, tmp_path):
    table = pq.read_table(assets / "data" / "items.parquet")
    gone = table.set_column(table.schema.get_field_index("audio_path"), "audio_path",
                            pa.array(["missing.wav"] * table.num_rows))
    write_table(gone, assets / "data" / "all_missing.parquet")
    raw = run_dict(assets, tmp_path / "run", model=dict(fusion="avgpool"), train=dict(skip_bad_items=True))
    raw["data"]["train"] = str(assets / "data" / "all_missing.parquet")
    with pytest.raises(ItemError, match="none of the"):
        train(run_config_from_dict(raw), show_progress=False)


def test_negative_label_is_an_error_not_an_unlabelled_item(assets, tmp_path):
    from broaden.errors import ScoredTableError

    table = pq.read_table(assets / "data" / "items.parquet")
    labels = table.column("label").to_pylist()
    labels[5] = -2
    write_table(table.set_column(1, "label", pa.array(labels, pa.int64())), assets / "data" / "negative.parquet")
    raw = run_dict(assets, tmp_path / "run", model=dict(fusion="none"))
    raw["data"]["train"] = str(assets / "data" / "negative.parquet")
    with pytest.raises(ScoredTableError, match="row 5: label -2"):
        train(run_config_from_dict(raw), show_progress=False)
