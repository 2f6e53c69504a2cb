"""One repeat of the paper's simulation protocol (§4.1.2) with an oracle, optionally over R rounds.

1. Warm up the classifier on a random initial labelled set: the fixed snapshot.
2. Score the pool with it and let every group spend the same budget (groups.py).
3. Table 1: the multiclass loss (Eq. 11), yield and confident-error yield of each group's selection,
   against the true labels and the probabilities of the model that selected it.
4. Table 2: retrain on initial + selection (with the oracle's possibly noisy labels) and evaluate on the
   fixed test split.
5. Rounds (Algorithm 1): each group continues from its own retrained model; its pool shrinks and its
   labelled set grows. With several annotators (:mod:`.annotators`) the ActiveLab group may also relabel:
   it trains on the consensus of its votes.

Seeds of LSB need out-of-sample probabilities for the labelled set — the paper scores *new* labelled
partitions with the deployed model — so the labelled set is scored by K-fold cross-validation.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa

from broaden.models.classifier import EmbeddingClassifier
from broaden.io import make_scored_table
from broaden.metrics import discrepancy as _discrepancy
from broaden.metrics import evaluate, flat_metrics, roc_auc
from broaden.simulate.annotators import Crowd, Votes
from broaden.simulate.finetune import FINETUNE_FIELDS
from broaden.simulate.data import SimData
from broaden.simulate.groups import STAT_AL_MIX, GroupSpec
from broaden.simulate.lsb_report import LSBReport
from broaden.simulate.oracle import oracle_labels
from broaden.simulate.scenario import Scenario, labels_after, split_rows

CONFIDENT = 0.7  # "confident error": wrong with max p above this (out of statistical AL's reach)
TABLE1_METRICS = ("multiclass_loss", "multiclass_loss_ordinal", "multiclass_loss_nominal", "yield",
                  "confident_yield", "noisy_share", "n_selected", "s_captured", "s_share")
TABLE2_METRICS = ("auc", "f1", "r_at_p40", "r_at_p50", "r_at_p60", "r_at_p70", "r_at_p80", "r_at_p90",
                  "tpr_at_fpr1", "max_beta_variance", "multiclass_loss", "accuracy", "macro_f1", "auc_macro",
                  "s_accuracy", "s_recall", "non_s_accuracy")


@dataclass
class SimConfig:
    """Protocol settings (CLI flags of ``broaden simulate``)."""

    budget: int = 1000
    initial: int = 1000
    lsb_share: float = 0.2
    rounds: int = 1
    repeats: int = 3
    seed: int = 0
    label_noise: float = 0.0
    confusion: list | None = None
    seeds: int | None = 1000          # cap N on the seed count (None: every bad case); simulate()'s max_seeds
    seed_threshold: float = 0.5       # τ1
    k: int = 10
    lookalike_threshold: float = 0.5  # τ2
    index: str = "flat"
    pool_size: int | None = None      # subsample of the pool per repeat (None: everything not used)
    oof_folds: int = 5
    qbc_members: int = 3
    classifier: dict = field(default_factory=dict)
    case_study_seeds: int = 20
    lsb_fill: bool = False            # widen k until the LSB share is filled with candidates passing τ2
    validation: int = 500             # Auto only: pool items held out (labelled) to measure strategy values on
    auto_metric: str = "log_loss"     # Auto only: what a strategy's value is measured in (broaden.auto.value)
    auto_draws: int = 2               # Auto only: leave-n-out subsets per arm and round
    auto_floor: float | None = None   # Auto only: each arm's least share (None: the allocation's default)
    annotators: int = 1               # simulated annotators; > 1 lets ActiveLab relabel

    def to_dict(self) -> dict:
        """The settings config.json records: those added after runs existed only when they differ from the
        value that stands for their absence, so those runs keep their configuration hash."""
        return {k: v for k, v in asdict(self).items() if not (k in _LATE_SETTINGS and v == _LATE_SETTINGS[k])}


#: Settings added after runs existed → the value that means "as before" (left out of config.json).
_LATE_SETTINGS = {"annotators": 1, "auto_floor": None}


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest AUC over the classes present with both outcomes (equals the binary AUC for C = 2)."""
    aucs = [roc_auc((labels == c).astype(np.int64), probs[:, c]) for c in range(probs.shape[1])
            if 0 < (labels == c).sum() < len(labels)]
    return float(np.mean(aucs)) if aucs else None


