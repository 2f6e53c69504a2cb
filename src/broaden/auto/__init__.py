"""Let the data choose the mix (issue 20): does the model's error cluster (:mod:`diagnosis`), what was each
strategy's batch worth to the model (:mod:`value`), and a budget allocation that follows those measurements
(:mod:`allocation`), used by ``--strategy auto`` in ``broaden select``, ``round start`` and ``simulate``."""
from __future__ import annotations

from broaden.auto.allocation import Allocation, allocate
from broaden.auto.diagnosis import Diagnosis, diagnose
from broaden.auto.value import strategy_values

__all__ = ["Allocation", "Diagnosis", "allocate", "diagnose", "strategy_values"]
