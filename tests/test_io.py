"""Scored-table I/O: every validation error names its problem; round trips keep extra columns."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from broaden import io
from broaden.errors import ScoredTableError


def _table(n=20, c=3, d=4, seed=0, ids=None, **extra):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(c), n)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    labels = rng.integers(0, c, n)
    return io.make_scored_table(np.arange(n) if ids is None else ids, probs, emb, labels, extra=extra)


def _write(tmp_path, table, name="t.parquet"):
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def _read(path, **kw):
    return io.read_scored(path, require=("id", "label", "probs", "embedding"), **kw)


def test_round_trip_preserves_extra_columns(tmp_path):
    t = _table(text=[f"item {i}" for i in range(20)])
    out = io.write_table(t, tmp_path / "sub" / "out.parquet")
    back = _read(out)
    assert back.column_names == t.column_names
    assert back.column("text").to_pylist() == t.column("text").to_pylist()
    np.testing.assert_allclose(io.list_matrix(back["probs"]), io.list_matrix(t["probs"]))
    assert back["label"].to_pylist() == t["label"].to_pylist()


def test_directory_and_streaming_equal_single_file(tmp_path):
    t = _table(n=100)
    (tmp_path / "dir").mkdir()
    for i in range(4):
        pq.write_table(t.slice(i * 25, 25), tmp_path / "dir" / f"part-{i}.parquet")
    single = _write(tmp_path, t)
    from_dir = _read(tmp_path / "dir")
    assert from_dir.to_pydict() == _read(single).to_pydict()
    batches = list(io.iter_batches(tmp_path / "dir", batch_size=7, validator=io.Validator()))
    assert all(b.num_rows <= 7 for b in batches)
    assert sum(b.num_rows for b in batches) == 100
    assert io.count_rows(tmp_path / "dir") == 100


def test_missing_column_named(tmp_path):
    path = _write(tmp_path, _table().drop_columns(["probs"]))
    with pytest.raises(ScoredTableError, match=r"t\.parquet: missing column\(s\) 'probs'"):
        _read(path)


def test_unequal_embedding_lengths_named(tmp_path):
    t = _table(n=5)
    emb = pa.array([[0.0] * 4] * 3 + [[0.0] * 3] + [[0.0] * 4], pa.list_(pa.float32()))
    t = t.set_column(t.schema.get_field_index("embedding"), "embedding", emb)
    with pytest.raises(ScoredTableError, match=r"column 'embedding' row 3: has 3 values, expected 4"):
        _read(_write(tmp_path, t))


def test_unequal_lengths_across_files(tmp_path):
    (tmp_path / "d").mkdir()
    pq.write_table(_table(d=4), tmp_path / "d" / "a.parquet")
    pq.write_table(_table(d=5, ids=np.arange(100, 120)), tmp_path / "d" / "b.parquet")
    with pytest.raises(ScoredTableError, match=r"b\.parquet: column 'embedding' row 0: has 5 values, expected 4"):
        _read(tmp_path / "d")


@pytest.mark.parametrize("col,value", [("probs", np.nan), ("embedding", np.inf)])
def test_non_finite_named(tmp_path, col, value):
    t = _table(n=6)
    m = io.list_matrix(t[col], dtype=np.float64)
    m[4, 1] = value
    t = t.set_column(t.schema.get_field_index(col), col, io.matrix_to_list_array(m))
    with pytest.raises(ScoredTableError, match=rf"column '{col}' row 4: value .* not finite"):
        _read(_write(tmp_path, t))


def test_probs_must_sum_to_one_or_use_logits(tmp_path):
    t = _table(n=6)
    logits = np.random.default_rng(0).normal(size=(6, 3))
    t = t.set_column(t.schema.get_field_index("probs"), "probs", io.matrix_to_list_array(logits))
    path = _write(tmp_path, t)
    with pytest.raises(ScoredTableError, match=r"column 'probs' row \d+: .*(sum to|negative).*logits=True"):
        _read(path)
    back = _read(path, logits=True)
    p = io.list_matrix(back["probs"], dtype=np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), rtol=1e-6)


def test_sum_tolerance_is_1e3(tmp_path):
    t = _table(n=3, c=2)
    ok = np.array([[0.5, 0.5009], [0.3, 0.7], [0.1, 0.9]])
    bad = np.array([[0.5, 0.5011], [0.3, 0.7], [0.1, 0.9]])
    for probs, raises in ((ok, False), (bad, True)):
        tt = t.set_column(t.schema.get_field_index("probs"), "probs", io.matrix_to_list_array(probs))
        path = _write(tmp_path, tt)
        if raises:
            with pytest.raises(ScoredTableError, match="row 0: probabilities sum to 1.0011"):
                _read(path)
        else:
            _read(path)


def test_label_out_of_range_named(tmp_path):
    t = _table(n=5, c=3)
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array([0, 1, None, 3, 2], pa.int64()))
    with pytest.raises(ScoredTableError, match=r"column 'label' row 3: label 3 is outside 0\.\.2"):
        _read(_write(tmp_path, t))


def test_null_labels_mean_unlabelled(tmp_path):
    t = _table(n=3, c=3)
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array([None, 1, None], pa.int64()))
    back = _read(_write(tmp_path, t))
    assert io.labels_array(back["label"]).tolist() == [-1, 1, -1]


@pytest.mark.parametrize("ids", [np.array([1, 2, 3, 2, 5]), np.array(["a", "b", "c", "d", "a"])])
def test_duplicate_ids_named(tmp_path, ids):
    t = _table(n=5, ids=ids)
    with pytest.raises(ScoredTableError, match=r"duplicate id: rows .*t\.parquet row \d and .*t\.parquet row \d"):
        _read(_write(tmp_path, t))


def test_duplicate_ids_across_files(tmp_path):
    (tmp_path / "d").mkdir()
    pq.write_table(_table(n=5), tmp_path / "d" / "a.parquet")
    pq.write_table(_table(n=5, ids=np.arange(4, 9)), tmp_path / "d" / "b.parquet")
    with pytest.raises(ScoredTableError, match=r"a\.parquet row 4 and .*b\.parquet row 0"):
        _read(tmp_path / "d")


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ScoredTableError, match=r"bad\.parquet: not a readable Parquet file"):
        _read(bad)
    with pytest.raises(ScoredTableError, match="no such file"):
        _read(tmp_path / "nope.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoredTableError, match="holds no .parquet files"):
        _read(tmp_path / "empty")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.parquet"
    io.write_table(_table(n=4), path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with io.atomic_path(path) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_stream_writer_discards_partial_output(tmp_path):
    t = _table(n=10)
    path = tmp_path / "s.parquet"
    with pytest.raises(ValueError):
        with io.ParquetStreamWriter(path, t.schema) as w:
            w.write(t.slice(0, 5))
            raise ValueError("boom")
    assert not path.exists() and os.listdir(tmp_path) == []
    with io.ParquetStreamWriter(path, t.schema) as w:
        for b in t.to_batches(max_chunksize=3):
            w.write(b)
    assert pq.read_table(path).equals(t)


def test_duplicate_id_row_is_counted_within_the_file(tmp_path):
    path = _write(tmp_path, _table(n=30, ids=np.r_[np.arange(29), 3]))
    batches = io.iter_batches(path, batch_size=8, validator=io.Validator())
    with pytest.raises(ScoredTableError, match=r"t\.parquet row 3 and .*t\.parquet row 29"):
        list(batches)


def test_float_labels_with_nan_mean_unlabelled(tmp_path):
    # pandas writes a nullable integer column as float64 with NaN for the missing values
    t = _table(n=4, c=3)
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array([0.0, np.nan, 2.0, None]))
    back = _read(_write(tmp_path, t))
    assert io.labels_array(back["label"]).tolist() == [0, -1, 2, -1]


def test_file_without_rows_still_checked_for_columns(tmp_path):
    path = _write(tmp_path, _table(n=0).drop_columns(["probs"]))
    with pytest.raises(ScoredTableError, match=r"t\.parquet: missing column\(s\) 'probs'"):
        _read(path)


def test_list_of_non_numbers_named(tmp_path):
    t = _table(n=2, c=2)
    t = t.set_column(t.schema.get_field_index("probs"), "probs", pa.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ScoredTableError, match=r"t\.parquet: column 'probs' must be a list of floats"):
        _read(_write(tmp_path, t))


def test_count_rows_of_unreadable_file_named(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ScoredTableError, match=r"bad\.parquet: not a readable Parquet file"):
        io.count_rows(bad)


def test_atomic_dir_swaps_the_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "model"
    with io.atomic_dir(target) as d:
        (d / "a.txt").write_text("1")
        (d / "b.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(target) as d:
            (d / "a.txt").write_text("2")
            raise RuntimeError("crash between the two files")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "1", "b.txt": "1"}
    with io.atomic_dir(target) as d:
        (d / "c.txt").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c.txt"]  # replaced as a whole, no stale files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_fetch_rows_in_the_order_asked_with_chosen_columns(tmp_path):
    """fetch_rows returns the rows of the ids asked, in their order, every column or only those named;
    an id not in the pool is an error, or left out with missing="skip"."""
    from broaden.errors import SelectionError
    from broaden.io.pool import Pool

    t = _table(n=100, text=[f"item {i}" for i in range(100)])
    (tmp_path / "dir").mkdir()
    for i in range(4):
        pq.write_table(t.slice(i * 25, 25), tmp_path / "dir" / f"part-{i}.parquet")
    want = np.array([73, 2, 50, 26])
    for source in (t, tmp_path / "dir"):
        pool = Pool.of(source)
        full = pool.fetch_rows(want, batch_size=10)
        assert full.column_names == t.column_names
        assert full.to_pydict() == t.take(pa.array(want)).to_pydict()
        some = pool.fetch_rows(want, columns=["probs", "text"])
        assert some.column_names == ["id", "probs", "text"]
        assert some.to_pydict() == t.select(["id", "probs", "text"]).take(pa.array(want)).to_pydict()
        with pytest.raises(SelectionError, match=r"1 requested id\(s\) are not in the pool, e.g. 999"):
            pool.fetch_rows(np.array([2, 999]))
        assert pool.fetch_rows(np.array([999, 2, 998]), missing="skip").column("id").to_pylist() == [2]
        assert pool.fetch_rows(np.array([999]), columns=["text"], missing="skip").column_names == ["id", "text"]
        with pytest.raises(ScoredTableError, match="nope"):
            pool.fetch_rows(want, columns=["nope"])
