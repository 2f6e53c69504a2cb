"""The Python API takes the data users hold (issue 19): the same selection, candidates, cleaning and metrics
from a path, a folder, a pyarrow Table or stream, pandas, polars, a Hugging Face dataset and plain arrays;
a wrong kind is a TypeError naming the accepted ones; docs/python.md runs as written."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from broaden import evaluate
from broaden.io import as_scored, load_scored
from broaden.lsb import lsb
from broaden.select import clean, select
from broaden.io.ids import IdSet, as_ids

REPO = Path(__file__).resolve().parents[1]
C = 3
KINDS = ("path", "folder", "table", "reader", "pandas", "polars", "hf", "arrays")


def _world(seed: int = 0, n_lab: int = 240, n_pool: int = 1200, d: int = 8):
    """A labelled table (ids 0.., a few unlabelled rows) and a pool (ids 10000..) with clustered embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, d)) * 2

    def draw(n):
        c = rng.integers(0, 6, n)
        x = (centers[c] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
        y = c % C
        pred = np.where(rng.random(n) < np.where(c < 2, 0.6, 0.05), (y + 1) % C, y)
        alpha = np.full((n, C), 0.6)
        alpha[np.arange(n), pred] = 5.0
        p = rng.gamma(alpha)
        return x, y, (p / p.sum(1, keepdims=True)).astype(np.float32)

    xl, yl, pl = draw(n_lab)
    yl[::40] = -1  # unlabelled rows: NaN in pandas, null in Arrow, -1 in arrays
    xp, _, pp = draw(n_pool)
    labeled = {"id": np.arange(n_lab), "label": yl, "probs": pl, "embedding": xl}
    pool = {"id": np.arange(10_000, 10_000 + n_pool), "probs": pp, "embedding": xp}
    return labeled, pool


LABELED, POOL = _world()


def _make(kind: str, arrays: dict, tmp_path: Path, name: str):
    """``arrays`` as the input kind ``kind`` (optional libraries skip when absent)."""
    table = as_scored(arrays)
    if kind == "arrays":
        return arrays
    if kind == "table":
        return table
    if kind == "reader":
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=100))
    if kind == "path":
        pq.write_table(table, tmp_path / f"{name}.parquet")
        return tmp_path / f"{name}.parquet"
    if kind == "folder":
        folder = tmp_path / name
        folder.mkdir()
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), folder / "a.parquet")
        pq.write_table(table.slice(half), folder / "b.parquet")
        return str(folder)
    if kind == "pandas":
        pytest.importorskip("pandas")
        return table.to_pandas()
    if kind == "polars":
        pl = pytest.importorskip("polars")
        return pl.from_arrow(table)
    if kind == "hf":
        datasets = pytest.importorskip("datasets")
        return datasets.Dataset(table)
    raise AssertionError(kind)


LSB_OPTS = dict(max_seeds=20, seed_threshold=0.4, k=8, index="flat", show_progress=False)


@pytest.fixture(scope="module")
def reference():
    """Every result from in-memory Arrow tables, the form broaden has always taken."""
    labeled, pool = as_scored(LABELED), as_scored(POOL)
    return {
        "entropy": select(pool, "entropy", 30).column("id").to_pylist(),
        "mix": select(pool, "entropy:0.5,lsb:0.5", 30, labeled=labeled, **LSB_OPTS).column("id").to_pylist(),
        "lsb": lsb(labeled, pool, **LSB_OPTS).candidates,
        "clean": clean(labeled).column("id").to_pylist(),
        "evaluate": evaluate(labeled),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gives_the_same_results(kind, tmp_path, reference):
    # A reader is read once: each call gets freshly made inputs (unique names for the files and folders).
    made = iter(range(100))

    def pool():
        return _make(kind, POOL, tmp_path, f"pool{next(made)}")

    def labeled():
        return _make(kind, LABELED, tmp_path, f"labeled{next(made)}")

    assert select(pool(), "entropy", 30).column("id").to_pylist() == reference["entropy"]
    mix = select(pool(), "entropy:0.5,lsb:0.5", 30, labeled=labeled(), **LSB_OPTS)
    assert mix.column("id").to_pylist() == reference["mix"]
    assert clean(labeled()).column("id").to_pylist() == reference["clean"]
    assert evaluate(labeled()) == reference["evaluate"]
    got, ref = lsb(labeled(), pool(), **LSB_OPTS).candidates, reference["lsb"]
    for col in ("id", "seed_id", "similarity"):
        assert got.column(col).to_pylist() == ref.column(col).to_pylist(), col


def test_keyword_arrays_like_cleanlab(reference):
    y, p = LABELED["label"], LABELED["probs"]
    assert evaluate(labels=y, probs=p) == reference["evaluate"]
    # ids default to the row numbers, which are this table's ids.
    assert clean(labels=y, probs=p).column("id").to_pylist() == reference["clean"]
    assert clean(labels=y, probs=p, ids=LABELED["id"] + 5).column("id").to_pylist() == \
        [i + 5 for i in reference["clean"]]
    # A dict may use the keyword names for the id and label columns.
    t = as_scored({"ids": LABELED["id"], "labels": y, "probs": p})
    assert t.column_names == ["id", "label", "probs"] and t.column("label").null_count == (y < 0).sum()


def test_results_convert_back_to_pandas():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"id": POOL["id"], "probs": list(POOL["probs"]), "note": "x"})
    batch = select(df, "margin", 5)
    assert isinstance(batch, pa.Table)
    out = batch.to_pandas()
    assert list(out.columns[:4]) == ["id", "strategy", "score", "rank"] and (out["note"] == "x").all()
    assert batch.schema.metadata is None or b"pandas" not in batch.schema.metadata  # no stale pandas index info


