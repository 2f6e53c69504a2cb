"""Monte Carlo dropout (Gal & Ghahramani 2016): N stochastic forward passes of one trained model.

Each pass runs with the model's dropout modules in train mode and everything else in eval (normalisation
statistics, frozen parts), so the passes are samples of the approximate posterior that BALD and the
committee strategies read (Houlsby et al. 2011; Gal et al. 2017). ``broaden score --mc-dropout N`` writes
them as the committee columns ``probs_m0 … probs_m{N−1}`` (:meth:`broaden.io.Columns.committee`) and their
mean as ``probs``; the embedding always comes from the deterministic (eval) pass, so kNN neighbourhoods do
not depend on the dropout noise.

Dropout is drawn from torch's generator seeded per chunk of items by (``seed``, the chunk's ids): the passes
are a pure function of the model, the seed and how the items are batched, in this process or on a Ray
worker, and the caller's random state is left as it was.
"""
from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from broaden.errors import ConfigError


def check_passes(mc_dropout: int) -> int:
    """``mc_dropout`` as an int: 0 (off) or at least 2 passes (a committee needs two members)."""
    if isinstance(mc_dropout, bool) or not isinstance(mc_dropout, (int, np.integer)) or \
            mc_dropout < 0 or mc_dropout == 1:
        raise ConfigError(f"mc_dropout= takes 0 (off) or a number of passes >= 2, got {mc_dropout!r}")
    return int(mc_dropout)


def chunk_seed(seed: int, ids: Sequence) -> int:
    """A 63-bit seed from (``seed``, the chunk's ids): stable across processes (no Python ``hash``)."""
    digest = zlib.crc32("\x1f".join(map(str, ids)).encode("utf-8"))
    return (int(seed) * 0x100000001B3 + digest) % 2**63


@contextlib.contextmanager
def dropout_active(model: nn.Module) -> Iterator[nn.Module]:
    """Dropout modules in train mode, every other module in eval; each module's mode is restored after.

    ``model.train()`` goes first so a model that keeps parts in eval while training (a frozen encoder:
    :class:`~broaden.models.network.MultimodalClassifier`) keeps them without dropout here too; only the
    dropout that was active in training is sampled.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    for m in model.modules():
        if not isinstance(m, _DropoutNd):
            m.training = False
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def mc_passes(model: nn.Module, forward: Callable[[], np.ndarray], n: int, seed: int,
              device: str | torch.device = "cpu") -> np.ndarray:
    """``forward()`` (class probabilities, (rows, C)) run ``n`` times with dropout on: (n, rows, C) float32.

    The generator of ``device`` (and the CPU's) is forked, so seeding here never changes the caller's stream.
    """
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with dropout_active(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return np.stack([np.asarray(forward(), dtype=np.float32) for _ in range(n)])


def mean_probs(passes: np.ndarray) -> np.ndarray:
    """The committee's mean probabilities (the ``probs`` column), averaged in float64."""
    return passes.astype(np.float64).mean(axis=0).astype(np.float32)


__all__ = ["check_passes", "chunk_seed", "dropout_active", "mc_passes", "mean_probs"]
