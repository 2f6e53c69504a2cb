"""What an LSB group's selection reports besides its picks: the LT summary, the LT scores of held-out
labelled items and the case study (seeds next to their neighbours), from the strategy's
:class:`broaden.lsb.LSBResult` (``select(..., return_details=True)``). Nothing here selects: the picks
come from ``broaden.select.select`` like every user's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from broaden.io import matrix_to_list_array
from broaden.lsb import LSBResult


@dataclass
class LSBReport:
    """One LSB strategy's run inside a group's selection (``result`` None when it could not run)."""

    result: LSBResult | None
    summary: dict
    picked: set

    @classmethod
    def of(cls, report, *, threshold: float | None, n_selected: int, picked) -> LSBReport:
        if not isinstance(report, LSBResult):
            # Too few bad cases to fit LT (a very accurate snapshot): the mix passed the share on.
            return cls(None, {"auc": None, "threshold": threshold, "n_bad_cases": None, "n_seeds": None,
                              "n_candidates": 0, "n_lsb_selected": 0, "index": None, "error": str(report)},
                       set())
        stats = report.stats
        return cls(report, {
            "auc": stats.get("lookalike_auc"), "threshold": threshold, "n_bad_cases": stats.get("bad_cases"),
            "n_seeds": stats.get("seeds"), "n_candidates": int(report.candidates.num_rows),
            "n_lsb_selected": int(n_selected), "index": report.index_info.get("index"),
            "k": stats.get("k_filled"),
        }, set(picked))

    def lookalike_frame(self, round_: int, group: str, ids: np.ndarray) -> pa.Table:
        held = self.result.heldout if self.result is not None else None
        rows = (held.column("id").to_numpy() if held is not None else np.zeros(0)).astype(np.int64)
        return pa.table({"round": pa.array(np.full(len(rows), round_), pa.int64()),
                         "group": pa.array([group] * len(rows), pa.string()),
                         "id": pa.array(ids[rows].tolist()),
                         "z": held.column("z") if held is not None else pa.array([], pa.int64()),
                         "lt_score": (held.column("lookalike_score") if held is not None
                                      else pa.array([], pa.float64()))})

    def case_study_frame(self, round_: int, group: str, data, labels: np.ndarray) -> pa.Table:
        """Seeds next to their neighbours, with real ids, texts, true ``labels`` and probability vectors."""
        recs = []
        for entry in self.result.case_study if self.result is not None else ():
            s = entry["seed"]
            for nb in entry["neighbors"]:
                recs.append((int(s["id"]), int(s["label"]), s["probs"], int(nb["id"]), nb["neighbor_rank"],
                             nb["similarity"], nb["lookalike_score"], nb["probs"], int(nb["id"]) in self.picked))
        if not recs:
            return pa.table({"round": pa.array([], pa.int64()), "group": pa.array([], pa.string())})
        seed_rows, seed_label, seed_probs, nb_rows, rank, sim, lt, nb_probs, sel = (list(c) for c in zip(*recs))
        text = (lambda rows: [data.texts[r] for r in rows]) if data.texts is not None else (
            lambda rows: [None] * len(rows))
        return pa.table({
            "round": pa.array(np.full(len(recs), round_), pa.int64()), "group": [group] * len(recs),
            "seed_id": pa.array(data.ids[seed_rows].tolist()), "seed_label": pa.array(seed_label, pa.int64()),
            "seed_probs": matrix_to_list_array(np.asarray(seed_probs, np.float32)),
            "seed_text": pa.array(text(seed_rows), pa.string()),
            "neighbor_id": pa.array(data.ids[nb_rows].tolist()), "neighbor_rank": pa.array(rank, pa.int64()),
            "similarity": pa.array(sim, pa.float64()), "lookalike_score": pa.array(lt, pa.float64()),
            "neighbor_label": pa.array(labels[nb_rows], pa.int64()),
            "neighbor_probs": matrix_to_list_array(np.asarray(nb_probs, np.float32)),
            "neighbor_text": pa.array(text(nb_rows), pa.string()), "selected": pa.array(sel, pa.bool_()),
        })