def subpop_metrics(labels: np.ndarray, probs: np.ndarray, in_s: np.ndarray) -> dict:
    """Accuracy on S and outside it, and the binary view's recall (positive = label ≠ 0) on S."""
    pred = probs.argmax(axis=1)
    right = pred == labels
    pos = in_s & (labels != 0)
    return {"s_accuracy": float(right[in_s].mean()) if in_s.any() else None,
            "s_recall": float(((1 - probs[pos, 0]) >= 0.5).mean()) if pos.any() else None,
            "non_s_accuracy": float(right[~in_s].mean()) if (~in_s).any() else None}


def table2_metrics(labels: np.ndarray, probs: np.ndarray, kind: str,
                   in_s: np.ndarray | None = None) -> tuple[dict, list]:
    """DESIGN §4 metrics flattened to the result format's names (plus the macro one-vs-rest AUC and, with a
    sub-population mask ``in_s``, its metrics), and the confusion matrix."""
    ev = evaluate(labels, probs, discrepancy=kind)
    flat = flat_metrics(ev)
    flat["auc_macro"] = macro_auc(labels, probs)
    if in_s is not None:
        flat.update(subpop_metrics(labels, probs, in_s))
    return flat, ev["confusion_matrix"]


def table1_metrics(true: np.ndarray, given: np.ndarray, probs: np.ndarray, kind: str,
                   in_s: np.ndarray | None = None, pool_s: int = 0) -> dict:
    """Eq. 11 loss (both discrepancy forms), yield and confident-error yield of one selected set; with a
    sub-population mask over the selection, the share of S's pool items it captured and S's share of it."""
    pred = probs.argmax(axis=1)
    wrong = pred != true
    s_stats = {} if in_s is None else {"s_captured": float(in_s.sum() / pool_s) if pool_s else None,
                                       "s_share": float(in_s.mean()) if len(in_s) else None}
    return {**s_stats, 
        "multiclass_loss": float(_discrepancy(true, probs, kind).mean()),
        "multiclass_loss_ordinal": float(_discrepancy(true, probs, "ordinal").mean()),
        "multiclass_loss_nominal": float(_discrepancy(true, probs, "nominal").mean()),
        "yield": float(wrong.mean()),
        "confident_yield": float((wrong & (probs.max(axis=1) > CONFIDENT)).mean()),
        "noisy_share": float((given != true).mean()),
        "n_selected": int(len(true)),
    }


