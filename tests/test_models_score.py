"""Scoring: the scored table, save/load fidelity, determinism, and per-item error reporting."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from broaden.errors import ScoredTableError
from broaden.io import Validator, read_table, write_table
from broaden.models.audio import valid_positions
from broaden.models.checkpoint import load_model, save_model
from broaden.models.config import ItemColumns, run_config_from_dict
from broaden.models.data import Featurizer
from broaden.models.score import score
from broaden.models.testing import tiny_hf_encoder, tiny_tokenizer, tiny_whisper_config, tone_items, write_wav
from broaden.models.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One trained tiny vlmae model (frames + audio) shared by the tests here."""
    root = tmp_path_factory.mktemp("score")
    tiny_tokenizer(root / "tok")
    items = tone_items(root / "data", n=40, seed=4)
    write_table(items, root / "data" / "items.parquet")
    cfg = run_config_from_dict({
        "out": str(root / "run"), "data": {"train": str(root / "data" / "items.parquet")},
        "model": dict(tokenizer=str(root / "tok"), width=32, layers=2, heads=2, num_frames=2, frame_channels=1,
                      frame_size=[8, 8], patch_size=4, fusion="vlmae", whisper_config=tiny_whisper_config(),
                      att_dim=16, att_heads=2, mlp_hidden=16, max_text_length=12, audio_pool_stride=2),
        "train": dict(lr=3e-3, batch_size=16, epochs=1, eval_fraction=0.0, num_threads=1)})
    train(cfg, show_progress=False)
    return root


def score_(run, data, out, **kw):
    return score(run / "run", data, out, show_progress=False, num_threads=1, **kw)


