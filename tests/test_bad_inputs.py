"""Issue 13: malformed scored tables, bad outputs and out-of-range options give one clear error (exit 2),
never a traceback, and write nothing."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from broaden.cli import main
from broaden.errors import BroadenError, OutputError, ScoredTableError
from broaden.io import Validator, make_scored_table, read_scored, write_table


def scored(n=60, C=3, d=8, labels=True, start=0, seed=0, ids=None):
    """A valid scored table; ``labels=None`` gives a label column that is all null (read as unlabelled, so
    that ``select`` does not skip every row as already labelled before it reads the bad column)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + n) if ids is None else ids
    lab = rng.integers(0, C, n) if labels else np.full(n, -1) if labels is None else None
    return make_scored_table(ids, rng.dirichlet(np.ones(C), n), rng.normal(size=(n, d)), lab)


def set_col(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


@pytest.fixture
def files(tmp_path):
    lab = write_table(scored(), tmp_path / "lab.parquet")
    pool = write_table(scored(200, labels=False, start=1000, seed=1), tmp_path / "pool.parquet")
    return tmp_path, lab, pool


def run(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def commands(table, lab, pool, out):
    """Each command with ``table`` in the role where it is read (labelled or pool)."""
    return {
        "evaluate": ["evaluate", table],
        "clean": ["clean", table, "--out", out],
        "select": ["select", table, "--strategy", "entropy", "--budget", 3, "--out", out],
        "lsb-labeled": ["lsb", "--labeled", table, "--pool", pool, "--out", out, "--no-save-index"],
        "lsb-pool": ["lsb", "--labeled", lab, "--pool", table, "--out", out, "--no-save-index",
                     "--seed-threshold", 0.1],
    }


def assert_fails(capsys, argv, *needles, out=None):
    rc, err = run(capsys, *argv)
    assert rc == 2, err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    if out is not None:
        assert not out.exists()
    return err


# ------------------------------------------------------------------------------------ tables
def test_inf_in_a_float_label_column(files, capsys):
    tmp, lab, pool = files
    t = scored()
    bad = write_table(set_col(t, "label", pa.array(np.r_[0.0, np.inf, np.zeros(58)])), tmp / "inf.parquet")
    for name, argv in commands(bad, lab, pool, tmp / "o.parquet").items():
        if name in ("select", "lsb-pool"):
            continue  # the pool's labels are not read there
        assert_fails(capsys, argv, str(bad), "'label' row 1", "inf", out=tmp / "o.parquet")


def _corrupt(path, seed=0):
    """Flip bytes inside the data pages (between the magic header and the footer)."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.integers(8, len(data) // 2, 400):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_page_data_in_every_command(files, capsys):
    tmp, lab, pool = files
    bad = tmp / "corrupt.parquet"
    write_table(scored(3000, labels=None, start=5000), bad, compression="none")
    _corrupt(bad)
    for argv in commands(bad, lab, pool, tmp / "o.parquet").values():
        assert_fails(capsys, argv, str(bad), out=tmp / "o.parquet")


@pytest.mark.parametrize("second", [pa.array([f"s{i}" for i in range(30)]),
                                    pa.array(np.arange(100, 130, dtype=np.uint64))], ids=["string", "uint64"])
def test_id_types_differing_across_files(files, capsys, second):
    tmp, lab, pool = files
    folder = tmp / "mixed"
    folder.mkdir()
    write_table(scored(30, start=500, labels=None), folder / "a.parquet")
    write_table(set_col(scored(30, seed=2, labels=None), "id", second), folder / "b.parquet")
    for argv in commands(folder, lab, pool, tmp / "o.parquet").values():
        assert_fails(capsys, argv, str(folder / "b.parquet"), "'id'", str(second.type), out=tmp / "o.parquet")


def test_uint64_id_beyond_int64_is_refused(tmp_path):
    t = set_col(scored(3), "id", pa.array([1, 2, 2**63 + 1], pa.uint64()))
    write_table(t, tmp_path / "big.parquet")
    with pytest.raises(ScoredTableError, match="row 2"):
        read_scored(tmp_path / "big.parquet")


def test_scalar_embedding_column(files, capsys):
    tmp, lab, pool = files
    bad = write_table(set_col(scored(200, labels=False, start=1000), "embedding", pa.array(np.ones(200))),
                      tmp / "scalar.parquet")
    assert_fails(capsys, commands(bad, lab, pool, tmp / "o.parquet")["lsb-pool"], str(bad), "'embedding'",
                 out=tmp / "o.parquet")
    assert_fails(capsys, ["select", bad, "--labeled", lab, "--strategy", "lsb", "--budget", 3, "--out",
                          tmp / "o.parquet", "--seed-threshold", 0.1], str(bad), "'embedding'", out=tmp / "o.parquet")


def test_one_class_probabilities(files, capsys):
    tmp, lab, pool = files
    rng = np.random.default_rng(0)
    bad = write_table(make_scored_table(np.arange(60), np.ones((60, 1)), rng.normal(size=(60, 8)),
                                        np.full(60, -1)), tmp / "c1.parquet")
    for name, argv in commands(bad, lab, pool, tmp / "o.parquet").items():
        assert_fails(capsys, argv, str(bad), "'probs'", "1 class", out=tmp / "o.parquet")


# ------------------------------------------------------------------------------------- clean
def test_clean_single_class_labels(files, capsys):
    tmp, _, _ = files
    for cls in (0, 2):  # cleanlab failed on the last class and silently guessed on class 0
        bad = write_table(set_col(scored(), "label", pa.array(np.full(60, cls))), tmp / f"one{cls}.parquet")
        assert_fails(capsys, ["clean", bad, "--out", tmp / "o.parquet"], str(bad), "'label'",
                     f"class {cls}", out=tmp / "o.parquet")


def test_clean_accepts_tiny_negative_probabilities_and_matches_cleanlab(files, capsys):
    from cleanlab.filter import find_label_issues

    tmp, _, _ = files
    t = scored(200, seed=3)
    probs = np.asarray(t.column("probs").to_pylist(), dtype=np.float64)
    probs[0] = [-0.0009, 0.5009, 0.5]  # within the validator's 1e-3 sum tolerance
    bad = write_table(set_col(t, "probs", pa.array(probs.tolist(), pa.list_(pa.float64()))), tmp / "neg.parquet")
    rc, err = run(capsys, "clean", bad, "--out", tmp / "o.parquet")
    assert rc == 0, err
    flagged = set(pa.parquet.read_table(tmp / "o.parquet").column("id").to_pylist())
    labels = np.asarray(t.column("label").to_pylist())
    expected = find_label_issues(labels, np.clip(probs, 0, 1), filter_by="prune_by_noise_rate", n_jobs=1)
    assert flagged == set(np.flatnonzero(expected).tolist())


# ------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("where", ["folder", "under-a-file"])
def test_bad_out_path_is_a_clear_error_and_writes_nothing(files, capsys, where):
    tmp, lab, pool = files
    out = tmp / "results" if where == "folder" else lab / "o.parquet"
    if where == "folder":
        out.mkdir()
    before = sorted(p.name for p in tmp.rglob("*"))
    for argv in (["select", pool, "--strategy", "entropy", "--budget", 3, "--out", out],
                 ["lsb", "--labeled", lab, "--pool", pool, "--out", out, "--index", "ivf", "--seed-threshold", 0.1],
                 ["lsb", "--labeled", lab, "--pool", pool, "--out", tmp / "ok.parquet", "--seeds-out", out,
                  "--index", "ivf", "--seed-threshold", 0.1],
                 ["clean", lab, "--out", out]):
        assert_fails(capsys, argv, str(out))
        assert sorted(p.name for p in tmp.rglob("*")) == before  # no output, no saved index, no temp file


def test_atomic_write_to_a_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot write"):
        write_table(scored(3), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ class counts
def test_labelled_and_pool_class_counts_must_match(files, capsys):
    tmp, lab, _ = files
    pool4 = write_table(scored(200, C=4, labels=False, start=1000), tmp / "pool4.parquet")
    out = tmp / "o.parquet"
    for argv in (["lsb", "--labeled", lab, "--pool", pool4, "--out", out, "--no-save-index", "--seed-threshold", 0.1],
                 ["select", pool4, "--labeled", lab, "--strategy", "lsb:0.5,entropy:0.5", "--budget", 10,
                  "--out", out, "--seed-threshold", 0.1],
                 ["select", pool4, "--labeled", lab, "--strategy", "hw", "--budget", 10, "--out", out]):
        assert_fails(capsys, argv, str(pool4), "4 classes", "has 3", out=out)


# -------------------------------------------------------------------------------- lsb options
def test_lsb_k_is_capped_at_the_pool_size(files, monkeypatch):
    from broaden.lsb import knn, lsb

    tmp, lab, pool = files
    sizes = []
    real = knn.ExactScan.__init__

    def spy(self, queries, k, metric, gpu=None):
        sizes.append(k)
        assert k <= 200, "a result heap sized beyond the pool"
        real(self, queries, k, metric, gpu)

    monkeypatch.setattr(knn.ExactScan, "__init__", spy)
    result = lsb(lab, pool, k=100_000_000, seed_threshold=0.1, save_index=False, show_progress=False)
    assert sizes and max(sizes) == 200
    assert result.candidates.num_rows == 200  # every pool row is someone's neighbour


@pytest.mark.parametrize("flag,value,name", [("--lookalike-threshold", 2, "lookalike_threshold"),
                                             ("--lookalike-threshold", -0.1, "lookalike_threshold"),
                                             ("--seed-threshold", 2, "seed_threshold"),
                                             ("--seed-threshold", -1, "seed_threshold")])
def test_lsb_thresholds_outside_0_1_are_errors(files, capsys, flag, value, name):
    from broaden.lsb import lsb

    tmp, lab, pool = files
    assert_fails(capsys, ["lsb", "--labeled", lab, "--pool", pool, "--out", tmp / "o.parquet", "--no-save-index",
                          flag, value], name, out=tmp / "o.parquet")
    with pytest.raises(BroadenError, match=name):
        lsb(lab, pool, save_index=False, show_progress=False, **{name: value})


def test_validator_rejects_inf_label_in_memory():
    t = set_col(scored(4), "label", pa.array([0.0, 1.0, -np.inf, np.nan]))
    with pytest.raises(ScoredTableError, match="row 2"):
        Validator(require=("id", "label", "probs"))(t, "t")