class Snapshot:
    """A trained model with its labelled and pool rows; scores are computed once and shared by groups.

    LSB seeds come from ``recent`` rows with ``recent_probs`` — the latest labelled partition scored
    out-of-sample by the model that was deployed when it was labelled (scenarios) — or, without them,
    from every labelled row scored by K-fold cross-validation (the i.i.d. protocol).
    """

    def __init__(self, run: RepeatRun, model: EmbeddingClassifier, labeled: np.ndarray, pool: np.ndarray,
                 round_: int, recent: np.ndarray | None = None, recent_probs: np.ndarray | None = None,
                 labels: np.ndarray | None = None):
        self.run, self.model, self.labeled, self.pool, self.round = run, model, labeled, pool, round_
        self.recent, self.recent_probs = recent, recent_probs
        self.labels = labels  # the labels the model was trained on, by row (None: the single votes, run.given)

    @property
    def given(self) -> np.ndarray:
        """The labels the model was trained on, by row."""
        return self.run.given if self.labels is None else self.labels

    @cached_property
    def pool_probs(self) -> np.ndarray:
        return self.model.predict_proba(self.run.data.features[self.pool])

    @cached_property
    def labeled_oof_probs(self) -> np.ndarray:
        return self.run.oof_probs(self.labeled, self.round, self.labels)

    def latent(self, kind: str, rows: np.ndarray) -> np.ndarray:
        X = self.run.data.features[rows]
        return self.model.transform(X) if kind == "tuned" else X

    @cached_property
    def committee_probs(self) -> list[np.ndarray]:
        return self.run.committee(self.labeled, self.round, self.pool)

    def pool_table(self, *, latent: str | None = None, committee: bool = False) -> pa.Table:
        """The pool as a scored table; ``id`` is the row index into the SimData arrays."""
        extra = {}
        if committee:
            from broaden.io import matrix_to_list_array

            extra = {f"probs_m{i}": matrix_to_list_array(p) for i, p in enumerate(self.committee_probs)}
        t = make_scored_table(self.pool.astype(np.int64), self.pool_probs,
                              None if latent is None else self.latent(latent, self.pool))
        for name, arr in extra.items():
            t = t.append_column(name, arr)
        return t

    def labeled_embeddings(self, latent: str) -> pa.Table:
        """Every labelled row with its embedding: the centers coreset and TypiClust cover from."""
        rows = self.labeled
        return make_scored_table(rows.astype(np.int64), None, self.latent(latent, rows), self.given[rows])

    def labeled_table(self, latent: str) -> pa.Table:
        """What LSB seeds and fits the Lookalike model on (class docstring)."""
        rows, probs = ((self.labeled, self.labeled_oof_probs) if self.recent is None
                       else (self.recent, self.recent_probs))
        return make_scored_table(rows.astype(np.int64), probs, self.latent(latent, rows), self.given[rows])


@dataclass
class Selection:
    rows: np.ndarray
    strategy: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    probs: np.ndarray
    provenance: dict
    lsb: LSBReport | None = None
    auto: dict | None = None          # select()'s "auto" report: allocation and diagnosis
    relabel: np.ndarray | None = None  # ActiveLab: which picks are another vote on a labelled item
    answers: np.ndarray | None = None  # ActiveLab: the vote each pick received
    annotator: np.ndarray | None = None  # ActiveLab: who cast it


