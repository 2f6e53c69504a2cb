"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", §4.2).

One scalar T > 0 divides the logits before the softmax, p = softmax(z / T), fitted by minimising the
negative log-likelihood on held-out labelled data. T > 1 softens an over-confident model, T < 1 sharpens an
under-confident one; the argmax, and so accuracy, never changes. Seed thresholds, the lookalike threshold
and the HW easy band read probabilities as probabilities, which is what calibration makes them.

``broaden train`` fits a :class:`TemperatureScaler` on its validation split and stores T beside the model
(``calibration.json``, plain JSON: :func:`fit_calibration`); ``broaden score`` applies it
(:func:`read_calibration`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from broaden.errors import ConfigError
from broaden.metrics import brier_score, expected_calibration_error

CALIBRATION_FILE = "calibration.json"
TEMPERATURE_KEY = b"broaden.temperature"  # scored tables: the T their probabilities were calibrated with
FORMAT = "broaden-calibration/1"
TINY = 1e-12  # log-probabilities of exact zeros stay finite
MIN_ROWS = 10  # fewer held-out rows than this: no temperature (as EmbeddingClassifier's early stopping)


class TemperatureScaler:
    """Fit T > 0 by minimising NLL(T) = mean_i [logsumexp(z_i / T) − z_i,y_i / T] on held-out data.

    ``logits=False`` takes probabilities instead (their logarithm: softmax is blind to a per-row constant, so
    softmax(log p / T) = softmax(z / T) for the logits z behind p). ``bounds`` limits the search for T.
    NLL is convex in 1/T, so the bounded scalar minimisation over log T finds the global minimum inside the
    bounds. After ``fit``: ``temperature_``, ``n_`` and the NLL before (T = 1) and after (``nll_before_``,
    ``nll_after_``).
    """

    def __init__(self, *, logits: bool = True, bounds: tuple[float, float] = (0.01, 100.0)):
        low, high = bounds
        if not 0 < low < 1 < high or not math.isfinite(high):
            raise ValueError(f"bounds must satisfy 0 < low < 1 < high, got {bounds!r}")
        self.logits = logits
        self.bounds = (float(low), float(high))
        self.temperature_: float | None = None
        self.n_: int | None = None
        self.nll_before_: float | None = None
        self.nll_after_: float | None = None

    # ------------------------------------------------------------------------------------- fit
    def _scores(self, scores) -> np.ndarray:
        z = np.asarray(scores, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] < 2:
            raise ValueError(f"scores must be (n, C) with C ≥ 2, got shape {z.shape}")
        if not self.logits:
            if (z < 0).any():
                raise ValueError("probabilities must be non-negative (pass logits=True for raw scores)")
            z = np.log(np.maximum(z, TINY))
        if not np.isfinite(z).all():
            raise ValueError("scores hold NaN or inf values")
        return z

    @staticmethod
    def nll(z: np.ndarray, labels: np.ndarray, temperature: float) -> float:
        """Mean negative log-likelihood of ``labels`` under softmax(z / temperature)."""
        from scipy.special import logsumexp

        scaled = z / temperature
        return float((logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]).mean())

    def fit(self, scores, labels) -> TemperatureScaler:
        """Fit T on held-out ``scores`` (n, C) and integer ``labels`` in 0..C−1."""
        from scipy.optimize import minimize_scalar

        z = self._scores(scores)
        y = np.asarray(labels)
        if y.shape != (len(z),):
            raise ValueError(f"labels must be (n,) with n = {len(z)}, got shape {y.shape}")
        if len(y) == 0:
            raise ValueError("no labelled rows to fit the temperature on")
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= z.shape[1]:
            raise ValueError(f"labels must be class indices in 0..{z.shape[1] - 1}")
        y = y.astype(np.int64)
        low, high = np.log(self.bounds)
        res = minimize_scalar(lambda log_t: self.nll(z, y, math.exp(log_t)), bounds=(low, high),
                              method="bounded", options={"xatol": 1e-7})
        t = math.exp(float(res.x))
        self.nll_before_, self.nll_after_ = self.nll(z, y, 1.0), self.nll(z, y, t)
        if self.nll_after_ > self.nll_before_:  # a flat objective can stop the search beside T = 1
            t, self.nll_after_ = 1.0, self.nll_before_
        self.temperature_, self.n_ = t, int(len(y))
        return self

    # ------------------------------------------------------------------------------- transform
    def transform(self, scores) -> np.ndarray:
        """Calibrated probabilities softmax(z / T), float64 rows summing to 1."""
        if self.temperature_ is None:
            raise ValueError("TemperatureScaler is not fitted; call fit() or read_calibration() first")
        from broaden.io import softmax

        return softmax(self._scores(scores) / self.temperature_)

    def fit_transform(self, scores, labels) -> np.ndarray:
        return self.fit(scores, labels).transform(scores)

    def summary(self, scores, labels) -> dict:
        """T and how NLL, ECE and Brier on (``scores``, ``labels``) change with it (what train records)."""
        from broaden.io import softmax

        after = self.transform(scores)  # raises when not fitted
        z = self._scores(scores)
        y = np.asarray(labels).astype(np.int64)
        before = softmax(z)
        return {"temperature": self.temperature_, "n": int(len(y)),
                "nll_before": self.nll(z, y, 1.0), "nll_after": self.nll(z, y, self.temperature_),
                "ece_before": expected_calibration_error(y, before), "ece_after": expected_calibration_error(y, after),
                "brier_before": brier_score(y, before), "brier_after": brier_score(y, after)}


