"""``--latent finetuned``: the paper's own condition, where the LSB latent is the [CLS] state of a
fine-tuned encoder (DESIGN §1, §3.1), rather than a frozen sentence embedding or the MLP head's hidden layer.

Per repeat, the encoder is fine-tuned on that repeat's initial labelled set (its oracle labels) with the
same trainer as ``broaden train --encoder finetune`` (Adam, lr 4e-5, ≤ ``epochs`` epochs, early stop on a
held-out tenth), at a short ``max_length`` so that it stays affordable on 2 CPU cores; then every item's
[CLS] state becomes its feature vector. The repeat's classifier and LSB both work on those vectors.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace

import numpy as np

from broaden._lazy import renamed
from broaden.errors import DatasetError
from broaden.simulate.data import SimData

MAX_LENGTH = 64
EPOCHS = 3
BATCH_SIZE = 16
ENCODER = None  # local HF folder to fine-tune; None = the packaged all-MiniLM-L6-v2
#: The recipe and cost a repeat records (``repeats/repeat-NNN.json`` → ``finetune``).
FINETUNE_FIELDS = ("max_length", "finetune_items", "finetune_epochs", "finetune_s", "embed_s")


@renamed(progress="show_progress")
def finetuned_data(data: SimData, rows: np.ndarray, labels: np.ndarray, *, seed: int, encoder=None,
                   max_length: int = MAX_LENGTH, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE,
                   num_threads: int | None = None, show_progress: bool = False) -> SimData:
    """``data`` with its features replaced by the [CLS] states of an encoder fine-tuned on ``rows``
    (labelled ``labels[rows]``); ``feature_info`` records the recipe and the time it took."""
    from broaden.models.textrun import LabeledText, TextModel, fit_text, make_spec

    if not data.texts:
        raise DatasetError(f"{data.name}: latent='finetuned' needs the items' texts (this data has "
                           f"{data.feature_info.get('kind', 'no')} features only)")
    rows = np.asarray(rows, dtype=np.int64)
    texts = list(data.texts)
    items = LabeledText(ids=rows, labels=np.asarray(labels)[rows], columns=[[texts[i] for i in rows]],
                        class_names=tuple(data.class_names))
    spec = make_spec(["text"], encoder="finetune", model_path=encoder or ENCODER, max_length=max_length)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="broaden-finetune-") as tmp:
        result = fit_text(items, spec, tmp, epochs=epochs, batch_size=batch_size, seed=seed,
                          num_threads=num_threads, resume=False, show_progress=show_progress)
        t1 = time.perf_counter()
        _, features = TextModel(tmp).predict([texts])  # fp32: the same features on every machine
    t2 = time.perf_counter()
    info = {**data.feature_info, "kind": "finetuned", "dim": int(features.shape[1]), "max_length": max_length,
            "finetune_items": int(len(rows)), "finetune_epochs": result.summary.get("epochs_run"),
            "finetune_s": round(t1 - t0, 1), "embed_s": round(t2 - t1, 1)}
    return replace(data, features=features, feature_info=info)