def test_pandas_index_named_id_is_the_id_column():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"probs": list(POOL["probs"])}, index=pd.Index(POOL["id"], name="id"))
    assert select(df, "entropy", 10).column("id").to_pylist() == select(POOL, "entropy", 10).column("id").to_pylist()


@pytest.mark.parametrize("call", [
    lambda bad: select(bad, "entropy", 5),
    lambda bad: select(POOL, "lsb", 5, labeled=bad),
    lambda bad: lsb(LABELED, bad),
    lambda bad: clean(bad),
    lambda bad: evaluate(bad),
])
@pytest.mark.parametrize("bad", [np.zeros((4, 3)), [0.1, 0.9], 42, object()])
def test_wrong_kind_is_a_type_error_naming_the_accepted_kinds(call, bad):
    with pytest.raises(TypeError, match=r"pandas or polars DataFrame, a Hugging Face datasets\.Dataset"):
        call(bad)


def test_table_and_arrays_together_or_nothing_is_a_type_error():
    with pytest.raises(TypeError, match="not both"):
        evaluate(LABELED, labels=LABELED["label"])
    with pytest.raises(TypeError, match="no data given"):
        clean()


def test_dataset_dict_hint():
    datasets = pytest.importorskip("datasets")
    with pytest.raises(TypeError, match=r"pick one split, e\.g\. ds\['train'\]"):
        evaluate(datasets.DatasetDict({"train": datasets.Dataset(as_scored(LABELED))}))


def test_arrays_of_different_lengths_name_them():
    from broaden.errors import ScoredTableError

    with pytest.raises(ScoredTableError, match="'label' has 3 rows"):
        evaluate(labels=np.array([0, 1, 1]), probs=LABELED["probs"])


def test_paths_stay_paths_for_streaming(tmp_path):
    p = tmp_path / "pool.parquet"
    assert as_scored(p) is p and as_scored(str(p)) == str(p)  # never read here: the pool is streamed later


def test_load_scored_validates_tables_like_files():
    from broaden.errors import ScoredTableError

    bad = dict(LABELED, probs=LABELED["probs"] * 2)
    with pytest.raises(ScoredTableError, match="probabilities sum to"):
        load_scored(bad, require=("id", "label", "probs"))
    with pytest.raises(ScoredTableError, match="probabilities sum to"):
        clean(bad)  # an in-memory table is validated as a file is (it was not before)


@pytest.mark.parametrize("kind", ["list", "numpy", "arrow", "set", "idset", "pandas", "polars", "frame", "file"])
def test_exclude_takes_every_kind_of_ids(kind, tmp_path):
    ids = [int(i) for i in select(POOL, "entropy", 10).column("id").to_pylist()[:5]]
    if kind == "file":
        value = tmp_path / "ids.txt"
        value.write_text("\n".join(map(str, ids)))
    elif kind == "pandas":
        value = pytest.importorskip("pandas").Series(ids)
    elif kind == "polars":
        value = pytest.importorskip("polars").Series(ids)
    elif kind == "frame":
        value = pytest.importorskip("pandas").DataFrame({"id": ids, "other": 0})
    else:
        value = {"list": ids, "numpy": np.array(ids), "arrow": pa.array(ids), "set": set(ids),
                 "idset": IdSet(ids)}[kind]
    assert as_ids(value).contains(np.array(ids)).all()
    picked = select(POOL, "entropy", 10, exclude=value).column("id").to_pylist()
    assert not set(picked) & set(ids)
    cand = lsb(LABELED, POOL, exclude=value, **LSB_OPTS).candidates.column("id").to_pylist()
    assert not set(cand) & set(ids)


def test_python_tour_runs_as_written(tmp_path, monkeypatch):
    """docs/python.md's ```python blocks, run in order in one namespace, in an empty folder."""
    for lib in ("pandas", "polars", "datasets"):
        pytest.importorskip(lib)
    text = (REPO / "docs" / "python.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__tour__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/python.md block {i + 1}", "exec"), namespace)  # noqa: S102
    assert os.listdir(tmp_path)  # the tour writes its batch like a user would


def test_old_inputs_module_is_a_deprecated_alias():
    import importlib
    import sys

    sys.modules.pop("broaden.inputs", None)
    with pytest.warns(DeprecationWarning, match="broaden.io.inputs"):
        old = importlib.import_module("broaden.inputs")
    assert old.as_scored is as_scored
