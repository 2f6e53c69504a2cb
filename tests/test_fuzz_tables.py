"""Issue 13: a seeded fuzz of malformed scored tables through the CLI (evaluate, select, lsb, clean).

Each generated case is one defect (a missing column, a wrong type, NaN/inf, negative or over-1
probabilities, ragged lists, a scalar embedding, mixed id types across files, duplicate ids, corrupt or
empty files, C = 1, labels out of range, …) in a Parquet file or a folder of them, with the columns it
breaks. Every command that reads a broken column must exit 2 with one line naming the file (and the
column or row where there is one), print no traceback and write nothing. Randomly corrupted bytes may
land where a command does not look (or decode to valid values): there the command may also succeed,
but it never crashes.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from broaden.cli import main
from broaden.io import make_scored_table, write_table

C, D, N = 3, 4, 40
ALL = frozenset({"id", "label", "probs", "embedding"})
# The columns each command validates, by the role the table plays (lsb's pool: only ids and embeddings).
READS = {
    "evaluate": {"id", "label", "probs"},
    "clean": ALL,
    "select": {"id", "probs"},
    "lsb-labeled": ALL,
    "lsb-pool": {"id", "embedding"},
}
# The columns each command needs: a missing column fails only these (clean checks an embedding it is given).
REQUIRES = dict(READS, clean={"id", "label", "probs"})


@dataclass
class Case:
    name: str
    make: Callable[[np.random.Generator, Path], Path]  # writes the table, returns its path
    breaks: frozenset  # the columns it breaks (ALL for whole-file damage)
    column: str | None = None  # named in the message
    flaky: bool = False  # corrupt bytes: failing is not guaranteed, crashing is forbidden
    missing: bool = False  # the column is absent (fails the commands that require it)


# ------------------------------------------------------------------------------------- tables
def base(rng: np.random.Generator, n: int = N, start: int = 0, labelled: bool = True) -> pa.Table:
    """A valid table; labels null on every third row (unlabelled rows are legal everywhere)."""
    labels = rng.integers(0, C, n)
    labels[::3] = -1
    if not labelled:
        labels[:] = -1
    return make_scored_table(np.arange(start, start + n), rng.dirichlet(np.ones(C), n),
                             rng.normal(size=(n, D)), labels)


def put(table: pa.Table, name: str, values) -> pa.Table:
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    return table.set_column(table.schema.get_field_index(name), name, arr)


def matrix(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist(), dtype=np.float64)


def lists(m, typ=pa.float32()) -> pa.Array:
    return pa.array([list(r) if r is not None else None for r in m], pa.list_(typ))


def single(fn) -> Callable:
    """A case that writes one file made from a mutated base table."""
    def make(rng, d):
        return write_table(fn(rng, base(rng)), d / "t.parquet")
    return make


def folder(fn) -> Callable:
    """A case whose defect lies in the second file of a folder (the first is valid)."""
    def make(rng, d):
        out = d / "t"
        out.mkdir()
        write_table(base(rng, N // 2), out / "a.parquet")
        write_table(fn(rng, base(rng, N // 2, start=1000)), out / "b.parquet")
        return out
    return make


def row(rng, table: pa.Table) -> int:
    return int(rng.integers(0, table.num_rows))


def set_cell(name, value, typ=None):
    def fn(rng, t):
        m = matrix(t, name)
        r = row(rng, t)
        m[r, int(rng.integers(0, m.shape[1]))] = value
        return put(t, name, lists(m, typ or pa.float32()))
    return fn


def set_prob_row(values):
    def fn(rng, t):
        m = matrix(t, "probs")
        m[row(rng, t)] = values
        return put(t, "probs", lists(m, pa.float64()))
    return fn


def ragged(name):
    def fn(rng, t):
        rows = t.column(name).to_pylist()
        r = row(rng, t)
        rows[r] = rows[r][:-1] if rng.random() < 0.5 else rows[r] + [0.0]
        return put(t, name, pa.array(rows, pa.list_(pa.float32())))
    return fn


def null_at(name):
    def fn(rng, t):
        values = t.column(name).to_pylist()
        values[row(rng, t)] = None
        return put(t, name, pa.array(values, t.schema.field(name).type))
    return fn


def label_value(value, typ=pa.float64()):
    def fn(rng, t):
        labels = t.column("label").to_pylist()
        labels[row(rng, t)] = value
        return put(t, "label", pa.array([np.nan if v is None and typ == pa.float64() else v for v in labels], typ))
    return fn


def duplicate_id(rng, t):
    ids = t.column("id").to_pylist()
    a, b = rng.choice(t.num_rows, 2, replace=False)
    ids[b] = ids[a]
    return put(t, "id", ids)


def whole_file(kind):
    def make(rng, d):
        path = d / "t.parquet"
        write_table(base(rng, 400), path, compression="none")
        data = bytearray(path.read_bytes())
        if kind == "empty":
            data = bytearray()
        elif kind == "text":
            data = bytearray(b"id,label,probs\n1,0,0.5\n")
        elif kind == "truncated":
            data = data[: int(rng.integers(8, len(data) - 8))]
        elif kind == "footer":  # damage the footer (schema and row-group metadata)
            for i in rng.integers(len(data) - 300, len(data) - 8, 40):
                data[i] ^= 0xFF
        else:  # pages: flip bytes inside the data pages
            for i in rng.integers(4, len(data) // 2, int(rng.integers(5, 200))):
                data[i] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        return path
    return make


def cross_files(fn):
    """Files that are each valid alone but disagree with each other."""
    def make(rng, d):
        out = d / "t"
        out.mkdir()
        first, second = fn(rng)
        write_table(first, out / "a.parquet")
        write_table(second, out / "b.parquet")
        return out
    return make


def _cross_id_type(kind):
    def fn(rng):
        a, b = base(rng, N // 2), base(rng, N // 2, start=100)
        if kind == "string":
            b = put(b, "id", [f"x{i}" for i in range(N // 2)])
        else:
            b = put(b, "id", pa.array(np.arange(100, 100 + N // 2, dtype=kind)))
        return a, b
    return fn


def _cross_width(name):
    def fn(rng):
        a = base(rng, N // 2)
        n = N // 2
        b = make_scored_table(np.arange(100, 100 + n), rng.dirichlet(np.ones(C + (name == "probs")), n),
                              rng.normal(size=(n, D + (name == "embedding"))), np.full(n, -1))
        return a, b
    return fn


def _cross_duplicate(rng):
    a = base(rng, N // 2)
    return a, base(rng, N // 2, start=int(rng.integers(0, N // 2)) - N // 2 + 1)


def cases() -> list[Case]:
    out = []
    for col in ALL:
        out.append(Case(f"missing-{col}", single(lambda rng, t, c=col: t.drop_columns([c])), frozenset({col}), col,
                        missing=True))
    out += [
        Case("probs-scalar", single(lambda rng, t: put(t, "probs", rng.random(N))), frozenset({"probs"}), "probs"),
        Case("probs-strings", single(lambda rng, t: put(t, "probs", pa.array([["a", "b", "c"]] * N))),
             frozenset({"probs"}), "probs"),
        Case("embedding-scalar", single(lambda rng, t: put(t, "embedding", rng.normal(size=N))),
             frozenset({"embedding"}), "embedding"),
        Case("embedding-string", single(lambda rng, t: put(t, "embedding", ["x"] * N)),
             frozenset({"embedding"}), "embedding"),
        Case("label-strings", single(lambda rng, t: put(t, "label", ["cat"] * N)), frozenset({"label"}), "label"),
        Case("id-float", single(lambda rng, t: put(t, "id", rng.random(N))), frozenset({"id"}), "id"),
        Case("id-list", single(lambda rng, t: put(t, "id", [[i] for i in range(N)])), frozenset({"id"}), "id"),
        Case("id-bool", single(lambda rng, t: put(t, "id", [bool(i % 2) for i in range(N)])), frozenset({"id"}), "id"),
        Case("id-null", single(null_at("id")), frozenset({"id"}), "id"),
        Case("id-duplicate", single(duplicate_id), frozenset({"id"})),
        Case("probs-nan", single(set_cell("probs", np.nan)), frozenset({"probs"}), "probs"),
        Case("probs-inf", single(set_cell("probs", np.inf)), frozenset({"probs"}), "probs"),
        Case("probs-negative", single(set_prob_row([-0.5, 0.75, 0.75])), frozenset({"probs"}), "probs"),
        Case("probs-over-1", single(set_prob_row([1.5, 0.0, 0.0])), frozenset({"probs"}), "probs"),
        Case("probs-sum", single(set_prob_row([0.2, 0.2, 0.2])), frozenset({"probs"}), "probs"),
        Case("probs-ragged", single(ragged("probs")), frozenset({"probs"}), "probs"),
        Case("probs-null", single(null_at("probs")), frozenset({"probs"}), "probs"),
        Case("probs-empty-lists", single(lambda rng, t: put(t, "probs", pa.array([[]] * N, pa.list_(pa.float32())))),
             frozenset({"probs"}), "probs"),
        Case("probs-c1", single(lambda rng, t: put(t, "probs", lists(np.ones((N, 1))))), frozenset({"probs"}), "probs"),
        Case("embedding-nan", single(set_cell("embedding", np.nan)), frozenset({"embedding"}), "embedding"),
        Case("embedding-inf", single(set_cell("embedding", -np.inf)), frozenset({"embedding"}), "embedding"),
        Case("embedding-ragged", single(ragged("embedding")), frozenset({"embedding"}), "embedding"),
        Case("embedding-null", single(null_at("embedding")), frozenset({"embedding"}), "embedding"),
        Case("label-out-of-range", single(label_value(C, pa.int64())), frozenset({"label"}), "label"),
        Case("label-negative", single(label_value(-2, pa.int64())), frozenset({"label"}), "label"),
        Case("label-inf", single(label_value(np.inf)), frozenset({"label"}), "label"),
        Case("label-fraction", single(label_value(1.5)), frozenset({"label"}), "label"),
        Case("folder-probs-nan", folder(set_cell("probs", np.nan)), frozenset({"probs"}), "probs"),
        Case("folder-embedding-ragged", folder(ragged("embedding")), frozenset({"embedding"}), "embedding"),
        Case("folder-label-out-of-range", folder(label_value(C + 2, pa.int64())), frozenset({"label"}), "label"),
        Case("folder-id-null", folder(null_at("id")), frozenset({"id"}), "id"),
        Case("cross-id-string", cross_files(_cross_id_type("string")), frozenset({"id"}), "id"),
        Case("cross-id-uint64", cross_files(_cross_id_type(np.uint64)), frozenset({"id"}), "id"),
        Case("cross-id-int32", cross_files(_cross_id_type(np.int32)), frozenset({"id"}), "id"),
        Case("cross-probs-width", cross_files(_cross_width("probs")), frozenset({"probs"}), "probs"),
        Case("cross-embedding-dim", cross_files(_cross_width("embedding")), frozenset({"embedding"}), "embedding"),
        Case("cross-duplicate-id", cross_files(_cross_duplicate), frozenset({"id"})),
        Case("empty-file", whole_file("empty"), ALL),
        Case("text-file", whole_file("text"), ALL),
        Case("truncated", whole_file("truncated"), ALL),
        Case("corrupt-footer", whole_file("footer"), ALL, flaky=True),
        Case("corrupt-pages", whole_file("pages"), ALL, flaky=True),
        Case("empty-folder", lambda rng, d: (d / "t").mkdir() or d / "t", ALL),
    ]
    return out


# Each case with several seeds (different rows, values, cut points); corrupt bytes get more draws.
SEEDS = {"corrupt-pages": 10, "corrupt-footer": 5, "truncated": 5}
GENERATED = [(c, s) for c in cases() for s in range(SEEDS.get(c.name, 2))]


# ------------------------------------------------------------------------------------- commands
def argv_for(command: str, table: Path, good_labeled: Path, good_pool: Path, out: Path) -> list[str]:
    return [str(a) for a in {
        "evaluate": ["evaluate", table],
        "clean": ["clean", table, "--out", out],
        "select": ["select", table, "--strategy", "entropy", "--budget", 2, "--out", out],
        "lsb-labeled": ["lsb", "--labeled", table, "--pool", good_pool, "--out", out, "--no-save-index",
                        "--seed-threshold", 0.05],
        "lsb-pool": ["lsb", "--labeled", good_labeled, "--pool", table, "--out", out, "--seed-threshold", 0.05],
    }[command]]


def run_cli(capsys, argv: list[str]) -> tuple[int | str, str]:
    """Exit code and stderr; an exception escaping ``main`` counts as a traceback."""
    try:
        rc = main(argv)
    except Exception:  # noqa: BLE001 - the point is to catch anything main lets through
        rc = "Traceback " + traceback.format_exc(limit=-3)
    return rc, capsys.readouterr().err


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(99)
    return write_table(base(rng, 60, start=5000), d / "lab.parquet"), write_table(
        base(rng, 80, start=9000, labelled=False), d / "pool.parquet")


def test_fuzz_malformed_tables_fail_cleanly(tmp_path, good, capsys):
    good_labeled, good_pool = good
    failures, runs = [], 0
    for case, seed in GENERATED:
        rng = np.random.default_rng([seed, sum(map(ord, case.name))])
        work = tmp_path / f"{case.name}-{seed}"
        work.mkdir()
        table = case.make(rng, work)
        for command, reads in (REQUIRES if case.missing else READS).items():
            if not reads & case.breaks:
                continue
            out = work / "out.parquet"
            before = listing(tmp_path)
            rc, err = run_cli(capsys, argv_for(command, table, good_labeled, good_pool, out))
            runs += 1
            where = f"{case.name}#{seed} {command}: rc={rc} {err.strip()[:300]!r}"
            if "Traceback" in err or "Traceback" in str(rc):
                failures.append(f"{where}: traceback")
            elif rc == 0 and case.flaky:
                if out.exists():
                    out.unlink()
                continue
            elif rc != 2:
                failures.append(f"{where}: expected exit 2")
            elif len(err.strip().splitlines()) != 1 or not err.startswith("error:"):
                failures.append(f"{where}: not one error line")
            elif table.name not in err:
                failures.append(f"{where}: the message does not name the file")
            elif (repr(case.column) not in err) if case.column else ("row" not in err and case.breaks != ALL):
                failures.append(f"{where}: the message names neither column nor row")
            elif listing(tmp_path) != before:
                failures.append(f"{where}: wrote {sorted(set(listing(tmp_path)) - set(before))}")
    assert runs > 300
    assert not failures, f"{len(failures)} of {runs} runs:\n" + "\n".join(failures[:40])
