"""The LSB part of a group's batch: run :func:`broaden.lsb.lsb` on the snapshot, take its share.

When broadening offers more neighbours than the LSB share, they are taken nearest-first across seeds
(every seed's 1st neighbour, then every 2nd, …; similarity breaks ties) so one dense region cannot eat
the share — or, for the ``lt-ranked`` variant, by Lookalike score. The outcome also keeps what the
report shows: the LT scores of held-out labelled items and the case study.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from broaden.io import id_keys, list_matrix, matrix_to_list_array
from broaden.simulate.groups import GroupSpec


@dataclass
class LSBOutcome:
    picked: pa.Table                 # id (row index), strategy, score, rank
    candidates: pa.Table             # lsb() output (ids are row indices)
    summary: dict
    heldout: dict = field(default_factory=dict)   # LT held-out rows: {"rows", "z", "score"}
    case_study: list = field(default_factory=list)

    def provenance(self, rows: np.ndarray) -> dict:
        """seed_id (row index), similarity and lookalike score of each selected row (None if not LSB)."""
        cand_ids = self.candidates.column("id").to_numpy() if self.candidates.num_rows else np.zeros(0, np.int64)
        where = {int(r): i for i, r in enumerate(cand_ids)}
        picked = set(self.picked.column("id").to_pylist()) if self.picked.num_rows else set()
        seed = self.candidates.column("seed_id").to_pylist() if self.candidates.num_rows else []
        sim = self.candidates.column("similarity").to_pylist() if self.candidates.num_rows else []
        lt = self.candidates.column("lookalike_score").to_pylist() if self.candidates.num_rows else []
        out = {"seed_id": [], "similarity": [], "lookalike_score": []}
        for r in rows.tolist():
            i = where.get(r) if r in picked else None
            out["seed_id"].append(None if i is None else int(seed[i]))
            out["similarity"].append(None if i is None else sim[i])
            out["lookalike_score"].append(None if i is None else lt[i])
        return out

    def lookalike_frame(self, round_: int, group: str, run) -> pa.Table:
        rows = np.asarray(self.heldout.get("rows", np.zeros(0, np.int64)), dtype=np.int64)
        return pa.table({"round": pa.array(np.full(len(rows), round_), pa.int64()),
                         "group": pa.array([group] * len(rows), pa.string()),
                         "id": pa.array(run.data.ids[rows].tolist()),
                         "z": pa.array(self.heldout.get("z", np.zeros(0)), pa.int64()),
                         "lt_score": pa.array(self.heldout.get("score", np.zeros(0)), pa.float64())})

    def case_study_frame(self, round_: int, group: str, run) -> pa.Table:
        """Seeds next to their neighbours, with real ids, texts, true labels and probability vectors."""
        data = run.data
        picked = set(self.picked.column("id").to_pylist()) if self.picked.num_rows else set()
        recs = []
        for entry in self.case_study:
            s = entry["seed"]
            for nb in entry["neighbors"]:
                recs.append((int(s["id"]), int(s["label"]), s["probs"], int(nb["id"]), nb["neighbor_rank"],
                             nb["similarity"], nb["lookalike_score"], nb["probs"], int(nb["id"]) in picked))
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
            "neighbor_label": pa.array(data.labels[nb_rows], pa.int64()),
            "neighbor_probs": matrix_to_list_array(np.asarray(nb_probs, np.float32)),
            "neighbor_text": pa.array(text(nb_rows), pa.string()), "selected": pa.array(sel, pa.bool_()),
        })


def _take_order(candidates: pa.Table, rank_by: str) -> np.ndarray:
    ids = id_keys(candidates.column("id"))
    sim = candidates.column("similarity").to_numpy(zero_copy_only=False).astype(np.float64)
    if rank_by == "lookalike":
        lt = candidates.column("lookalike_score").to_numpy(zero_copy_only=False).astype(np.float64)
        return np.lexsort((ids, -sim, -np.nan_to_num(lt, nan=-1.0)))
    rank = candidates.column("neighbor_rank").to_numpy(zero_copy_only=False)
    return np.lexsort((ids, -sim, rank))


def broaden_step(spec: GroupSpec, snap, cfg, dataset_kind: str, n_lsb: int, seed: int) -> LSBOutcome:
    """Seeds from the snapshot's out-of-fold scores, kNN in the chosen latent, LT filter, share taken."""
    from broaden.lsb import lsb
    from broaden.lsb.lookalike import LookalikeError
    from broaden.lsb.seeds import load_labeled

    kind = spec.discrepancy or dataset_kind
    labeled = snap.labeled_table(spec.latent)
    pool = snap.pool_table(latent=spec.latent)
    use_lt = spec.lookalike or spec.rank_by == "lookalike"
    # τ2 = 0 fits and scores LT without filtering (a sigmoid is > 0): LT-ranked neighbours.
    tau2 = cfg.lookalike_threshold if spec.lookalike else (0.0 if use_lt else None)
    try:
        res = lsb(labeled, pool, seeds=cfg.seeds, seed_threshold=cfg.seed_threshold, k=cfg.k,
                  lookalike_threshold=tau2, index=cfg.index,
                  discrepancy=kind, denoise=spec.denoise, save_index=False, case_study=cfg.case_study_seeds,
                  seed=seed, show_progress=False)
    except LookalikeError as exc:
        # Too few bad cases to fit LT (a very accurate snapshot): no broadening, Stat-AL fills the batch.
        empty = pa.table({"id": pa.array([], pa.int64()), "strategy": pa.array([], pa.string()),
                          "score": pa.array([], pa.float64()), "rank": pa.array([], pa.int64())})
        cand = empty.append_column("seed_id", pa.array([], pa.int64()))
        cand = cand.append_column("similarity", pa.array([], pa.float64()))
        cand = cand.append_column("lookalike_score", pa.array([], pa.float64()))
        return LSBOutcome(empty, cand, {"auc": None, "threshold": tau2, "n_bad_cases": None,
                                        "n_seeds": None, "n_candidates": 0, "n_lsb_selected": 0,
                                        "index": None, "error": str(exc)})
    cand = res.candidates
    order = _take_order(cand, spec.rank_by)[:n_lsb] if cand.num_rows else np.zeros(0, np.int64)
    taken = cand.take(pa.array(order, pa.int64()))
    label = "lsb-lt" if use_lt else "lsb"
    score_col = "lookalike_score" if spec.rank_by == "lookalike" else "similarity"
    picked = pa.table({
        "id": taken.column("id"), "strategy": pa.array([label] * len(order), pa.string()),
        "score": taken.column(score_col).cast(pa.float64()),
        "rank": pa.array(np.arange(1, len(order) + 1), pa.int64()),
    })
    heldout = {}
    if res.lookalike is not None:
        view = load_labeled(labeled, kind=kind)
        rows, z = view.lookalike_targets(cfg.seed_threshold)
        held = rows[res.lookalike.holdout_index_]
        emb = list_matrix(view.table.column("embedding"))
        heldout = {"rows": view.table.column("id").to_numpy()[held], "z": z[res.lookalike.holdout_index_],
                   "score": res.lookalike.score(emb[held])}
    summary = {
        "auc": res.stats.get("lookalike_auc"), "threshold": tau2,
        "n_bad_cases": res.stats.get("bad_cases"), "n_seeds": res.stats.get("seeds"),
        "n_candidates": int(cand.num_rows), "n_lsb_selected": int(len(order)),
        "index": res.index_info.get("kind") if isinstance(res.index_info, dict) else None,
    }
    return LSBOutcome(picked, cand, summary, heldout, res.case_study)
