"""One vocabulary (issue 15 item 4, glossary in docs/architecture.md): old keyword names still work for one
release with a DeprecationWarning, and strategy options are checked instead of silently ignored."""
from __future__ import annotations

import numpy as np
import pytest

from broaden.errors import SelectionError
from broaden.io import make_scored_table
from broaden.lsb import build_index, seed_bad_cases
from broaden.metrics import evaluate
from broaden.select import select


@pytest.fixture
def labeled():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 60).astype(np.float32)
    return make_scored_table(np.arange(60), probs, rng.normal(size=(60, 4)).astype(np.float32), rng.integers(0, 3, 60))


def test_old_keyword_names_warn_and_give_the_same_result(labeled):
    with pytest.warns(DeprecationWarning, match="seed_threshold="):
        old = seed_bad_cases(labeled, threshold=0.3)
    assert old.equals(seed_bad_cases(labeled, seed_threshold=0.3))
    y, p = np.array([0, 1, 2, 1]), np.eye(3)[[0, 1, 1, 1]] * 0.9 + 0.1 / 3
    with pytest.warns(DeprecationWarning, match="discrepancy="):
        assert evaluate(y, p, discrepancy_kind="nominal")["multiclass_loss"] == \
            evaluate(y, p, discrepancy="nominal")["multiclass_loss"]
    with pytest.warns(DeprecationWarning, match="save_index="):
        build_index(labeled, index="flat", save=False)
    with pytest.raises(TypeError, match="old name"):
        build_index(labeled, index="flat", save=False, save_index=False)


def test_lsb_seeds_is_the_old_name_of_max_seeds(labeled):
    from broaden.lsb import lsb

    kwargs = dict(seed_threshold=0.3, k=3, index="flat", show_progress=False, save_index=False)
    with pytest.warns(DeprecationWarning, match="max_seeds="):
        old = lsb(labeled, labeled, seeds=5, **kwargs)
    assert old.candidates.equals(lsb(labeled, labeled, max_seeds=5, **kwargs).candidates)


def test_a_mistyped_strategy_option_is_an_error_naming_it_and_the_accepted_ones():
    pool = {"probs": np.random.default_rng(1).dirichlet(np.ones(3), 40)}
    with pytest.raises(SelectionError, match=r"'easy_shares'.*accepted: .*easy_share"):
        select(pool, "hw", 5, easy_shares=0.9)
    select(pool, "hw", 5, easy_share=0.9)  # the real name
    select(pool, "entropy", 5, committee_cols=None)  # another strategy's option: not an error


def test_library_errors_name_parameters_and_the_cli_shows_flags(tmp_path, capsys):
    from broaden.cli import as_flags, main
    from broaden.io import write_table

    assert as_flags("pass logits=True if these are raw scores; nlist=16") == "pass --logits if these are raw scores; nlist=16"
    pool = tmp_path / "pool.parquet"
    write_table(make_scored_table(np.arange(20), np.full((20, 3), 1 / 3, np.float32)), pool)
    with pytest.raises(SelectionError, match="pass labeled=$"):
        select(pool, "lsb", 5)
    assert main(["select", str(pool), "--strategy", "lsb", "--budget", "5", "--out", str(tmp_path / "o.parquet")]) == 2
    assert "pass --labeled" in capsys.readouterr().err


def test_dirty_bound_is_the_name_and_max_share_the_old_one(labeled):
    from broaden.select.cleaning import clean, label_issue_mask, rank_label_issues

    rng = np.random.default_rng(3)
    labels, probs = rng.integers(0, 3, 200), rng.dirichlet(np.ones(3), 200)
    want = label_issue_mask(labels, probs, dirty_bound=0.05)
    with pytest.warns(DeprecationWarning, match="dirty_bound="):
        assert np.array_equal(label_issue_mask(labels, probs, max_share=0.05), want)
    with pytest.warns(DeprecationWarning, match="dirty_bound="):
        assert np.array_equal(rank_label_issues(labels, probs, max_share=0.05)[0],
                              rank_label_issues(labels, probs, dirty_bound=0.05)[0])
    with pytest.warns(DeprecationWarning, match="dirty_bound="):
        assert clean(labeled, max_share=0.1).equals(clean(labeled, dirty_bound=0.1))
    with pytest.raises(TypeError, match="old name"):
        label_issue_mask(labels, probs, max_share=0.05, dirty_bound=0.05)


