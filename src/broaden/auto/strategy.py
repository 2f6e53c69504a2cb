"""``--strategy auto``: the mix the measurements call for (issue 20), resolved before selection runs.

Options (keyword arguments of ``broaden.select.select``): ``auto_history`` (per past round, oldest first,
``{arm: value per item}``, as ``round finish`` records them), ``auto_recent`` (ids of the latest labelled
partition, for the diagnostic), ``auto_arms`` (which arms compete; default: ``stat``, ``lsb-lt`` when a labelled
set is given, ``qbc`` when committee columns are), ``auto_floor`` (0.02), ``auto_decay`` (0.5), ``auto_prior_weight`` (2: the diagnostic
weighs as much as two rounds of measured values); ``seed_threshold`` and
``discrepancy`` are shared with LSB. The report (``select(..., return_details=True)["auto"]``) holds the
allocation, its reasons and the diagnosis.
"""
from __future__ import annotations

from broaden.auto.allocation import ARMS, FLOOR, PRIOR_WEIGHT, allocate
from broaden.auto.diagnosis import diagnose
from broaden.errors import SelectionError
from broaden.select.registry import register_mix

AUTO = "auto"


def resolve_auto(labeled, options: dict, *, columns, seed: int = 0) -> tuple[dict[str, float], dict]:
    """(mix, report): LSB-LT joins Stat-AL when a labelled set is given, QBC when committee columns are;
    ``auto_arms`` names the arms instead."""
    arms = _arms(options.get("auto_arms"), labeled is not None, bool(options.get("committee_cols")))
    diagnosis = None
    if labeled is not None:
        diagnosis = diagnose(labeled, recent=options.get("auto_recent"),
                             seed_threshold=options.get("seed_threshold", 0.5),
                             discrepancy=options.get("discrepancy", "ordinal"), columns=columns, seed=seed)
    allocation = allocate(arms, verdict=diagnosis.verdict if diagnosis else None,
                          history=options.get("auto_history") or (), floor=options.get("auto_floor", FLOOR),
                          decay=options.get("auto_decay", 0.5),
                          prior_weight=options.get("auto_prior_weight", PRIOR_WEIGHT), seed=seed)
    if diagnosis is not None:
        allocation.reasons.insert(0, diagnosis.reading)
    else:
        allocation.reasons.insert(0, "no labelled set: LSB-LT cannot run, uncertainty sampling only")
    return allocation.mix(), {"allocation": allocation, "diagnosis": diagnosis}


def _arms(requested, has_labeled: bool, has_committee: bool) -> list[str]:
    if requested is None:
        return ["stat"] + (["lsb-lt"] if has_labeled else []) + (["qbc"] if has_committee else [])
    arms = [a.strip() for a in requested.split(",")] if isinstance(requested, str) else [str(a) for a in requested]
    unknown = [a for a in arms if a not in ARMS]
    if not arms or unknown:
        raise SelectionError(f"auto_arms must name some of {', '.join(ARMS)}; got {requested!r}")
    if "lsb-lt" in arms and not has_labeled:
        raise SelectionError("auto_arms includes lsb-lt, which needs the labelled set (labeled=...)")
    return list(dict.fromkeys(arms))


register_mix(AUTO, resolve_auto, options=("auto_history", "auto_recent", "auto_arms", "auto_floor", "auto_decay",
                                           "auto_prior_weight", "seed_threshold", "discrepancy", "committee_cols"))
