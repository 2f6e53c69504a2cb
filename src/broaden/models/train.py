"""``broaden train``: fit the multimodal classifier (paper §4.2 defaults: Adam, lr 4e-5, batch 64, ≤ 5
epochs, stop early once the eval metric stops improving).

The run directory holds::

    model/          the best model so far (what `broaden score --model RUN` loads); with an eval split,
                    model/calibration.json holds its temperature (Guo et al. 2017), fitted at the end
    checkpoint/     the latest resumable state: weights, optimizer, RNG, epoch/step, history
    history.json    per-epoch train loss and eval metrics
    run_config.json the resolved configuration
    audio_cache/    encoded audio (frozen encoder), unless train.audio_cache points elsewhere
    errors.parquet  items left out (only with train.skip_bad_items)

Training is seeded: the batch order of epoch e is a permutation drawn from (seed, e), and the torch RNG
(dropout) is saved with every checkpoint, so a run resumed after an interruption reproduces the weights
of an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from broaden._lazy import renamed
from broaden.errors import BroadenError, ScoredTableError
from broaden.io import atomic_dir, labels_array, write_table, write_text
from broaden.models.audio import WhisperAudio
from broaden.models.audio_cache import AudioCache
from broaden.models.checkpoint import existing_dir, read_training_state, save_model, \
    write_model, write_training_state
from broaden.models.config import ConfigError, RunConfig, load_run_config, to_dict
from broaden.models.data import Featurizer, items_base_dir, read_items
from broaden.models.inference import infer
from broaden.models.network import MultimodalClassifier
from broaden.progress import track
from broaden.models.text import load_tokenizer, torch_threads

LOWER_IS_BETTER = {"loss", "multiclass_loss", "max_beta_variance"}
EVAL_KEYS = ("auc", "f1", "multiclass_loss", "max_beta_variance", "accuracy", "macro_f1")


class ItemError(BroadenError):
    """Items that cannot be used for training (listed with file, row and reason)."""


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    metric: str
    best_metric: float | None
    best_epoch: int | None
    epochs_run: int
    stop_reason: str
    history: list[dict] = field(default_factory=list)
    skipped_items: int = 0
    calibration: dict | None = None  # temperature scaling of the best model on the eval split (calibration.json)


# ---------------------------------------------------------------------------------------- data
def _labelled(table: pa.Table, label_col: str) -> pa.Table:
    return table.filter(pa.array(labels_array(table.column(label_col)) >= 0))


def _split(table: pa.Table, label_col: str, fraction: float, seed: int) -> tuple[pa.Table, pa.Table | None]:
    """Stratified hold-out of ``fraction`` of the rows (at least one row on each side; plain random when
    a class has a single row or either side is too small to hold every class)."""
    if fraction <= 0 or table.num_rows < 2:
        return table, None
    from sklearn.model_selection import train_test_split

    y = labels_array(table.column(label_col))
    n_eval = min(max(math.ceil(fraction * len(y)), 1), len(y) - 1)
    counts = np.bincount(y)
    n_classes = int((counts > 0).sum())
    stratify = y if counts[counts > 0].min() >= 2 and min(n_eval, len(y) - n_eval) >= n_classes else None
    idx_train, idx_eval = train_test_split(np.arange(len(y)), test_size=n_eval, random_state=seed,
                                           stratify=stratify)
    return table.take(np.sort(idx_train)), table.take(np.sort(idx_eval))


def _class_weights(spec, labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    if spec is None:
        return None
    if spec == "balanced":
        from broaden.models.classifier import balanced_class_weights

        weights = balanced_class_weights(labels, num_classes)
    else:
        weights = np.asarray(spec, dtype=np.float64)
        if weights.shape != (num_classes,) or (weights < 0).any():
            raise ConfigError(f"train.class_weights: expected {num_classes} non-negative numbers, got {spec}")
    return torch.as_tensor(weights, dtype=torch.float32)


def _slices(table: pa.Table, size: int):
    for start in range(0, table.num_rows, size):
        yield table.slice(start, size)


# --------------------------------------------------------------------------------------- metrics
def eval_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Eval cross-entropy ("loss") plus the scalar DESIGN §4 metrics of :func:`broaden.metrics.evaluate`."""
    from broaden.metrics import evaluate

    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)
    full = evaluate(labels, probs)
    return {"loss": float(-np.log(p).mean()), **{k: float(full[k]) for k in EVAL_KEYS if k in full}}