# ----------------------------------------------------------------------------------- the file
def fit_calibration(folder: str | os.PathLike, scores, labels, *, logits: bool = True,
                    fitted_on: str = "validation split") -> dict | None:
    """Fit T on held-out ``scores`` and write ``calibration.json`` (atomically) into a model folder: T and the
    :meth:`TemperatureScaler.summary`. With fewer than ``MIN_ROWS`` labelled rows T would be noise: no file
    (any earlier one is removed) and None."""
    from broaden.io import write_text

    path = Path(folder) / CALIBRATION_FILE
    labels = np.asarray(labels)
    if len(labels) < MIN_ROWS:
        path.unlink(missing_ok=True)
        return None
    summary = TemperatureScaler(logits=logits).fit(scores, labels).summary(scores, labels)
    write_text(json.dumps({"format": FORMAT, "method": "temperature", "fitted_on": fitted_on, **summary},
                          indent=2), path)
    return summary


def read_calibration(folder: str | os.PathLike) -> dict | None:
    """The calibration stored in a model folder (None when it has none: an uncalibrated run)."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from exc
    record = record if isinstance(record, dict) else {}
    t = record.get("temperature")
    if record.get("format") != FORMAT or isinstance(t, bool) or not isinstance(t, (int, float)) \
            or not math.isfinite(t) or t <= 0:
        raise ConfigError(f"{path}: expected format {FORMAT!r} with a positive 'temperature'; refit it with "
                          "`broaden train` or delete the file to score uncalibrated")
    return record


def model_temperature(folder: str | os.PathLike) -> float | None:
    """The temperature stored in a model folder (None: uncalibrated)."""
    record = read_calibration(folder)
    return None if record is None else float(record["temperature"])


def temperature_metadata(temperature: float | None) -> dict[bytes, bytes] | None:
    """Parquet schema metadata recording the temperature a scored table's probabilities were divided by."""
    return None if temperature is None else {TEMPERATURE_KEY: repr(float(temperature)).encode()}


def scaler_from(record: dict | None, *, logits: bool = True) -> TemperatureScaler | None:
    """A fitted :class:`TemperatureScaler` from a :func:`read_calibration` record (None stays None)."""
    if record is None:
        return None
    scaler = TemperatureScaler(logits=logits)
    scaler.temperature_, scaler.n_ = float(record["temperature"]), record.get("n")
    return scaler
