"""Saved models and resumable training state: safetensors for tensors, JSON for everything else.

A saved model is a folder::

    config.json          format, ModelConfig, ItemColumns, where the audio encoder's weights live
    model.safetensors    the weights (a frozen Whisper loaded from `whisper_path` is referenced, not copied)
    text/                tokenizer files (+ the HF encoder's config.json for `hf-text`)
    audio/               Whisper config + feature-extractor settings (when the model fuses audio)

A folder is written beside its destination and swapped in by renames, so an interrupted save leaves the
previous version loadable. Optimizer and RNG state use the same two formats (no pickle anywhere).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from broaden.io import atomic_dir, write_text
from broaden.models.audio import WhisperAudio
from broaden.models.config import ConfigError, ItemColumns, ModelConfig, columns_from_dict, \
    model_config_from_dict, to_dict
from broaden.models.network import MultimodalClassifier

FORMAT = "broaden-model/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def existing_dir(target: str | os.PathLike) -> Path | None:
    """``target`` if present, else the ``.old`` copy an interrupted :func:`broaden.io.atomic_dir` swap left behind."""
    target = Path(target)
    old = target.with_name(target.name + ".old")
    return target if target.exists() else (old if old.exists() else None)


def _external_audio(config: ModelConfig) -> bool:
    return config.fusion != "none" and config.freeze_audio and bool(config.whisper_path)


def write_model(model: MultimodalClassifier, tokenizer, columns: ItemColumns, folder: Path) -> None:
    """Write a model into an (empty, staged) folder."""
    from safetensors.torch import save_file

    config = model.config
    tokenizer.save_pretrained(str(folder / "text"))
    if config.backbone == "hf-text":
        model.backbone.encoder.config.save_pretrained(str(folder / "text"))
    state = model.state_dict()
    audio_meta = None
    if model.audio is not None:
        model.audio.save_settings(folder / "audio")
        external = _external_audio(config)
        audio_meta = {"weights": "external" if external else "embedded", "path": config.whisper_path,
                      "digest": model.audio.digest() if external else None}
        if external:
            state = {k: v for k, v in state.items() if not k.startswith("audio.")}
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / WEIGHTS_FILE),
              metadata={"format": FORMAT})
    meta = {"format": FORMAT, "model": to_dict(config), "columns": to_dict(columns), "audio": audio_meta}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def save_model(model: MultimodalClassifier, tokenizer, columns: ItemColumns, folder: str | os.PathLike) -> Path:
    """Save a model to ``folder`` (replacing any previous one there only once complete)."""
    with atomic_dir(folder) as tmp:
        write_model(model, tokenizer, columns, tmp)
    return Path(folder)


@dataclass
class LoadedModel:
    model: MultimodalClassifier
    tokenizer: object
    columns: ItemColumns
    path: Path

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def model_folder(path: str | os.PathLike) -> Path:
    """The model folder behind a run directory (``RUN/model``) or a model folder itself."""
    p = Path(path)
    for candidate in (p / "model", p):
        found = existing_dir(candidate)
        if found is not None and (found / CONFIG_FILE).is_file():
            return found
    raise ConfigError(f"{p}: no saved model here (expected {CONFIG_FILE} in it or in {p / 'model'})")


def load_model(path: str | os.PathLike, *, device: str = "cpu", whisper_path: str | None = None) -> LoadedModel:
    """Load a saved model (a run directory or its ``model`` folder) in eval mode.

    A frozen Whisper that was referenced by path is reloaded from there (or from ``whisper_path`` if it
    moved) and must match the digest recorded at save time.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, WhisperConfig

    folder = model_folder(path)
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{folder / CONFIG_FILE}: not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{folder / CONFIG_FILE}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    missing = [key for key in ("model", "columns") if key not in meta]
    if missing:
        raise ConfigError(f"{folder / CONFIG_FILE}: missing {', '.join(repr(m) for m in missing)}; "
                          "the folder is not a complete saved model")
    config = model_config_from_dict(meta["model"], f"{folder / CONFIG_FILE}: model")
    columns = columns_from_dict(meta["columns"], f"{folder / CONFIG_FILE}: columns")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "text"), local_files_only=True)
    audio = None
    audio_meta = meta.get("audio") or {}
    if config.fusion != "none":
        if audio_meta.get("weights") == "external":
            source = whisper_path or audio_meta["path"]
            audio = WhisperAudio.from_pretrained(source, config.audio_pool_stride)
            if audio.digest() != audio_meta["digest"]:
                raise ConfigError(f"{source}: Whisper weights differ from the ones this model was trained "
                                  f"with ({folder}); pass the original checkpoint")
            config.whisper_path = str(source)
        else:
            wcfg = WhisperConfig.from_pretrained(str(folder / "audio"), local_files_only=True)
            audio = WhisperAudio.from_config(wcfg, config.audio_pool_stride, folder=folder / "audio")
    model = MultimodalClassifier(config, tokenizer, audio=audio, hf_source=folder / "text", pretrained=False)
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"{folder / WEIGHTS_FILE}: cannot read weights ({exc})") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if audio_meta.get("weights") == "external":
        missing = [k for k in missing if not k.startswith("audio.")]
    if missing or unexpected:
        raise ConfigError(f"{folder / WEIGHTS_FILE}: weights do not match the saved config "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return LoadedModel(model.to(device).eval(), tokenizer, columns, folder)


# ------------------------------------------------------------------------------ training state
def write_training_state(folder: Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Optimizer tensors + torch RNG to safetensors, the rest (``state``, param groups) to JSON."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    scalars: dict[str, dict] = {}
    for idx, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    save_file(tensors, str(folder / "optimizer.safetensors"))
    payload = {"state": state, "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars}}
    write_text(json.dumps(payload, indent=2), folder / "state.json")


def read_training_state(folder: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer and torch RNG saved by :func:`write_training_state`; return ``state``."""
    from safetensors.torch import load_file

    payload = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value
    for idx, entries in payload["optimizer"]["scalars"].items():
        per_param.setdefault(int(idx), {}).update(entries)
    optimizer.load_state_dict({"state": per_param, "param_groups": payload["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return payload["state"]
