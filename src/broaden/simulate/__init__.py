"""``broaden simulate`` / ``broaden demo``: the paper's Tables 1–2 protocol with an oracle (§4.1.2).

Pieces: :mod:`data` (features of a dataset, cached encoder output), :mod:`groups` (equal-budget groups
and LSB variants), :mod:`protocol` (one repeat, R rounds), :mod:`lsb_report` (what an LSB group's run reports),
:mod:`oracle` (noisy annotator), :mod:`stats` (mean ± std, paired tests), :mod:`results` (files and
tables), :mod:`runner` (resumable K repeats). Output format: docs/results-format.md.
"""
from __future__ import annotations

from broaden.simulate.data import SimData, load_sim_data, pair_features
from broaden.simulate.groups import STAT_AL_MIX, VARIANTS, GroupSpec, build_groups
from broaden.simulate.protocol import TABLE1_METRICS, TABLE2_METRICS, SimConfig
from broaden.simulate.runner import SimulationError, demo, simulate

__all__ = [
    "STAT_AL_MIX", "TABLE1_METRICS", "TABLE2_METRICS", "VARIANTS", "GroupSpec", "SimConfig", "SimData",
    "SimulationError", "build_groups", "demo", "load_sim_data", "pair_features", "simulate",
]