def _improved(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if metric in LOWER_IS_BETTER else value > best + min_delta


# ------------------------------------------------------------------------------------------ train
class _Trainer:
    def __init__(self, cfg: RunConfig, show_progress: bool):
        self.cfg = cfg
        self.show_progress = show_progress
        self.out = Path(cfg.out)
        # (labels, logits) of the eval split: the latest epoch's, and the saved (best) model's
        self._last_eval: tuple[np.ndarray, np.ndarray] | None = None
        self._best_eval: tuple[np.ndarray, np.ndarray] | None = None
        t = cfg.train
        self.device = torch.device(t.device)
        torch.manual_seed(t.seed)
        model_cfg = cfg.model
        cols = cfg.columns
        train_table = _labelled(read_items(cfg.train_data, cols, model_cfg), cols.label)
        if cfg.eval_data:
            eval_table = _labelled(read_items(cfg.eval_data, cols, model_cfg), cols.label)
        else:
            train_table, eval_table = _split(train_table, cols.label, t.eval_fraction, t.seed)
        if train_table.num_rows == 0:
            raise ScoredTableError(f"{cfg.train_data}: no labelled rows to train on")
        labels = [labels_array(x.column(cols.label)) for x in (train_table, eval_table) if x is not None]
        top = int(max(int(x.max()) for x in labels if x.size))
        if model_cfg.num_classes is None:
            model_cfg.num_classes = max(top + 1, 2)
        elif top >= model_cfg.num_classes:
            raise ScoredTableError(f"{cfg.train_data}: column {cols.label!r} holds label {top}, outside "
                                   f"0..{model_cfg.num_classes - 1} (model.num_classes)")
        self.tokenizer = load_tokenizer(model_cfg.hf_path if model_cfg.backbone == "hf-text"
                                        else model_cfg.tokenizer)
        audio = None
        if model_cfg.fusion != "none":
            audio = (WhisperAudio.from_pretrained(model_cfg.whisper_path, model_cfg.audio_pool_stride)
                     if model_cfg.whisper_path else
                     WhisperAudio.from_config(model_cfg.whisper_config, model_cfg.audio_pool_stride))
        self.model = MultimodalClassifier(model_cfg, self.tokenizer, audio=audio,
                                          hf_source=model_cfg.hf_path).to(self.device)
        cache = None
        if audio is not None and model_cfg.freeze_audio:
            cache = AudioCache(t.audio_cache or self.out / "audio_cache", audio)

        def featurizer(path):
            return Featurizer(model_cfg, cols, self.tokenizer, audio=audio, cache=cache,
                              base_dir=items_base_dir(path))

        self.skipped = 0
        self.train_feat = featurizer(cfg.train_data)
        self.eval_feat = featurizer(cfg.eval_data or cfg.train_data)
        self.train_table = self._drop_bad(train_table, self.train_feat, cfg.train_data, "train")
        if self.train_table.num_rows == 0:
            raise ItemError(f"{cfg.train_data}: none of the {train_table.num_rows} training item(s) can be used "
                            f"(reasons in {self.out / 'errors_train.parquet'})")
        self.eval_table = (self._drop_bad(eval_table, self.eval_feat, cfg.eval_data or cfg.train_data, "eval")
                           if eval_table is not None and eval_table.num_rows else None)
        if self.eval_table is not None and self.eval_table.num_rows == 0:
            self.eval_table = None
        self._check_eval_metric()
        self.train_labels = labels_array(self.train_table.column(cols.label))
        weights = _class_weights(t.class_weights, self.train_labels, model_cfg.num_classes)
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(self.device))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)

    def _check_eval_metric(self) -> None:
        """Fail before training when early stopping could never rank an epoch: an unknown metric name, or
        one that is undefined on this eval set whatever the model predicts (AUC with one class there)."""
        if self.eval_table is None:
            return
        metric = self.cfg.train.eval_metric
        labels = labels_array(self.eval_table.column(self.cfg.columns.label))
        c = self.cfg.model.num_classes
        value = eval_metrics(labels, np.full((len(labels), c), 1.0 / c)).get(metric)
        if value is None:
            names = ", ".join(("loss", *EVAL_KEYS))
            raise ConfigError(f"train.eval_metric: {metric!r} is not one of {names}")
        if not math.isfinite(value):
            raise ConfigError(f"train.eval_metric: {metric!r} is undefined on the {len(labels)} eval item(s) "
                              f"(classes present: {sorted(set(labels.tolist()))}); use eval_metric = \"loss\" "
                              "or an eval set with both the negative class 0 and a positive class")

    # -- item checks
    def _drop_bad(self, table: pa.Table, feat: Featurizer, source: str, split: str) -> pa.Table:
        """Featurise every item once (fills the audio cache) and deal with the ones that fail."""
        bad: list[tuple[int, object, str]] = []
        ids = table.column(self.cfg.columns.id).to_pylist()
        size = self.cfg.train.eval_batch_size
        with track(f"checking {split} items", table.num_rows, self.show_progress) as advance:
            for start in range(0, table.num_rows, size):
                prepared = feat(table.slice(start, size))
                bad += [(start + r, ids[start + r], msg) for r, msg in prepared.errors]
                advance(min(size, table.num_rows - start))
        self.skipped += len(bad)
        if not bad:
            return table
        lines = "; ".join(f"id {i!r}: {m}" for _, i, m in bad[:5])
        if not self.cfg.train.skip_bad_items:
            raise ItemError(f"{source}: {len(bad)} {split} item(s) cannot be used — {lines}"
                            f"{' …' if len(bad) > 5 else ''}. Fix them, or set train.skip_bad_items = true")
        errors = pa.table({"id": [i for _, i, _ in bad], "split": [split] * len(bad),
                           "error": [m for _, _, m in bad]})
        path = self.out / f"errors_{split}.parquet"
        write_table(errors, path)
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]warning:[/] skipped {len(bad)} {split} item(s) that cannot be "
                                   f"used; listed in {path}", highlight=False)
        keep = np.ones(table.num_rows, dtype=bool)
        keep[[r for r, _, _ in bad]] = False
        return table.filter(pa.array(keep))

    # -- checkpoints
    def _fingerprint(self) -> dict:
        c = self.cfg
        train = {k: v for k, v in to_dict(c.train).items() if k not in ("epochs", "checkpoint_every", "num_threads")}
        return {"train_data": c.train_data, "eval_data": c.eval_data, "columns": to_dict(c.columns),
                "model": to_dict(c.model), "train": train}

    def save_checkpoint(self, state: dict) -> None:
        with atomic_dir(self.out / "checkpoint") as folder:
            write_model(self.model, self.tokenizer, self.cfg.columns, folder / "model")
            write_training_state(folder, self.optimizer, state | {"fingerprint": self._fingerprint()})

    def load_checkpoint(self) -> dict | None:
        from safetensors.torch import load_file

        folder = existing_dir(self.out / "checkpoint")
        if folder is None or not (folder / "state.json").is_file():
            return None
        saved = json.loads((folder / "state.json").read_text(encoding="utf-8"))["state"]["fingerprint"]
        if json.dumps(saved, sort_keys=True) != json.dumps(self._fingerprint(), sort_keys=True, default=str):
            raise ConfigError(f"{folder}: this checkpoint was made with a different config or data; "
                              "train with --no-resume to start over, or choose another --out")
        state = load_file(str(folder / "model" / "model.safetensors"))
        self.model.load_state_dict(state, strict=False)
        return read_training_state(folder, self.optimizer)

    # -- loop
    def _eval_outputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, probabilities, logits) of the eval split under the current weights."""
        probs, labels, logits = [], [], []
        for scored in infer(self.model, self.eval_feat, _slices(self.eval_table, self.cfg.train.eval_batch_size),
                            device=self.device):
            probs.append(scored.probs)
            logits.append(scored.logits)
            labels.append(labels_array(scored.table.column(self.cfg.columns.label))[scored.rows])
        return np.concatenate(labels), np.concatenate(probs), np.concatenate(logits)

    def evaluate(self) -> dict:
        if self.eval_table is None:
            return {}
        labels, probs, logits = self._eval_outputs()
        self._last_eval = labels, logits
        return eval_metrics(labels, probs)

    def calibrate(self) -> dict | None:
        """Temperature scaling (Guo et al. 2017) of the saved best model on the eval split; T is stored in
        its folder (``calibration.json``) for ``broaden score``. None without an eval split or a model."""
        from safetensors.torch import load_file

        from broaden.calibration import fit_calibration
        from broaden.models.checkpoint import WEIGHTS_FILE

        folder = existing_dir(self.out / "model")
        if self.eval_table is None or folder is None:
            return None
        if self._best_eval is not None:
            labels, logits = self._best_eval
        else:  # the best epoch ran before a resume: reload its weights (external audio weights are not in them)
            self.model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=False)
            labels, _, logits = self._eval_outputs()
        return fit_calibration(folder, logits, labels, fitted_on="eval split")

    def step(self, rows: np.ndarray) -> float:
        prepared = self.train_feat(self.train_table.take(rows), labels=True)
        batch = prepared.batch.to(self.device)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(batch).logits, batch.labels)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def run(self, resume: bool, max_steps: int | None) -> TrainResult:
        t = self.cfg.train
        metric = t.eval_metric
        state = (self.load_checkpoint() if resume else None) or {
            "epoch": 0, "step": 0, "global_step": 0, "best": None, "best_epoch": None, "bad_epochs": 0,
            "history": [], "finished": False, "stop_reason": None, "loss_sum": 0.0}
        if state["stop_reason"] == "max_epochs" and state["epoch"] < t.epochs:
            state.update(finished=False, stop_reason=None)  # train.epochs was raised: continue
        write_text(json.dumps({"out": self.cfg.out, **self._fingerprint()}, indent=2, default=str),
                   self.out / "run_config.json")
        n = self.train_table.num_rows
        n_batches = math.ceil(n / t.batch_size)
        while not state["finished"] and state["epoch"] < t.epochs:
            epoch = state["epoch"]
            order = np.random.default_rng([t.seed, epoch]).permutation(n)
            with track(f"epoch {epoch + 1}/{t.epochs}", n_batches, self.show_progress) as advance:
                advance(state["step"])
                while state["step"] < n_batches:
                    if max_steps is not None and state["global_step"] >= max_steps:
                        self.save_checkpoint(state)
                        return self._result(state, "max_steps")
                    rows = order[state["step"] * t.batch_size:(state["step"] + 1) * t.batch_size]
                    state["loss_sum"] += self.step(rows)
                    state["step"] += 1
                    state["global_step"] += 1
                    advance(1)
                    if t.checkpoint_every and state["global_step"] % t.checkpoint_every == 0:
                        self.save_checkpoint(state)
            scores = self.evaluate()
            entry = {"epoch": epoch + 1, "train_loss": state["loss_sum"] / n_batches, "eval": scores}
            value = scores.get(metric)
            if value is None and scores:
                raise ConfigError(f"train.eval_metric: {metric!r} is not one of {', '.join(scores)}")
            # Without an eval set every epoch counts as an improvement: the last model is kept.
            improved = value is None or _improved(value, state["best"], metric, t.min_delta)
            entry["improved"] = improved
            state["history"].append(entry)
            if improved:
                state["best"], state["best_epoch"], state["bad_epochs"] = value, epoch + 1, 0
                self._best_eval = self._last_eval  # the saved model's eval outputs, for calibrate()
                save_model(self.model, self.tokenizer, self.cfg.columns, self.out / "model")
            else:
                state["bad_epochs"] += 1
            state.update(epoch=epoch + 1, step=0, loss_sum=0.0)
            if state["bad_epochs"] >= t.patience:
                state.update(finished=True, stop_reason="early_stop")
            elif state["epoch"] >= t.epochs:
                state.update(finished=True, stop_reason="max_epochs")
            self._report(entry, metric)
            write_text(json.dumps(state["history"], indent=2), self.out / "history.json")
            self.save_checkpoint(state)
        return self._result(state, state["stop_reason"] or "max_epochs", self.calibrate())

    def _report(self, entry: dict, metric: str) -> None:
        if not self.show_progress:
            return
        from rich.console import Console

        value = entry["eval"].get(metric)
        shown = f", eval {metric} {value:.4f}" if value is not None else ""
        Console(stderr=True).print(f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}{shown}"
                                   f"{' (best)' if entry['improved'] else ''}", highlight=False)

    def _result(self, state: dict, reason: str, calibration: dict | None = None) -> TrainResult:
        return TrainResult(self.out, self.out / "model", self.cfg.train.eval_metric, state["best"],
                           state["best_epoch"], state["epoch"], reason, state["history"], self.skipped,
                           calibration)


@renamed(progress="show_progress")
def train(config: RunConfig | str | os.PathLike, *, out: str | os.PathLike | None = None, resume: bool = True,
          show_progress: bool = True, max_steps: int | None = None, overrides: dict | None = None) -> TrainResult:
    """Train the classifier described by ``config`` (a :class:`RunConfig` or a TOML/YAML file).

    ``resume`` continues from ``<out>/checkpoint`` when one exists for the same config and data;
    ``max_steps`` stops (with a checkpoint) after that many optimisation steps in total, e.g. to
    split a long run into budgeted pieces. ``overrides`` maps dotted keys (``"train.lr"``) to values.
    """
    if isinstance(config, RunConfig):
        if overrides:
            raise TypeError("overrides apply to config files; change the RunConfig's fields instead")
        cfg = config
    else:
        cfg = load_run_config(config, overrides=overrides)
    if out is not None:
        cfg.out = str(out)
    with torch_threads(cfg.train.num_threads):
        return _Trainer(cfg, show_progress).run(resume, max_steps)
