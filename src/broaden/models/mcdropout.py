"""Monte Carlo dropout (Gal & Ghahramani 2016): N stochastic forward passes of one trained model.

Each pass runs with the model's dropout modules in train mode and everything else in eval (normalisation
statistics, frozen parts), so the passes are samples of the approximate posterior that BALD and the
committee strategies read (Houlsby et al. 2011; Gal et al. 2017). ``broaden score --mc-dropout N`` writes
them as the committee columns ``probs_m0 … probs_m{N−1}`` (:meth:`broaden.io.Columns.committee`) and their
mean as ``probs``; the embedding always comes from the deterministic (eval) pass, so kNN neighbourhoods do
not depend on the dropout noise.

The masks are *consistent* (Kirsch et al. 2019, BatchBALD's consistent MC dropout): pass j drops the same
units for every item, so it is one sampled sub-network θ_j applied to the whole pool, as a committee member
is. Each mask element is a hash of (``seed``, pass, dropout module, call, the element's position without
the batch dimension) — no random generator state — so an item's passes are a pure function of the model,
the seed and the item: the same for any batch size, padding, file layout or engine (this process or Ray
workers), and the caller's random state is never touched. Only ``nn.Dropout`` is sampled this way; a model
with another active dropout type (``Dropout2d``, ``AlphaDropout``…) is refused rather than sampled wrongly.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from broaden.errors import ConfigError

_M1, _M2, _GOLDEN = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def check_passes(mc_dropout: int) -> int:
    """``mc_dropout`` as an int: 0 (off) or at least 2 passes (a committee needs two members)."""
    if isinstance(mc_dropout, bool) or not isinstance(mc_dropout, (int, np.integer)) or \
            mc_dropout < 0 or mc_dropout == 1:
        raise ConfigError(f"mc_dropout= takes 0 (off) or a number of passes >= 2, got {mc_dropout!r}")
    return int(mc_dropout)


def _mix(z: int) -> int:
    """splitmix64 finaliser on a Python int (the key of one dropout call)."""
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _key(*parts: int) -> int:
    """One 64-bit key from several ints, order-sensitive ((1, 0) and (0, 1) differ)."""
    h = _GOLDEN
    for part in parts:
        h = _mix((h + (int(part) & _MASK64)) & _MASK64)
    return h


def _signed(z: int) -> int:
    return z - (1 << 64) if z >= 1 << 63 else z


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` copies the sign bit)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix_tensor(z: torch.Tensor) -> torch.Tensor:
    # int64 products wrap modulo 2^64, which is the uint64 arithmetic splitmix64 wants.
    z = (z ^ _shr(z, 30)) * _signed(_M1)
    z = (z ^ _shr(z, 27)) * _signed(_M2)
    return z ^ _shr(z, 31)


def positional_uniform(shape: tuple[int, ...], key: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform [0, 1) float32 numbers of ``shape`` where element (i, j, …) depends only on ``key`` and (i, j, …):
    a tensor of a larger shape holds the same numbers at the positions the two share."""
    h = torch.tensor(_signed(_mix(key)), dtype=torch.int64, device=device)
    for dim, size in enumerate(shape):
        coord = torch.arange(size, dtype=torch.int64, device=device).view(size, *([1] * (len(shape) - dim - 1)))
        h = _mix_tensor(h ^ (coord + _signed(_mix(_GOLDEN * (dim + 1)))))
    return _shr(h, 40).to(torch.float32) * 2.0**-24  # the top 24 bits: a float32's exact fraction


def _active_dropout(model: nn.Module) -> list[nn.Dropout]:
    """The dropout modules that train mode switches on (frozen parts stay off); other dropout types refused."""
    found = []
    for name, m in model.named_modules():
        if isinstance(m, _DropoutNd) and m.training and m.p > 0:
            if type(m) is not nn.Dropout:
                raise ConfigError(f"mc_dropout= samples nn.Dropout only; the model's {name or 'root'} is a "
                                  f"{type(m).__name__}")
            found.append(m)
    return found


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


@contextlib.contextmanager
def consistent_masks(modules: list[nn.Dropout], seed: int, pass_index: int) -> Iterator[None]:
    """Pass ``pass_index``: each call of each module drops by :func:`positional_uniform` over the input's
    non-batch dimensions, keyed by (seed, pass, module, call): the same units for every item of every batch."""
    calls = [0] * len(modules)

    def patched(i: int, module: nn.Dropout) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            keep = 1.0 - module.p
            key = _key(seed, pass_index, i, calls[i])
            calls[i] += 1
            if keep <= 0.0:
                return torch.zeros_like(x)
            mask = positional_uniform(tuple(x.shape[1:]), key, x.device) < keep
            return x * mask.to(x.dtype) / keep

        return forward

    for i, m in enumerate(modules):
        m.forward = patched(i, m)  # the instance attribute shadows nn.Dropout.forward for this pass only
    try:
        yield
    finally:
        for m in modules:
            del m.forward


def mc_passes(model: nn.Module, forward: Callable[[], np.ndarray], n: int, seed: int) -> np.ndarray:
    """``forward()`` (class probabilities, (rows, C)) run ``n`` times, pass j with the consistent dropout
    masks of (``seed``, j): (n, rows, C) float32."""
    out = []
    with dropout_active(model):
        modules = _active_dropout(model)
        for j in range(n):
            with consistent_masks(modules, seed, j):
                out.append(np.asarray(forward(), dtype=np.float32))
    return np.stack(out)


def mean_probs(passes: np.ndarray) -> np.ndarray:
    """The committee's mean probabilities (the ``probs`` column), averaged in float64."""
    return passes.astype(np.float64).mean(axis=0).astype(np.float32)


__all__ = ["check_passes", "consistent_masks", "dropout_active", "mc_passes", "mean_probs", "positional_uniform"]
