"""``broaden simulate`` / ``broaden demo``: the paper's Tables 1–2 protocol with an oracle (§4.1.2).

Pieces: :mod:`data` (features of a dataset, cached encoder output), :mod:`groups` (equal-budget groups
and LSB variants), :mod:`protocol` (one repeat, R rounds), :mod:`lsb_report` (what an LSB group's run reports),
:mod:`oracle` (noisy annotator), :mod:`stats` (mean ± std, paired tests), :mod:`results` (files and
tables), :mod:`runner` (resumable K repeats). Output format: docs/results-format.md.
"""
from __future__ import annotations

from broaden._lazy import command_package, lazy_exports

# Loaded on first use: the protocol needs torch, and ``import broaden.simulate`` must not (issue 15).
_EXPORTS = {
    "SimData": "broaden.simulate.data", "load_sim_data": "broaden.simulate.data", "pair_features": "broaden.simulate.data",
    "STAT_AL_MIX": "broaden.simulate.groups", "VARIANTS": "broaden.simulate.groups",
    "GroupSpec": "broaden.simulate.groups", "build_groups": "broaden.simulate.groups",
    "TABLE1_METRICS": "broaden.simulate.protocol", "TABLE2_METRICS": "broaden.simulate.protocol",
    "SimConfig": "broaden.simulate.protocol",
    "SimulationError": "broaden.simulate.runner", "demo": "broaden.simulate.runner", "simulate": "broaden.simulate.runner",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
command_package(__name__)  # ``broaden.simulate(...)`` is ``broaden.simulate.simulate(...)``

__all__ = sorted(_EXPORTS)
