"""Statistical active learning over scored pools (DESIGN.md §2, §5): scores, strategies, mixes, cleaning.

Import cost matters for the CLI, so heavy pieces (cleanlab) load only when cleaning runs.
"""
from __future__ import annotations

from broaden._lazy import command_package
from broaden.errors import SelectionError
from broaden.io.ids import IdSet, read_ids
from broaden.select import strategies as _builtin  # noqa: F401  (registers random/LC/margin/entropy/qbc/bald)
from broaden.select import hw as _hw  # noqa: F401  (registers hw)
from broaden.select.cleaning import clean, label_issue_mask, label_quality, rank_label_issues
from broaden.select.hw import hw_strategy
from broaden.select.mix import largest_remainder, parse_spec, select
from broaden.select.registry import SelectContext, available_strategies, get_strategy, register_strategy
from broaden.select.scores import bald, entropy, kl_to_consensus, least_confident, margin, vote_entropy
from broaden.select.strategies import random_keys, stream_top
from broaden.topk import TopK, top_k_indices

command_package(__name__)  # ``broaden.select(...)`` is ``broaden.select.select(...)``

__all__ = [
    "IdSet", "SelectContext", "SelectionError", "TopK", "available_strategies", "bald", "clean", "entropy",
    "get_strategy", "hw_strategy", "kl_to_consensus", "label_issue_mask", "label_quality",
    "largest_remainder", "least_confident", "margin", "parse_spec", "random_keys", "rank_label_issues",
    "read_ids", "register_strategy", "select", "stream_top", "top_k_indices", "vote_entropy",
]