class RepeatRun:
    """State of one repeat: oracle labels, the initial split, one model trajectory per group."""

    def __init__(self, data: SimData, cfg: SimConfig, groups: list[GroupSpec], repeat: int,
                 confusion: np.ndarray | None, scenario: Scenario | None = None, subpop: np.ndarray | None = None):
        self.data, self.cfg, self.groups, self.repeat = data, cfg, groups, repeat
        self.scenario = scenario or Scenario()
        self.subpop = subpop
        self.seed = cfg.seed + repeat
        self.truth = labels_after(data, self.scenario, subpop)  # the labels once the scenario has happened
        if cfg.annotators > 1:  # each annotator answers on its own; every group gets an item's first vote
            self.crowd = Crowd(self.truth, confusion, cfg.annotators, seed=self.seed + 7919)
            self.given = self.crowd.single()
        else:
            self.crowd = None
            self.given = oracle_labels(self.truth, confusion, seed=self.seed + 7919)
        self.given[data.is_test] = self.truth[data.is_test]  # the evaluation split stays gold
        self.kind = data.discrepancy
        self.auto_history: dict[str, list[dict]] = {g.name: [] for g in groups if g.kind == "auto"}
        self.validation = np.empty(0, dtype=np.int64)
        self.votes: dict[str, Votes] = {}  # relabelling groups' votes (run() starts them)

    # --------------------------------------------------------------------------------- models
    def fit(self, rows: np.ndarray, seed: int, sample: np.ndarray | None = None,
            labels: np.ndarray | None = None) -> EmbeddingClassifier:
        """The classifier on ``rows`` with ``labels`` (by row; None: the single votes ``given``)."""
        rows = rows if sample is None else rows[sample]
        y = (self.given if labels is None else labels)[rows]
        return self.fit_features(self.data.features[rows], y, seed)

    def fit_features(self, X: np.ndarray, y: np.ndarray, seed: int) -> EmbeddingClassifier:
        """The repeat's classifier (the configured one, seeded) on features ``X`` and labels ``y``."""
        return EmbeddingClassifier(**{**self.cfg.classifier, "seed": seed}).fit(X, y, num_classes=self.data.num_classes)

    def model_seed(self, round_: int) -> int:
        # Same seed for every group in a round: differences come from the data, not the initialisation.
        return self.seed * 1000 + round_

    def oof_probs(self, rows: np.ndarray, round_: int, labels: np.ndarray | None = None) -> np.ndarray:
        folds = max(2, min(self.cfg.oof_folds, len(rows) // 2))
        rng = np.random.default_rng(self.model_seed(round_) + 17)
        fold = rng.permutation(len(rows)) % folds
        out = np.zeros((len(rows), self.data.num_classes))
        for f in range(folds):
            train, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            model = self.fit(rows, self.model_seed(round_) + 100 + f, sample=train, labels=labels)
            out[held] = model.predict_proba(self.data.features[rows[held]])
        return out

    def committee(self, rows: np.ndarray, round_: int, pool: np.ndarray) -> list[np.ndarray]:
        rng = np.random.default_rng(self.model_seed(round_) + 31)
        members = []
        for m in range(self.cfg.qbc_members):
            boot = rng.integers(0, len(rows), size=len(rows))  # bootstrap resample, own seed per member
            members.append(self.fit(rows, self.model_seed(round_) + 200 + m, sample=boot)
                           .predict_proba(self.data.features[pool]))
        return members

    # ------------------------------------------------------------------------------ selection
    def select(self, spec: GroupSpec, snap: Snapshot) -> Selection:
        """The group's batch from ``broaden.select.select``: the same strategies, mix and LSB path users run."""
        from broaden.select import select

        B, seed = self.cfg.budget, self.model_seed(snap.round)
        labeled, options, exclude = None, {}, None
        if spec.kind == "random":
            pool, mix = snap.pool_table(), "random"
        elif spec.kind == "stat":
            pool, mix = snap.pool_table(), STAT_AL_MIX
        elif spec.kind == "hw":
            pool, mix = snap.pool_table(), "hw"
        elif spec.kind == "qbc":
            pool, mix = snap.pool_table(committee=True), "qbc"
            # KL to consensus, not vote entropy: 3 hard votes give 3 score values and ties broken by id.
            options = {"committee_cols": [f"probs_m{i}" for i in range(self.cfg.qbc_members)], "qbc_measure": "kl"}
        elif spec.kind == "lsb":
            pool, labeled = snap.pool_table(latent=spec.latent), snap.labeled_table(spec.latent)
            mix, options = self._lsb_mix(spec)
        elif spec.kind == "mix":
            committee = "bald" in spec.mix or "qbc" in spec.mix
            pool = snap.pool_table(latent=spec.latent, committee=committee)
            labeled = snap.labeled_embeddings(spec.latent)
            mix = spec.mix
            if committee:
                options = {"committee_cols": [f"probs_m{i}" for i in range(self.cfg.qbc_members)]}
        elif spec.kind == "auto":
            pool, labeled = snap.pool_table(latent=spec.latent), snap.labeled_table(spec.latent)
            mix, options = "auto", {**self._lsb_mix(spec)[1], "auto_history": self.auto_history[spec.name]}
            if self.cfg.auto_floor is not None:
                options["auto_floor"] = self.cfg.auto_floor
        elif spec.kind == "activelab":
            cand, cand_probs = self._activelab_candidates(snap)
            pool, mix = make_scored_table(cand, cand_probs), "activelab"
            votes = self.votes[spec.name]
            # Relabel or label new: every labelled item is a candidate, save those every annotator has labelled.
            options, exclude = {"annotations": votes.table(snap.labeled, self.given)}, votes.full(snap.labeled)
        else:  # pragma: no cover - GroupSpec kinds are fixed
            raise ValueError(spec.kind)
        table, reports = select(pool, mix, B, seed=seed, labeled=labeled, exclude=exclude, return_details=True,
                                **options)
        rows = table.column("id").to_numpy().astype(np.int64)
        strategy = np.asarray(table.column("strategy").to_pylist(), dtype=object)
        prov = {c: (table.column(c).to_pylist() if c in table.column_names else [None] * len(rows))
                for c in ("seed_id", "similarity", "lookalike_score")}
        lsb_report = None
        if spec.kind in ("lsb", "auto"):
            name = self.lsb_strategy(spec)
            lsb_report = LSBReport.of(reports.get(name), threshold=options["lookalike_threshold"],
                                      n_selected=int((strategy == name).sum()), picked=rows[strategy == name])
        if spec.kind == "activelab":  # a pick may be a labelled item: its probabilities are the K-fold ones
            order = np.argsort(cand)
            probs = cand_probs[order[np.searchsorted(cand[order], rows)]]
            relabel = np.asarray(table.column("relabel").to_pylist(), dtype=bool)
        else:
            probs = snap.pool_probs[np.searchsorted(snap.pool, rows)]  # the pool is sorted: row -> position
            relabel = None
        auto = reports.get("auto")
        return Selection(rows=rows, strategy=strategy, auto=auto,
                         score=table.column("score").to_numpy(zero_copy_only=False).astype(float),
                         rank=table.column("rank").to_numpy().astype(np.int64),
                         probs=probs, provenance=prov, lsb=lsb_report, relabel=relabel)

    @staticmethod
    def _activelab_candidates(snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """(rows, probabilities) of the pool plus every labelled item, the latter scored out-of-sample (K-fold
        on the group's consensus labels), as ActiveLab wants the probabilities of labelled items."""
        return (np.concatenate([snap.pool, snap.labeled]).astype(np.int64),
                np.vstack([snap.pool_probs, snap.labeled_oof_probs]))

    def _vote(self, spec: GroupSpec, sel: Selection) -> np.ndarray:
        """A relabelling group's picks each get one vote, from the next annotator in the item's order."""
        votes = self.votes[spec.name]
        sel.annotator = votes.crowd.annotator(sel.rows, votes.counts[sel.rows])
        sel.answers = votes.add(sel.rows, self.given)
        return sel.answers

    def _consensus(self, spec: GroupSpec, snap: Snapshot, sel: Selection) -> tuple[np.ndarray, np.ndarray, dict]:
        """(labelled rows, training labels by row, the round's vote record) of a relabelling group: every
        labelled item's consensus of its votes (CROWDLAB, majority vote while no item has two votes), with
        out-of-sample probabilities — K-fold for items labelled before the round, the selecting model's for
        new picks."""
        votes = self.votes[spec.name]
        new = sel.rows[~sel.relabel]
        labeled = np.sort(np.concatenate([snap.labeled, new]))
        probs = np.empty((len(labeled), self.data.num_classes))
        probs[np.searchsorted(labeled, snap.labeled)] = snap.labeled_oof_probs
        probs[np.searchsorted(labeled, new)] = sel.probs[~sel.relabel]
        consensus, method = votes.consensus(labeled, self.given, probs)
        labels = self.given.copy()
        labels[labeled] = consensus
        record = {"resolution": method,
                  **votes.report(labeled, consensus, self.given, self.truth, int(sel.relabel.sum()))}
        return labeled, labels, record

    def _votes_frame(self, round_: int, group: str, rows: np.ndarray, annotator: np.ndarray, label: np.ndarray,
                     relabel: np.ndarray) -> pa.Table:
        return pa.table({"round": pa.array(np.full(len(rows), round_), pa.int64()), "group": [group] * len(rows),
                         "id": pa.array(self.data.ids[rows].tolist()), "annotator": pa.array(annotator, pa.int64()),
                         "label": pa.array(label, pa.int64()), "relabel": pa.array(relabel, pa.bool_())})

    @staticmethod
    def lsb_strategy(spec: GroupSpec) -> str:
        return "lsb-lt" if spec.kind == "auto" or spec.lookalike or spec.rank_by == "lookalike" else "lsb"

    def _lsb_mix(self, spec: GroupSpec) -> tuple[dict, dict]:
        """LSB's share first, then Stat-AL's three scores in equal parts of the rest, as one select() mix."""
        cfg = self.cfg
        share = cfg.lsb_share if spec.lsb_share is None else spec.lsb_share
        stat = (1.0 - share) / 3
        mix = {self.lsb_strategy(spec): share, "least_confident": stat, "margin": stat, "entropy": stat}
        # τ2 = 0 fits and scores LT without filtering (a sigmoid is > 0): LT-ranked neighbours.
        tau2 = cfg.lookalike_threshold if spec.lookalike else (0.0 if spec.rank_by == "lookalike" else None)
        options = {"max_seeds": cfg.seeds, "seed_threshold": cfg.seed_threshold, "k": cfg.k,
                   "lookalike_threshold": tau2, "index": cfg.index, "discrepancy": spec.discrepancy or self.kind,
                   "denoise": spec.denoise, "rank_by": spec.rank_by, "save_index": False,
                   "case_study": cfg.case_study_seeds, "show_progress": False, "fill": cfg.lsb_fill}
        return mix, options

    # ------------------------------------------------------------------------------------ run
    def run(self) -> tuple[dict, dict[str, list[pa.Table]]]:
        """Run every round for every group; returns the repeat record and the per-repeat tables."""
        start = time.perf_counter()
        data, cfg, sc = self.data, self.cfg, self.scenario
        split = split_rows(data, sc, self.subpop, initial=cfg.initial, needed_pool=cfg.budget * cfg.rounds,
                           pool_size=cfg.pool_size, rng=np.random.default_rng(self.seed))
        initial, recent, test_rows = split.initial, split.recent, split.test
        if self.auto_history:
            # Values are measured on labelled items no group selects or trains on (never on the test split).
            n_val = min(cfg.validation, len(split.pool) - cfg.budget * cfg.rounds)
            self.validation = np.sort(np.random.default_rng(self.seed + 4242).choice(split.pool, n_val, replace=False))
            split.pool = np.setdiff1d(split.pool, self.validation)
        in_s = self.subpop if self.subpop is not None else None
        if sc.kind == "drift":
            stale = initial[in_s[initial]]
            self.given[stale] = data.labels[stale]  # labelled before the change: the old label stays
        if any(g.latent == "finetuned" for g in self.groups):  # the whole repeat runs on fine-tuned [CLS] states
            from broaden.simulate.finetune import finetuned_data

            self.data = data = finetuned_data(data, initial, self.given, seed=self.seed)
        model0 = self.fit(initial, self.model_seed(0))
        labeled = np.sort(np.concatenate([initial, recent]))
        recent_probs = model0.predict_proba(data.features[recent]) if len(recent) else None
        snapshot = Snapshot(self, model0, labeled, split.pool, 1, recent if len(recent) else None, recent_probs)
        # The fair control: the same model refit with the recent labels every group receives (DESIGN §3a).
        refit = (Snapshot(self, self.fit(labeled, self.model_seed(0)), labeled, split.pool, 1,
                          snapshot.recent, recent_probs)
                 if len(recent) and any(g.refit for g in self.groups) else snapshot)
        test_X, test_y = data.features[test_rows], self.truth[test_rows]
        test_s = None if in_s is None else in_s[test_rows]
        init_probs = model0.predict_proba(test_X)
        initial_metrics, _ = table2_metrics(test_y, init_probs, self.kind, test_s)
        diagnosis = self._diagnosis(snapshot)
        frames: dict[str, list[pa.Table]] = {"selections": [], "test_predictions": [], "lookalike": [],
                                             "case_study": [], "initial": [self._initial_frame(initial, recent)]}
        frames["test_predictions"].append(self._predictions("Initial", test_rows, init_probs))
        current = {g.name: (refit if g.refit else snapshot) for g in self.groups}
        frames["votes"] = []
        crowd = self.crowd or Crowd(self.truth, None, 1, self.seed)  # one annotator: every vote is ``given``
        for spec in self.groups:
            if spec.kind == "activelab":  # the labelled set's first votes: round 0
                self.votes[spec.name] = votes = Votes.start(crowd, labeled)
                frames["votes"].append(self._votes_frame(0, spec.name, labeled, votes.crowd.annotator(labeled, 0),
                                                         self.given[labeled], np.zeros(len(labeled), bool)))
        rounds = []
        for r in range(1, cfg.rounds + 1):
            per_group, next_snaps = {}, {}
            for spec in self.groups:
                snap = current[spec.name]
                sel = self.select(spec, snap)
                pool_s = int(in_s[snap.pool].sum()) if in_s is not None else 0
                relabelling = spec.name in self.votes
                answered = self._vote(spec, sel) if relabelling else self.given[sel.rows]
                t1 = table1_metrics(self.truth[sel.rows], answered, sel.probs, self.kind,
                                    None if in_s is None else in_s[sel.rows], pool_s)
                if relabelling:
                    labeled, labels, vote_record = self._consensus(spec, snap, sel)
                    frames["votes"].append(self._votes_frame(r, spec.name, sel.rows, sel.annotator, sel.answers,
                                                             sel.relabel))
                else:
                    labeled, labels, vote_record = np.sort(np.concatenate([snap.labeled, sel.rows])), None, None
                model = self.fit(labeled, self.model_seed(r), labels=labels)
                probs = model.predict_proba(test_X)
                t2, cm = table2_metrics(test_y, probs, self.kind, test_s)
                per_group[spec.name] = {"table1": t1, "table2": t2, "confusion_matrix": cm,
                                        "n_labeled": int(len(labeled)),
                                        "lookalike": None if sel.lsb is None else sel.lsb.summary}
                if spec.kind == "auto":
                    per_group[spec.name]["auto"] = self._measure(spec, sel, labeled, model, r)
                if vote_record is not None:
                    per_group[spec.name]["annotators"] = vote_record
                frames["selections"].append(self._selection_frame(r, spec.name, sel))
                if sel.lsb is not None:
                    frames["lookalike"].append(sel.lsb.lookalike_frame(r, spec.name, data.ids))
                    frames["case_study"].append(sel.lsb.case_study_frame(r, spec.name, data, self.truth))
                if r == cfg.rounds:
                    frames["test_predictions"].append(self._predictions(spec.name, test_rows, probs))
                # With a recent partition, the next round seeds from this round's batch, scored by the model
                # that selected it (out-of-sample), as a deployed model scores each new labelled partition.
                nxt = (sel.rows, sel.probs) if snap.recent is not None else (None, None)
                next_snaps[spec.name] = Snapshot(self, model, labeled, np.setdiff1d(snap.pool, sel.rows), r + 1, *nxt,
                                                 labels=labels)
            current = next_snaps
            rounds.append({"round": r, "groups": per_group})
        record = {"repeat": self.repeat, "seed": self.seed, "initial": initial_metrics, "rounds": rounds,
                  "diagnosis": diagnosis,
                  "seconds": round(time.perf_counter() - start, 2)}
        if "finetune_s" in data.feature_info:  # what the per-repeat fine-tune cost (the latent's price)
            record["finetune"] = {k: data.feature_info[k] for k in FINETUNE_FIELDS if k in data.feature_info}
        return record, frames

    def _diagnosis(self, snap: Snapshot) -> dict | None:
        """The error-clustering diagnostic of the labelled partition LSB seeds from (round 1)."""
        from broaden.auto import diagnose

        specs = [g for g in self.groups if g.kind in ("lsb", "auto")]
        if not specs:
            return None
        return diagnose(snap.labeled_table(specs[0].latent), seed_threshold=self.cfg.seed_threshold,
                        discrepancy=self.kind, seed=self.seed).to_dict()

    def _measure(self, spec: GroupSpec, sel: Selection, labeled: np.ndarray, model: EmbeddingClassifier,
                 round_: int) -> dict:
        """Equal-size leave-n-out value of this round's arms, refitting the classifier the group retrains, on
        the validation sample; feeds the next allocation."""
        from broaden.auto.allocation import arm_of
        from broaden.auto.value import strategy_values

        arm = {int(r): arm_of(s) for r, s in zip(sel.rows, sel.strategy)}
        values = strategy_values(self.data.features[labeled], self.given[labeled], [arm.get(int(r)) for r in labeled],
                                 self.data.features[self.validation], self.given[self.validation],
                                 fit=lambda X, y: self.fit_features(X, y, self.model_seed(round_)),
                                 full_model=model, num_classes=self.data.num_classes, metric=self.cfg.auto_metric,
                                 draws=self.cfg.auto_draws, seed=self.seed)
        self.auto_history[spec.name].append({a: {"value": v["value"], "se": v["se"]} for a, v in values.items()})
        alloc, diag = sel.auto["allocation"], sel.auto["diagnosis"]
        return {"shares": alloc.shares, "reasons": alloc.reasons, "values": values,
                "verdict": None if diag is None else diag.verdict, "lift": None if diag is None else diag.lift}

    def _initial_frame(self, initial: np.ndarray, recent: np.ndarray) -> pa.Table:
        rows = np.concatenate([initial, recent])
        return pa.table({"id": pa.array(self.data.ids[rows].tolist()),
                         "label": pa.array(self.truth[rows], pa.int64()),
                         "oracle_label": pa.array(self.given[rows], pa.int64()),
                         "part": pa.array(["initial"] * len(initial) + ["recent"] * len(recent), pa.string()),
                         "in_subpop": pa.array(self.subpop[rows] if self.subpop is not None
                                               else np.zeros(len(rows), bool), pa.bool_())})

    # ---------------------------------------------------------------------------- frames
    def _predictions(self, group: str, rows: np.ndarray, probs: np.ndarray) -> pa.Table:
        from broaden.io import matrix_to_list_array

        return pa.table({"group": [group] * len(rows), "id": pa.array(self.data.ids[rows].tolist()),
                         "label": pa.array(self.truth[rows], pa.int64()),
                         "probs": matrix_to_list_array(probs)})

    def _selection_frame(self, round_: int, group: str, sel: Selection) -> pa.Table:
        from broaden.io import matrix_to_list_array

        prov = sel.provenance
        seed_ids = [None if s is None else self.data.ids[[s]].tolist()[0] for s in prov["seed_id"]]
        return pa.table({
            "round": pa.array(np.full(len(sel.rows), round_), pa.int64()),
            "group": [group] * len(sel.rows),
            "id": pa.array(self.data.ids[sel.rows].tolist()),
            "strategy": pa.array(sel.strategy.tolist(), pa.string()),
            "score": pa.array(sel.score, pa.float64()),
            "rank": pa.array(sel.rank, pa.int64()),
            "label": pa.array(self.truth[sel.rows], pa.int64()),
            "oracle_label": pa.array(self.given[sel.rows] if sel.answers is None else sel.answers, pa.int64()),
            "probs": matrix_to_list_array(sel.probs),
            "seed_id": pa.array(seed_ids, type=pa.array(self.data.ids[:1].tolist()).type),
            "similarity": pa.array(prov["similarity"], pa.float64()),
            "lookalike_score": pa.array(prov["lookalike_score"], pa.float64()),
            # ActiveLab only (null for the other groups): another vote on a labelled item, and who cast it
            **({} if sel.relabel is None else {"relabel": pa.array(sel.relabel, pa.bool_()),
                                               "annotator": pa.array(sel.annotator, pa.int64())}),
        })
