"""Latent Space Broadening (paper §3.1; DESIGN.md §3): seed bad cases, kNN over the pool, Lookalike Threshold.

Works on scored tables only (never imports models). ``lsb()`` runs the whole method; the pieces are
public for scripting: :func:`seed_bad_cases`, :func:`build_index` (then :meth:`KNNIndex.search`) with the
backends in :data:`BACKENDS`, and :class:`LookalikeModel`.
"""
from __future__ import annotations

from broaden.lsb.pipeline import LSBResult, lsb
from broaden._lazy import command_package
from broaden.lsb.knn import BACKENDS, INDEX_KINDS, Capabilities, KNNIndex, Neighbors, build_index
from broaden.lsb.lookalike import LookalikeModel
from broaden.lsb.seeds import seed_bad_cases

command_package(__name__)  # ``broaden.lsb(...)`` is ``broaden.lsb.lsb(...)``

__all__ = [
    "BACKENDS", "INDEX_KINDS", "Capabilities", "KNNIndex", "LSBResult", "LookalikeModel", "Neighbors",
    "build_index", "lsb", "seed_bad_cases",
]
