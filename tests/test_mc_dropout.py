"""`broaden score --mc-dropout N` (issue 17 item 2): N stochastic passes with only the dropout modules in
train mode and consistent, seeded masks; their mean is `probs`; an item's passes do not depend on its batch;
with dropout p = 0 every pass equals the deterministic scores. Tiny models (a 2-layer MoME config run, a tiny
BERT text run) keep it fast."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from broaden.cli import main
from broaden.errors import ConfigError
from broaden.io import write_table
from broaden.models.checkpoint import load_model
from broaden.models.config import run_config_from_dict
from broaden.models.data import Featurizer
from broaden.models.inference import infer
from broaden.models.mcdropout import dropout_active, mc_passes, positional_uniform
from broaden.models.score import score
from broaden.models.testing import WORDS, tiny_hf_encoder, tiny_tokenizer
from broaden.models.train import train
from broaden.select import bald, select

N = 5


def matrix(table: pa.Table, col: str) -> np.ndarray:
    return np.array(table.column(col).to_pylist(), dtype=np.float64)


def members(table: pa.Table, n: int = N) -> np.ndarray:
    return np.stack([matrix(table, f"probs_m{i}") for i in range(n)])


def text_items(n: int, seed: int) -> pa.Table:
    r = random.Random(seed)
    labels = [r.randint(0, 1) for _ in range(n)]
    texts = [" ".join(r.sample(WORDS[:10], 3) + ["cat" if y else "dog"]) for y in labels]
    return pa.table({"id": [f"t{i:03d}" for i in range(n)], "label": labels, "text": texts})


@pytest.fixture(scope="module")
def config_run(tmp_path_factory):
    """A tiny text-only MoME run with dropout 0.3 in the backbone and the classifier."""
    root = tmp_path_factory.mktemp("mc")
    tiny_tokenizer(root / "tok")
    write_table(text_items(48, 0), root / "items.parquet")
    cfg = run_config_from_dict({
        "out": str(root / "run"), "data": {"train": str(root / "items.parquet"), "text_fields": ["text"]},
        "model": dict(tokenizer=str(root / "tok"), width=32, layers=2, heads=2, mlp_hidden=16, max_text_length=12,
                      dropout=0.3, classifier_dropout=0.3),
        "train": dict(lr=3e-3, batch_size=16, epochs=1, eval_fraction=0.0, num_threads=1)})
    train(cfg)
    return root


def score_(root, out, **kw):
    kw = {"batch_size": 16, **kw}
    return pq.read_table(score(root / "run", root / "items.parquet", out, num_threads=1, **kw).out)


def test_passes_differ_their_mean_is_probs_and_the_embedding_is_deterministic(config_run, tmp_path):
    plain = score_(config_run, tmp_path / "plain.parquet")
    mc = score_(config_run, tmp_path / "mc.parquet", mc_dropout=N, seed=3)
    assert mc.schema.names == ["id", "label", "text", "probs", *[f"probs_m{i}" for i in range(N)], "embedding"]
    passes = members(mc)
    assert passes.shape == (N, 48, 2)
    assert not np.allclose(passes[0], passes[1], atol=1e-4)  # dropout was on
    assert np.abs(passes - matrix(plain, "probs")).max() > 1e-3
    np.testing.assert_allclose(passes.mean(axis=0), matrix(mc, "probs"), atol=1e-6)
    np.testing.assert_allclose(passes.sum(axis=2), 1.0, atol=1e-5)
    # the latent LSB searches comes from the deterministic pass, bit for bit
    assert mc.column("embedding").equals(plain.column("embedding"))
    # and select reads the passes as a committee (the labels dropped: labelled rows are never selected)
    picked = select(mc.drop_columns(["label"]), "bald", 5).column("id").to_pylist()
    scores = bald(list(passes))
    ids = mc.column("id").to_pylist()
    assert picked == [ids[i] for i in sorted(range(48), key=lambda i: (-scores[i], ids[i]))[:5]]


def test_passes_are_deterministic_under_the_seed_and_independent_of_batching(config_run, tmp_path):
    a = score_(config_run, tmp_path / "a.parquet", mc_dropout=3, seed=7)
    b = score_(config_run, tmp_path / "b.parquet", mc_dropout=3, seed=7)
    c = score_(config_run, tmp_path / "c.parquet", mc_dropout=3, seed=8)
    assert a.equals(b)
    assert not np.allclose(members(a, 3), members(c, 3), atol=1e-4)
    # an item's passes depend on the seed and the item only: other batch sizes (other padding, other
    # neighbours) and an item scored alone give the same numbers, up to float rounding
    d = score_(config_run, tmp_path / "d.parquet", mc_dropout=3, seed=7, batch_size=7)
    np.testing.assert_allclose(members(d, 3), members(a, 3), atol=1e-5)
    write_table(pq.read_table(config_run / "items.parquet").slice(20, 1), tmp_path / "one.parquet")
    alone = pq.read_table(score(config_run / "run", tmp_path / "one.parquet", tmp_path / "e.parquet",
                                num_threads=1, mc_dropout=3, seed=7).out)
    np.testing.assert_allclose(members(alone, 3), members(a, 3)[:, 20:21], atol=1e-5)


def test_a_pass_is_one_network_for_every_item(config_run, tmp_path):
    """Consistent MC dropout (Kirsch et al. 2019): the same text under two ids gets the same pass j."""
    items = pq.read_table(config_run / "items.parquet").slice(0, 6)
    twin = items.slice(0, 1).set_column(0, "id", pa.array(["twin"]))
    write_table(pa.concat_tables([items, twin]), tmp_path / "twins.parquet")
    t = pq.read_table(score(config_run / "run", tmp_path / "twins.parquet", tmp_path / "t.parquet", num_threads=1,
                            mc_dropout=4, seed=2).out)
    passes = members(t, 4)
    np.testing.assert_allclose(passes[:, 0], passes[:, 6], atol=1e-6)
    assert not np.allclose(passes[0, 0], passes[1, 0], atol=1e-4)


def test_positional_masks():
    """Each mask element depends on its position only, so padding a sequence leaves the shared part as it
    was; the draws are uniform, so dropout keeps a share 1 − p of the units."""
    big, small = positional_uniform((9, 40), 17), positional_uniform((4, 33), 17)
    assert torch.equal(big[:4, :33], small)
    assert not torch.equal(positional_uniform((9, 40), 18), big)
    u = positional_uniform((500, 384), 3).numpy()
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    assert abs((u < 0.7).mean() - 0.7) < 0.005
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01  # neighbours independent


def test_with_dropout_zero_every_pass_equals_the_deterministic_scores(config_run):
    loaded = load_model(config_run / "run")
    for m in loaded.model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    feat = Featurizer(loaded.config, loaded.columns, loaded.tokenizer)
    items = pq.read_table(config_run / "items.parquet")
    plain = next(infer(loaded.model, feat, [items]))
    mc = next(infer(loaded.model, feat, [items], mc_dropout=4, seed=1))
    assert mc.passes.shape == (4, 48, 2)
    for p in mc.passes:
        np.testing.assert_allclose(p, plain.probs, atol=1e-6)
    np.testing.assert_allclose(mc.probs, plain.probs, atol=1e-6)
    assert not loaded.model.training  # back in eval after the passes


def test_only_dropout_modules_train_and_modes_are_restored():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    net.eval()
    stats = net[1].running_mean.clone()
    x = torch.randn(16, 4)
    with dropout_active(net):
        assert [m.training for m in net] == [False, False, True, False] and not net.training
    assert not any(m.training for m in net.modules())
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    passes = mc_passes(net, lambda: torch.softmax(net(x), -1).detach().numpy(), 3, seed=0)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is left alone
    assert torch.equal(net[1].running_mean, stats)  # batch norm stayed in eval: no statistics updated
    assert passes.shape == (3, 16, 2) and not np.allclose(passes[0], passes[1])
    again = mc_passes(net, lambda: torch.softmax(net(x), -1).detach().numpy(), 3, seed=0)
    assert np.array_equal(passes, again)
    net.train()
    with dropout_active(net):
        pass
    assert all(m.training for m in net.modules())


def test_other_dropout_types_are_refused():
    net = nn.Sequential(nn.Linear(4, 4), nn.AlphaDropout(0.2), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="nn.Dropout only; the model's 1 is a AlphaDropout"):
        mc_passes(net, lambda: net(torch.ones(2, 4)).detach().numpy(), 2, seed=0)


@pytest.mark.parametrize("n", [1, -2, 2.5, True])
def test_bad_pass_counts_are_refused(config_run, tmp_path, n):
    with pytest.raises(ConfigError, match="mc_dropout= takes 0 .* >= 2"):
        score_(config_run, tmp_path / "x.parquet", mc_dropout=n)


# ------------------------------------------------------------------------------------- text runs
@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mctext")
    tiny_hf_encoder(root / "enc")
    pcsv.write_csv(text_items(60, 1), root / "labeled.csv")
    pcsv.write_csv(text_items(25, 2).drop_columns(["label"]), root / "pool.csv")
    return root


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_text_runs_write_the_passes_from_the_cli(text_files, tmp_path, mode):
    run = tmp_path / "run"
    assert main(["train", "--data", str(text_files / "labeled.csv"), "--text", "text", "--label", "label",
                 "--model-path", str(text_files / "enc"), "--out", str(run), "--encoder", mode, "--epochs", "1",
                 "--quiet"]) == 0

    def score_cli(name, *extra):
        assert main(["score", "--model", str(run), "--data", str(text_files / "pool.csv"), "--out",
                     str(tmp_path / name), "--precision", "fp32", "--quiet", *extra]) == 0
        return pq.read_table(tmp_path / name)

    plain = score_cli("plain.parquet")
    mc = score_cli("mc.parquet", "--mc-dropout", "4", "--seed", "5")
    again = score_cli("again.parquet", "--mc-dropout", "4", "--seed", "5")
    passes = members(mc, 4)
    assert passes.shape == (4, 25, 2)
    assert not np.allclose(passes[0], passes[1], atol=1e-5)
    np.testing.assert_allclose(passes.mean(axis=0), matrix(mc, "probs"), atol=1e-6)
    assert mc.column("embedding").equals(plain.column("embedding"))
    assert mc.equals(again)
    # re-scoring a scored table replaces its committee columns instead of carrying stale ones along
    write_table(mc, tmp_path / "scored.parquet")
    assert main(["score", "--model", str(run), "--data", str(tmp_path / "scored.parquet"), "--out",
                 str(tmp_path / "re.parquet"), "--precision", "fp32", "--quiet", "--mc-dropout", "2"]) == 0
    assert pq.read_table(tmp_path / "re.parquet").schema.names.count("probs_m0") == 1
    assert "probs_m3" not in pq.read_table(tmp_path / "re.parquet").schema.names


def test_cli_names_the_flag(text_files, tmp_path, capsys):
    assert main(["score", "--model", str(tmp_path / "nowhere"), "--data", str(text_files / "pool.csv"),
                 "--out", str(tmp_path / "o.parquet"), "--mc-dropout", "1", "--quiet"]) == 2
    assert "--mc-dropout takes 0" in capsys.readouterr().err
