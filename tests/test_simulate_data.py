"""Own data in `broaden simulate`: one table → SimData path, CSV/JSONL/Parquet input, regrouping, clear errors."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from broaden.errors import DatasetError
from broaden.simulate.data import (TEXT_SEPARATOR, SimData, load_own_data, load_sim_data, pair_features,
                                   stratified_subsample)

CLF = {"hidden": (16,), "max_epochs": 15, "patience": 3}


class FakeEncoder:
    """Deterministic 8-d vectors from each text's SHA-256; records the cache tags it was asked for."""

    name = "fake"
    tags: list[str] = []

    def __init__(self, path=None, *, cache_dir=None, show_progress=True):
        pass

    def encode(self, texts, tag):
        FakeEncoder.tags.append(tag)
        return np.array([[b / 255 for b in hashlib.sha256(t.encode()).digest()[:8]] for t in texts], np.float32)


def own_rows(n=300, seed=0):
    """A tiny own dataset: three separable classes named by string, a group column, a split column."""
    rng = np.random.default_rng(seed)
    names = np.array(["bird", "cat", "dog"])
    y = rng.integers(0, 3, n)
    emb = np.eye(3)[y].repeat(3, axis=1) * 2 + rng.normal(size=(n, 9)) * 0.5
    return {"id": [f"u{i:03d}" for i in range(n)], "label": names[y].tolist(),
            "text": [f"a {names[c]} number {i}" for i, c in enumerate(y)],
            "embedding": emb.astype(np.float32).tolist(), "group": rng.choice(["a", "b"], n).tolist(),
            "split": np.where(rng.random(n) < 0.25, "test", "train").tolist()}, y


def test_csv_with_texts_round_trips(tmp_path):
    rows, y = own_rows()
    path = tmp_path / "mine.csv"
    pacsv.write_csv(pa.table({k: v for k, v in rows.items() if k != "embedding"}), path)
    data = load_own_data(path, text_encoder_factory=FakeEncoder, show_progress=False)
    assert data.name == "mine" and list(data.ids) == rows["id"]
    assert data.class_names == ("bird", "cat", "dog") and np.array_equal(data.labels, y)  # names → sorted indices
    assert np.array_equal(data.is_test, np.array(rows["split"]) == "test")  # the split column is honoured
    assert data.texts == rows["text"] and data.feature_info["kind"] == "text"
    np.testing.assert_array_equal(data.features, FakeEncoder().encode(rows["text"], "x"))
    assert list(data.columns) == ["group"] and list(data.columns["group"]) == rows["group"]
    assert data.task == "multiclass"


def test_parquet_with_embedding_and_index_labels(tmp_path):
    rows, y = own_rows()
    rows["label"] = y.tolist()
    del rows["split"]
    path = tmp_path / "vec.parquet"
    pq.write_table(pa.table(rows), path)
    data = load_own_data(path, class_names=["bird", "cat", "dog"], test_share=0.3, split_seed=1)
    np.testing.assert_allclose(data.features, np.asarray(rows["embedding"], np.float32))
    assert np.array_equal(data.labels, y) and data.class_names == ("bird", "cat", "dog")
    assert data.feature_info == {"kind": "embedding", "encoder": "given", "fields": ["embedding"], "dim": 9}
    assert data.texts == rows["text"]  # texts kept for reading, the embedding is the feature
    for c in range(3):  # a stratified seeded test share per class
        assert abs(data.is_test[y == c].mean() - 0.3) < 0.02
    again = load_own_data(path, class_names=["bird", "cat", "dog"], test_share=0.3, split_seed=1)
    assert np.array_equal(again.is_test, data.is_test)
    sub = data.subset(np.arange(10))
    assert list(sub.columns["group"]) == rows["group"][:10]


def test_jsonl_and_pair_texts(tmp_path):
    path = tmp_path / "rel.jsonl"
    records = [{"id": i, "label": i % 2, "q": f"query {i % 3}", "doc": f"title {i}", "split": "test" if i % 4 else "train"}
               for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in records))
    data = load_own_data(path, text_cols=["q", "doc"], pair=True, text_encoder_factory=FakeEncoder)
    enc = FakeEncoder()
    expected = pair_features(enc.encode([r["q"] for r in records], "q"), enc.encode([r["doc"] for r in records], "d"))
    np.testing.assert_array_equal(data.features, expected)
    assert data.texts[1] == f"query 1{TEXT_SEPARATOR}title 1" and data.task == "binary"


def test_registered_dataset_goes_through_the_same_path(data_dir):
    """load_sim_data equals an independent rebuild from the registered table (ids, labels, split, features)."""
    from broaden.datasets import load_dataset

    FakeEncoder.tags = []
    data = load_sim_data("clickbait", data_dir=data_dir, max_items=600, show_progress=False,
                         text_encoder_factory=FakeEncoder)
    table = load_dataset("clickbait", data_dir)
    rows = stratified_subsample(table.column("label").to_numpy(), 600, 0)
    table = table.take(pa.array(rows))
    headlines = table.column("headline").to_pylist()
    assert np.array_equal(data.ids, np.asarray(table.column("id").to_pylist()))
    assert np.array_equal(data.labels, table.column("label").to_numpy())
    assert np.array_equal(data.is_test, np.asarray(table.column("split").to_pylist()) == "test")
    assert data.features.tobytes() == FakeEncoder().encode(headlines, "x").tobytes()
    assert data.texts == headlines and data.task == "binary" and data.columns == {}
    assert data.feature_info == {"kind": "text", "encoder": "fake", "fields": ["headline"], "dim": 8}
    assert FakeEncoder.tags[0] == "clickbait-sub600s0-headline"  # same cache entry as before the one path


