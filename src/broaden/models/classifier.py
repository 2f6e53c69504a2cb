"""``EmbeddingClassifier``: the small MLP on fixed embeddings used by simulations and rounds.

The paper's classifier g is an MLP on the backbone's [CLS] state (DESIGN §1). With a frozen encoder the
embeddings are computed once, so g is all that trains: Adam, mini-batches, early stopping on a held-out
validation split (best weights restored), optional balanced class weights. Training is seeded and runs
single-threaded by default so that the same data and seed give bit-identical probabilities.
:meth:`EmbeddingClassifier.transform` returns the last hidden layer — the task-tuned latent LSB can search
instead of the frozen, task-agnostic embedding (DESIGN §3.1).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from broaden.errors import ClassifierError
from broaden.io import atomic_dir, softmax
from broaden.models.text import torch_threads as _threads

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
FORMAT_VERSION = 1


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights n / (C · n_c); 0 for a class absent from ``labels``."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)


class EmbeddingClassifier:
    """MLP classifier over fixed feature vectors (scikit-learn style: ``fit`` / ``predict_proba``).

    ``hidden`` lists the hidden-layer widths (default one layer of 256). ``class_weight="balanced"``
    weights the loss by n / (C · count_c). Early stopping holds out ``val_fraction`` of the training rows
    (stratified) and stops after ``patience`` epochs without a lower validation loss. ``calibrate=True``
    then fits a temperature on those held-out rows (:class:`broaden.calibration.TemperatureScaler`, as
    ``broaden train`` does) and ``predict_proba`` divides the logits by it (``temperature_``; 1 when off or
    when fewer than ``MIN_ROWS`` rows were held out).
    """

    def __init__(
        self,
        hidden: tuple[int, ...] | int = (256,),
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        dropout: float = 0.1,
        batch_size: int = 64,
        max_epochs: int = 100,
        patience: int = 5,
        val_fraction: float = 0.1,
        class_weight: str | None = None,
        standardize: bool = True,
        seed: int = 0,
        num_threads: int | None = 1,
        calibrate: bool = False,
    ):
        self.hidden = (hidden,) if isinstance(hidden, int) else tuple(int(h) for h in hidden)
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        if class_weight not in (None, "balanced"):
            raise ClassifierError(f"class_weight must be None or 'balanced', got {class_weight!r}")
        self.class_weight = class_weight
        self.standardize = standardize
        self.seed = seed
        self.num_threads = num_threads
        self.calibrate = bool(calibrate)
        self.temperature_ = 1.0
        self.model_: nn.Sequential | None = None
        self.num_classes_: int | None = None
        self.n_features_: int | None = None
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.best_epoch_: int | None = None
        self.history_: list[dict] = []
        self.val_idx_: np.ndarray | None = None  # rows of the last fit held out for early stopping

    # ------------------------------------------------------------------------------------ params
    def get_params(self) -> dict:
        return {"hidden": list(self.hidden), "lr": self.lr, "weight_decay": self.weight_decay,
                "dropout": self.dropout, "batch_size": self.batch_size, "max_epochs": self.max_epochs,
                "patience": self.patience, "val_fraction": self.val_fraction,
                "class_weight": self.class_weight, "standardize": self.standardize, "seed": self.seed,
                "num_threads": self.num_threads, "calibrate": self.calibrate}

    # --------------------------------------------------------------------------------- training
    def fit(self, X: np.ndarray, y: np.ndarray, *, num_classes: int | None = None,
            sample_weight: np.ndarray | None = None) -> EmbeddingClassifier:
        """Train on features ``X`` (n, d) and integer labels ``y`` in 0..C−1.

        ``num_classes`` fixes C when a small labelled set misses a class.
        """
        X, y = self._check_xy(X, y)
        C = int(num_classes) if num_classes is not None else int(y.max()) + 1
        if y.max() >= C:
            raise ClassifierError(f"label {int(y.max())} is outside 0..{C - 1}")
        self.num_classes_, self.n_features_ = C, X.shape[1]
        if self.standardize:
            self.mean_ = X.mean(axis=0)
            self.scale_ = np.where((s := X.std(axis=0)) > 1e-8, s, 1.0).astype(np.float32)
        else:
            self.mean_ = np.zeros(X.shape[1], np.float32)
            self.scale_ = np.ones(X.shape[1], np.float32)
        rng = np.random.default_rng(self.seed)
        train_idx, val_idx = self._split(y, rng)
        self.val_idx_ = val_idx
        weights = self._class_weights(y[train_idx], C)
        sw = np.ones(len(y), np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
        with _threads(self.num_threads):
            torch.manual_seed(self.seed)
            self.model_ = _mlp(X.shape[1], self.hidden, C, self.dropout)
            self._train(self._scaled(X), y, sw, train_idx, val_idx, weights, rng)
        self.temperature_ = 1.0
        if self.calibrate:
            from broaden.calibration import MIN_ROWS, TemperatureScaler

            if len(val_idx) >= MIN_ROWS:
                self.temperature_ = float(TemperatureScaler().fit(self.decision_function(X[val_idx]),
                                                                  y[val_idx]).temperature_)
        return self

    def _check_xy(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
            raise ClassifierError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
        if len(y) < 2:
            raise ClassifierError(f"need at least 2 labelled rows to train, got {len(y)}")
        if not np.isfinite(X).all():
            raise ClassifierError("X holds NaN or inf values")
        if y.dtype.kind not in "iu" or y.min() < 0:
            raise ClassifierError("y must hold non-negative integer class labels")
        return X, y.astype(np.int64)

    def _split(self, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Stratified validation rows; none when the set is too small to spare them."""
        n_val = int(round(len(y) * self.val_fraction))
        if self.val_fraction <= 0 or n_val < 10:
            return np.arange(len(y)), np.array([], dtype=np.int64)
        val = []
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            take = int(round(len(members) * self.val_fraction))
            if len(members) - take >= 1:
                val.append(members[:take])
        val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
        return np.setdiff1d(np.arange(len(y)), val_idx), val_idx

    def _class_weights(self, y: np.ndarray, C: int) -> torch.Tensor | None:
        if self.class_weight != "balanced":
            return None
        return torch.tensor(balanced_class_weights(y, C), dtype=torch.float32)

    def _train(self, Xs, y, sw, train_idx, val_idx, weights, rng) -> None:
        model = self.model_
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = nn.CrossEntropyLoss(weight=weights, reduction="none")
        Xt, yt, wt = torch.from_numpy(Xs), torch.from_numpy(y), torch.from_numpy(sw)
        best = (np.inf, None, 0)
        self.history_ = []
        bad_epochs = 0
        for epoch in range(self.max_epochs):
            model.train()
            order = rng.permutation(train_idx)
            total = 0.0
            for start in range(0, len(order), self.batch_size):
                b = torch.from_numpy(order[start:start + self.batch_size])
                per_item = loss_fn(model(Xt[b]), yt[b]) * wt[b]
                loss = per_item.sum() / wt[b].sum().clamp(min=1e-12)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            record = {"epoch": epoch, "train_loss": total / max(len(order), 1)}
            if len(val_idx):
                model.eval()
                with torch.no_grad():
                    v = torch.from_numpy(val_idx)
                    val_loss = float((loss_fn(model(Xt[v]), yt[v]) * wt[v]).sum() / wt[v].sum())
                record["val_loss"] = val_loss
                if val_loss < best[0] - 1e-6:
                    best = (val_loss, {k: t.clone() for k, t in model.state_dict().items()}, epoch)
                    bad_epochs = 0
                else:
                    bad_epochs += 1
            self.history_.append(record)
            if len(val_idx) and bad_epochs >= self.patience:
                break
        if best[1] is not None:
            model.load_state_dict(best[1])
        self.best_epoch_ = best[2] if best[1] is not None else len(self.history_) - 1
        model.eval()

    # ------------------------------------------------------------------------------- inference
    def _scaled(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, np.float32) - self.mean_) / self.scale_).astype(np.float32)

    def _require_fitted(self, X) -> np.ndarray:
        if self.model_ is None:
            raise ClassifierError("classifier is not fitted; call fit() or load() first")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_:
            raise ClassifierError(f"expected features of shape (n, {self.n_features_}), got {X.shape}")
        return self._scaled(X)

    def _forward(self, X: np.ndarray, upto: int | None, batch_size: int = 8192) -> np.ndarray:
        Xs = self._require_fitted(X)
        layers = self.model_ if upto is None else self.model_[:upto]
        out = []
        with _threads(self.num_threads), torch.no_grad():
            for start in range(0, len(Xs), batch_size):
                out.append(layers(torch.from_numpy(Xs[start:start + batch_size])).numpy())
        width = self.num_classes_ if upto is None else self.hidden[-1]
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The logits (n, C), float64: what temperature scaling divides."""
        return self._forward(X, None).astype(np.float64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n, C), float64 rows summing to 1 (softmax of the logits / ``temperature_``)."""
        return softmax(self.decision_function(X) / self.temperature_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Activations of the last hidden layer (after ReLU): the task-tuned latent, float32 (n, h)."""
        if not self.hidden:
            raise ClassifierError("a classifier without hidden layers has no latent to transform into")
        return self._forward(X, 3 * len(self.hidden) - 1).astype(np.float32)

    # ---------------------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Weights as safetensors and the configuration as JSON (no pickle) in ``directory``, which is
        replaced as a whole (atomically)."""
        from safetensors.torch import save_file

        if self.model_ is None:
            raise ClassifierError("nothing to save: the classifier is not fitted")
        tensors = {f"mlp.{k}": v.contiguous() for k, v in self.model_.state_dict().items()}
        tensors["input.mean"] = torch.from_numpy(np.asarray(self.mean_, np.float32))
        tensors["input.scale"] = torch.from_numpy(np.asarray(self.scale_, np.float32))
        config = {"format_version": FORMAT_VERSION, "params": self.get_params(),
                  "num_classes": self.num_classes_, "n_features": self.n_features_,
                  "best_epoch": self.best_epoch_, "temperature": self.temperature_}
        d = Path(directory)
        # Both files are swapped in together, so weights and config always belong to the same fit.
        with atomic_dir(d) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EmbeddingClassifier:
        from safetensors.torch import load_file

        d = Path(directory)
        try:
            config = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
            tensors = load_file(str(d / WEIGHTS_FILE))
        except (OSError, ValueError) as exc:
            raise ClassifierError(f"{d}: not a saved EmbeddingClassifier ({exc})") from exc
        if config.get("format_version") != FORMAT_VERSION:
            raise ClassifierError(f"{d / CONFIG_FILE}: unsupported format_version {config.get('format_version')!r}")
        params = dict(config["params"])
        params["hidden"] = tuple(params["hidden"])
        clf = cls(**params)
        clf.num_classes_, clf.n_features_ = int(config["num_classes"]), int(config["n_features"])
        clf.best_epoch_ = config.get("best_epoch")
        clf.temperature_ = float(config.get("temperature", 1.0))
        clf.model_ = _mlp(clf.n_features_, clf.hidden, clf.num_classes_, clf.dropout)
        state = {k[len("mlp."):]: v for k, v in tensors.items() if k.startswith("mlp.")}
        try:
            clf.model_.load_state_dict(state)
        except RuntimeError as exc:
            raise ClassifierError(f"{d / WEIGHTS_FILE}: weights do not match the saved configuration") from exc
        clf.model_.eval()
        clf.mean_ = tensors["input.mean"].numpy()
        clf.scale_ = tensors["input.scale"].numpy()
        return clf


__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "ClassifierError", "EmbeddingClassifier",
           "balanced_class_weights"]