def test_show_progress_is_the_name_and_progress_the_old_one(tmp_path):
    from broaden.simulate import simulate
    from broaden.simulate.data import SimData

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    data = SimData("tiny", np.array([f"i{i}" for i in range(300)]), y, np.eye(3)[y] + rng.normal(size=(300, 3)),
                   rng.random(300) < 0.2, 3)
    kwargs = dict(budget=20, initial=60, repeats=1, groups=["Random", "Stat-AL+LSB"], print_results=False,
                  classifier={"hidden": (8,), "max_epochs": 3})
    with pytest.warns(DeprecationWarning) as caught:
        old = simulate(data, out=tmp_path / "old", seeds=7, progress=False, **kwargs)
    assert {"simulate(): seeds= is deprecated, use max_seeds= (docs/architecture.md, glossary)",
            "simulate(): progress= is deprecated, use show_progress= (docs/architecture.md, glossary)"} <= \
        {str(w.message) for w in caught}
    new = simulate(data, out=tmp_path / "new", max_seeds=7, show_progress=False, **kwargs)
    assert old["config"]["seeds"] == new["config"]["seeds"] == 7
    assert old["config"]["config_hash"] == new["config"]["config_hash"]
    assert old["table1"] == new["table1"]


def test_cli_old_flag_names_still_parse_to_the_glossary_names():
    from broaden.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["simulate", "--dataset", "d", "--out", "o", "--seeds", "7"]).max_seeds == 7
    assert parse(["simulate", "--dataset", "d", "--out", "o", "--max-seeds", "all"]).max_seeds is None
    assert parse(["lsb", "--labeled", "l", "--pool", "p", "--out", "o", "--seeds", "7"]).max_seeds == 7
    assert parse(["clean", "l", "--out", "o", "--max-share", "0.1"]).dirty_bound == 0.1
    assert parse(["clean", "l", "--out", "o", "--dirty-bound", "0.1"]).dirty_bound == 0.1
    for argv in (["score", "--model", "m", "--data", "d", "--out", "o"], ["train", "c"]):
        assert parse([*argv, "--threads", "2"]).num_threads == parse([*argv, "--num-threads", "2"]).num_threads == 2


def test_one_default_per_option_across_commands_and_library():
    """``--max-seeds`` and ``--lookalike-threshold`` default to the library's values everywhere (issue 15)."""
    import inspect

    from broaden.cli import build_parser
    from broaden.lsb import lsb
    from broaden.lsb.strategy import DEFAULT_LOOKALIKE_THRESHOLD
    from broaden.simulate import simulate

    parse = build_parser().parse_args
    lib, sim = inspect.signature(lsb).parameters, inspect.signature(simulate).parameters
    simulate_args = parse(["simulate", "--dataset", "d", "--out", "o"])
    lsb_args = parse(["lsb", "--labeled", "l", "--pool", "p", "--out", "o"])
    select_args = parse(["select", "p", "--strategy", "lsb-lt", "--budget", "1", "--out", "o"])
    assert lib["max_seeds"].default == sim["max_seeds"].default == simulate_args.max_seeds == lsb_args.max_seeds == 1000
    assert select_args.max_seeds is None  # unset: select leaves the library default to apply
    # Plain LSB keeps every neighbour; the LT-filtered groups and strategy use one τ2.
    assert lib["lookalike_threshold"].default is None and lsb_args.lookalike_threshold is None
    assert sim["lookalike_threshold"].default == simulate_args.lookalike_threshold == DEFAULT_LOOKALIKE_THRESHOLD
    assert select_args.lookalike_threshold is None