def test_regroup_maps_labels_and_keeps_the_original():
    y = np.arange(10).repeat(3)
    data = SimData("digits", np.arange(30), y, np.zeros((30, 2)), np.arange(30) % 5 == 0, 10)
    two = data.regroup([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    assert np.array_equal(two.labels, (y >= 5).astype(int)) and two.task == "binary" and two.num_classes == 2
    assert two.class_names == ("0+1+2+3+4", "5+6+7+8+9") and np.array_equal(two.columns["orig_label"], y)
    three = data.regroup([["0", "1"], [2, 3, 4], [5, 6, 7, 8, 9]], names=["low", "mid", "high"])
    assert three.class_names == ("low", "mid", "high") and three.task == "multiclass"
    assert np.array_equal(three.regroup([[0], [1, 2]]).columns["orig_label"], y)  # the first originals stay
    with pytest.raises(DatasetError, match=r"missing \[9\]"):
        data.regroup([[0, 1, 2, 3, 4], [5, 6, 7, 8]])
    with pytest.raises(DatasetError, match="unknown class 'ten'"):
        data.regroup([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9, "ten"]])


def write_embedding_parquet(path, n=400, seed=0):
    rows, y = own_rows(n, seed)
    pq.write_table(pa.table(rows), path)
    return rows, y


def test_cli_simulate_on_own_parquet(tmp_path, capsys):
    from broaden.cli import main

    path = tmp_path / "own.parquet"
    write_embedding_parquet(path)
    out = tmp_path / "run"
    argv = ["simulate", "--data", str(path), "--out", str(out), "--budget", "30", "--initial", "80",
            "--repeats", "1", "--k", "4", "--hidden", "16", "--groups", "Random,Stat-AL,Stat-AL+LSB-LT",
            "--class-groups", "bird:cat,dog", "--quiet"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data_file"] == str(path) and config["data_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert config["class_groups"] == [["bird"], ["cat", "dog"]] and config["class_names"] == ["bird", "cat+dog"]
    assert config["task"] == "binary" and config["features"]["kind"] == "embedding"
    results = json.loads((out / "results.json").read_text())
    assert set(results["table2"]) == {"Initial", "Random", "Stat-AL", "Stat-AL+LSB-LT"}


@pytest.mark.parametrize("change, message", [
    (lambda r: r["label"].__setitem__(5, "fish"), "column 'label', row 6 (id 'u005'): unknown class 'fish'"),
    (lambda r: r["id"].__setitem__(7, "u002"), "column 'id', row 8 (id 'u002'): duplicate id (first at row 3)"),
    (lambda r: r["text"].__setitem__(4, ""), "column 'text', row 5 (id 'u004'): empty text"),
    (lambda r: r["split"].__setitem__(2, "dev"), "column 'split', row 3 (id 'u002'): split 'dev' is not one of train, test"),
    (lambda r: r.pop("label"), "missing column(s) 'label'"),
])
def test_cli_bad_own_data_is_one_clear_line(tmp_path, capsys, change, message):
    from broaden.cli import main

    rows, _ = own_rows(50)
    del rows["embedding"]
    change(rows)
    path = tmp_path / "bad.csv"
    pacsv.write_csv(pa.table(rows), path)
    argv = ["simulate", "--data", str(path), "--class-names", "bird,cat,dog", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert str(path) in err and message in err


def test_cli_bad_inputs_are_named(tmp_path, capsys):
    from broaden.cli import main

    (tmp_path / "x.tsv").write_text("id\tlabel\n")
    assert main(["simulate", "--data", str(tmp_path / "x.tsv"), "--out", str(tmp_path / "o")]) == 2
    assert "unsupported file type '.tsv'" in capsys.readouterr().err
    assert main(["simulate", "--dataset", "clickbait", "--text", "headline", "--out", str(tmp_path / "o")]) == 2
    assert "apply only to a data file" in capsys.readouterr().err
    path = tmp_path / "e.parquet"
    rows, _ = own_rows(20)
    rows["embedding"][3] = rows["embedding"][3][:5]
    pq.write_table(pa.table(rows), path)
    assert main(["simulate", "--data", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "column 'embedding', row 4 (id 'u003'): embedding has 5 values, row 1 has 9" in " ".join(capsys.readouterr().err.split())


def test_simulate_takes_the_same_data_in_memory(tmp_path):
    """A pandas DataFrame, an Arrow table or a dict of arrays gives the same results as the Parquet file."""
    from broaden.simulate import simulate

    path = tmp_path / "own.parquet"
    rows, _ = write_embedding_parquet(path)
    settings = dict(budget=30, initial=80, repeats=1, k=4, classifier=CLF, groups=["Stat-AL", "Stat-AL+LSB-LT"],
                    print_results=False, show_progress=False)
    from_file = simulate(path, out=tmp_path / "file", **settings)
    pd = pytest.importorskip("pandas")
    for name, data in (("pandas", pd.DataFrame(rows)), ("arrow", pa.table(rows)), ("dict", dict(rows))):
        res = simulate(data, out=tmp_path / name, **settings)
        assert res["table2"] == from_file["table2"] and res["table1"] == from_file["table1"], name
    with pytest.raises(TypeError, match="cannot read a int"):
        simulate(42, out=tmp_path / "bad", **settings)
