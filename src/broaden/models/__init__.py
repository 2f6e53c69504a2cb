"""Models (DESIGN §1): VL backbones (MoME, HF text), Whisper audio, fusion heads, training and scoring.

Names are imported on first use, so ``import broaden.models.text`` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # The functions train and score are not re-exported: broaden.models.train and .score are the modules
    # whatever was imported first (the commands are broaden.train and broaden.score).
    "TrainResult": "train", "ItemError": "train", "ScoreResult": "score",
    "load_model": "checkpoint", "save_model": "checkpoint", "LoadedModel": "checkpoint",
    "ModelConfig": "config", "TrainConfig": "config", "RunConfig": "config", "ItemColumns": "config",
    "ConfigError": "config", "load_run_config": "config", "run_config_from_dict": "config",
    "MultimodalClassifier": "network", "Batch": "network",
    "MoMETransformer": "mome", "HFTextBackbone": "backbone", "VisualTokenizer": "visual",
    "AudioFusion": "fusion", "WhisperAudio": "audio", "AudioError": "audio", "load_audio": "audio",
    "AudioCache": "audio_cache", "Featurizer": "data", "read_items": "data",
    "SentenceEncoder": "text", "minilm_path": "text",
    "EmbeddingClassifier": "classifier", "ClassifierError": "classifier",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
