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