def test_scored_table_follows_the_contract(run, tmp_path):
    result = score_(run, run / "data" / "items.parquet", tmp_path / "scored.parquet", batch_size=16)
    assert (result.n_scored, result.n_failed) == (40, 0)
    table = read_table(result.out, validator=Validator(require=("id", "label", "probs", "embedding")))
    assert table.schema.names == ["id", "label", "text", "audio_path", "probs", "embedding", "audio_attention"]
    items = pq.read_table(run / "data" / "items.parquet")
    assert table.column("id").to_pylist() == items.column("id").to_pylist()
    assert len(table.column("embedding")[0]) == 32 and len(table.column("probs")[0]) == 2
    for path, weights in zip(table.column("audio_path").to_pylist(), table.column("audio_attention").to_pylist()):
        n = sf.info(str(run / "data" / path)).frames
        expected = -(-int(valid_positions(n, 48_000)) // 2)  # valid positions, pooled with stride 2
        assert len(weights) == expected and sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert pq.read_table(result.errors_path).num_rows == 0


def test_scoring_is_deterministic_and_independent_of_batch_size(run, tmp_path):
    a = pq.read_table(score_(run, run / "data" / "items.parquet", tmp_path / "a.parquet", batch_size=16).out)
    b = pq.read_table(score_(run, run / "data" / "items.parquet", tmp_path / "b.parquet", batch_size=16).out)
    assert a.equals(b)
    c = pq.read_table(score_(run, run / "data" / "items.parquet", tmp_path / "c.parquet", batch_size=7).out)
    for col in ("probs", "embedding"):
        np.testing.assert_allclose(np.stack(a.column(col).to_numpy(zero_copy_only=False)),
                                   np.stack(c.column(col).to_numpy(zero_copy_only=False)), atol=1e-5)


def test_save_then_load_gives_identical_scores(run, tmp_path):
    loaded = load_model(run / "run")
    save_model(loaded.model, loaded.tokenizer, loaded.columns, tmp_path / "copy")
    again = load_model(tmp_path / "copy")
    items = pq.read_table(run / "data" / "items.parquet").slice(0, 12)
    outputs = []
    for m in (loaded, again):
        feat = Featurizer(m.config, m.columns, m.tokenizer, audio=m.model.audio, base_dir=run / "data")
        with torch.inference_mode():
            outputs.append(m.model(feat(items).batch))
    assert torch.equal(outputs[0].logits, outputs[1].logits) and torch.equal(outputs[0].h_cls, outputs[1].h_cls)
    # and the scored table written from the copy equals the one from the original run
    a = pq.read_table(score_(run, run / "data" / "items.parquet", tmp_path / "a.parquet").out)
    b = pq.read_table(score(tmp_path / "copy", run / "data" / "items.parquet", tmp_path / "b.parquet",
                            show_progress=False, num_threads=1, audio_cache=tmp_path / "cache").out)
    assert a.equals(b)


def test_external_frozen_whisper_is_referenced_and_checked(tmp_path):
    from transformers import WhisperConfig, WhisperModel

    tiny_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    WhisperModel(WhisperConfig(**tiny_whisper_config())).save_pretrained(tmp_path / "whisper")
    write_table(tone_items(tmp_path / "data", n=16, seed=5), tmp_path / "data" / "items.parquet")
    cfg = run_config_from_dict({
        "out": str(tmp_path / "run"), "data": {"train": str(tmp_path / "data" / "items.parquet")},
        "model": dict(tokenizer=str(tmp_path / "tok"), width=32, layers=1, heads=2, vl_layers=0, fusion="avgpool",
                      whisper_path=str(tmp_path / "whisper"), mlp_hidden=16),
        "train": dict(epochs=1, eval_fraction=0.0, num_threads=1)})
    train(cfg, show_progress=False)
    from safetensors.torch import load_file

    assert not any(k.startswith("audio.") for k in load_file(str(tmp_path / "run/model/model.safetensors")))
    first = pq.read_table(score(tmp_path / "run", tmp_path / "data/items.parquet", tmp_path / "s.parquet",
                                show_progress=False, num_threads=1).out)
    (tmp_path / "whisper").rename(tmp_path / "moved")
    moved = pq.read_table(score(tmp_path / "run", tmp_path / "data/items.parquet", tmp_path / "t.parquet",
                                show_progress=False, num_threads=1, whisper_path=str(tmp_path / "moved")).out)
    assert first.equals(moved)
    torch.manual_seed(1)
    WhisperModel(WhisperConfig(**tiny_whisper_config())).save_pretrained(tmp_path / "other")
    with pytest.raises(Exception, match="differ"):
        score(tmp_path / "run", tmp_path / "data/items.parquet", tmp_path / "u.parquet", show_progress=False,
              whisper_path=str(tmp_path / "other"))


def test_bad_items_are_reported_not_fatal(run, tmp_path):
    data = run / "data"
    items = pq.read_table(data / "items.parquet").slice(0, 10).to_pylist()
    for r in items:  # the new table lives elsewhere: make the good paths absolute
        r["audio_path"] = str(data / r["audio_path"])
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "header_only.wav", np.zeros(0, np.float32), 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    stereo = np.stack([np.sin(np.arange(12000) / 5), np.cos(np.arange(12000) / 7)], 1) * 0.3
    sf.write(tmp_path / "stereo_8k.wav", stereo.astype(np.float32), 8000)
    items[1]["audio_path"] = str(tmp_path / "missing.wav")
    items[2]["audio_path"] = str(tmp_path / "empty.wav")
    items[3]["audio_path"] = str(tmp_path / "header_only.wav")
    items[4]["audio_path"] = str(tmp_path / "corrupt.wav")
    items[5]["frames"] = [[0.5] * 10]  # 10 values, the model expects 1×8×8
    items[6]["audio_path"] = str(tmp_path / "stereo_8k.wav")  # documented conversion: scored
    items[7]["audio_path"] = None  # no audio: scored with an empty attention list
    write_table(pa.Table.from_pylist(items), tmp_path / "items.parquet")
    result = score_(run, tmp_path / "items.parquet", tmp_path / "out.parquet", batch_size=4)
    assert (result.n_scored, result.n_failed) == (5, 5)
    errors = pq.read_table(result.errors_path).to_pylist()
    assert [e["row"] for e in errors] == [1, 2, 3, 4, 5]
    assert [e["id"] for e in errors] == [items[i]["id"] for i in range(1, 6)]
    assert "not found" in errors[0]["error"] and "missing.wav" in errors[0]["error"]
    assert "empty.wav" in errors[1]["error"] and "no audio samples" in errors[2]["error"]
    assert "corrupt.wav" in errors[3]["error"] and "expected 64" in errors[4]["error"]
    scored = pq.read_table(result.out)
    assert scored.column("id").to_pylist() == [items[i]["id"] for i in (0, 6, 7, 8, 9)]
    attention = dict(zip(scored.column("id").to_pylist(), scored.column("audio_attention").to_pylist()))
    assert attention[items[7]["id"]] == [] and sum(attention[items[6]["id"]]) == pytest.approx(1, abs=1e-5)


def test_table_level_problems_fail_before_scoring(run, tmp_path):
    items = pq.read_table(run / "data" / "items.parquet").slice(0, 4)
    dup = items.set_column(0, "id", pa.array(["a", "b", "a", "c"]))
    write_table(dup, tmp_path / "dup.parquet")
    with pytest.raises(ScoredTableError, match="duplicate id"):
        score_(run, tmp_path / "dup.parquet", tmp_path / "o.parquet")
    write_table(items.drop_columns(["audio_path"]), tmp_path / "noaudio.parquet")
    with pytest.raises(ScoredTableError, match="audio_path"):
        score_(run, tmp_path / "noaudio.parquet", tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_cli_score_reports_failures(run, tmp_path, capsys):
    from broaden.cli import main

    items = pq.read_table(run / "data" / "items.parquet").slice(0, 3).to_pylist()
    items[0]["audio_path"] = "nope.wav"
    items = [dict(r, item=r.pop("id")) for r in items]
    write_table(pa.Table.from_pylist(items), tmp_path / "items.parquet")
    for r in items:
        if r["audio_path"] != "nope.wav":
            write_wav(tmp_path / r["audio_path"], sf.read(str(run / "data" / r["audio_path"]))[0])
    code = main(["score", "--model", str(run / "run"), "--data", str(tmp_path / "items.parquet"),
                 "--out", str(tmp_path / "s.parquet"), "--id-col", "item", "--probs-col", "p", "--quiet",
                 "--num-threads", "1"])
    assert code == 0
    assert "1 item(s) could not be scored" in capsys.readouterr().err
    scored = pq.read_table(tmp_path / "s.parquet")
    assert scored.num_rows == 2 and {"item", "p", "embedding"} <= set(scored.schema.names)
    assert pq.read_table(tmp_path / "s.errors.parquet").column("id").to_pylist() == [items[0]["item"]]


def test_hf_text_backbone_runs_end_to_end(tmp_path):
    tiny_hf_encoder(tmp_path / "bert")
    table = tone_items(tmp_path / "data", n=16, seed=6).rename_columns(["id", "label", "title", "frames", "audio_path"])
    write_table(table, tmp_path / "data" / "items.parquet")
    cfg = run_config_from_dict({
        "out": str(tmp_path / "run"), "data": {"train": str(tmp_path / "data" / "items.parquet"),
                                              "text_fields": ["title"]},
        "model": dict(backbone="hf-text", hf_path=str(tmp_path / "bert"), num_frames=2, frame_channels=1,
                      frame_size=[8, 8], patch_size=None, mlp_hidden=16),
        "train": dict(epochs=1, eval_fraction=0.0, num_threads=1)})
    train(cfg, show_progress=False)
    assert load_model(tmp_path / "run").columns == ItemColumns(text_fields=["title"])
    result = score(tmp_path / "run", tmp_path / "data" / "items.parquet", tmp_path / "s.parquet",
                   show_progress=False, num_threads=1)
    assert result.n_scored == 16
    assert len(pq.read_table(result.out).column("embedding")[0]) == 32


def test_incomplete_model_folder_is_a_clear_error(run, tmp_path):
    import json
    import shutil

    from broaden.models.config import ConfigError

    broken = tmp_path / "broken"
    shutil.copytree(run / "run" / "model", broken)
    meta = json.loads((broken / "config.json").read_text())
    del meta["columns"]
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"config\.json: missing 'columns'"):
        load_model(broken)


def test_corrupt_items_and_a_folder_out_are_one_line_errors(run, tmp_path):
    """Issue 13: damaged Parquet pages and an --out that is a folder fail before any scoring."""
    from broaden.errors import OutputError

    items = pq.read_table(run / "data" / "items.parquet").slice(0, 8)
    bad = tmp_path / "items.parquet"
    pq.write_table(items, bad, compression="none")
    data = bytearray(bad.read_bytes())
    data[4:68] = bytes(64)  # the first column chunk's page header
    bad.write_bytes(bytes(data))
    with pytest.raises(ScoredTableError, match="items.parquet.*damaged"):
        score_(run, bad, tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match="folder"):
        score_(run, run / "data" / "items.parquet", tmp_path / "folder")
