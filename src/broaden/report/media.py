"""Inline media for the explorer: image thumbnails as PNG data URIs, audio as WAV data URIs or file links.

Images may arrive as arrays (H×W grey, H×W×3/4 colour, or a flat list of a square grey image) or as image
files; audio as sample arrays with a rate, or as WAV files. Large audio stays a relative link to the file
so the page stays small; everything else is embedded so the page works offline as a single file.
"""
from __future__ import annotations

import base64
import io
import math
import os
import wave
from pathlib import Path

import numpy as np

THUMBNAIL_PX = 96
AUDIO_EMBED_MAX_BYTES = 256 * 1024


def data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def image_array(values, shape=None) -> np.ndarray:
    """An image as uint8 H×W or H×W×C; a flat vector without ``shape`` must be a square grey image."""
    arr = np.asarray(values)
    if shape is not None:
        arr = arr.reshape(tuple(int(s) for s in shape))
    elif arr.ndim == 1:
        side = math.isqrt(arr.size)
        if side * side != arr.size:
            raise ValueError(f"a flat image of {arr.size} values is not square; give its shape")
        arr = arr.reshape(side, side)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channels-first tensors
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an H×W or H×W×C image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        # Float images in [0, 1] are common (normalised tensors); anything else is taken as 0…255.
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        arr = np.clip(np.nan_to_num(arr * scale), 0, 255).astype(np.uint8)
    return arr


def png_data_uri(image, shape=None, max_px: int = THUMBNAIL_PX) -> str:
    """A thumbnail (longest side at most ``max_px``; small images are kept and scaled up by CSS)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            im.load()
            pic = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB")
    else:
        pic = Image.fromarray(image_array(image, shape))
    if max(pic.size) > max_px:
        pic.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    pic.save(buf, format="PNG", optimize=True)
    return data_uri("image/png", buf.getvalue())


def wav_bytes(samples, sample_rate: int) -> bytes:
    """Mono or (n, channels) samples as 16-bit PCM WAV (floats are taken to lie in −1…1)."""
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if np.issubdtype(x.dtype, np.floating):
        x = np.clip(np.nan_to_num(x), -1.0, 1.0) * 32767.0
    pcm = np.asarray(x, dtype=np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def audio_src(audio, *, sample_rate: int | None = None, report_dir: Path | None = None,
              max_bytes: int = AUDIO_EMBED_MAX_BYTES) -> str:
    """The ``src`` of an <audio> element: a WAV data URI when small, else a path relative to the report."""
    if isinstance(audio, (str, os.PathLike)):
        path = Path(audio)
        size = path.stat().st_size
        if size <= max_bytes and _is_wav(path):
            return data_uri("audio/wav", path.read_bytes())
        base = report_dir if report_dir is not None else Path.cwd()
        return os.path.relpath(path.resolve(), base.resolve())
    if sample_rate is None:
        raise ValueError("audio samples need a sample rate")
    return data_uri("audio/wav", wav_bytes(audio, sample_rate))


def _is_wav(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(12)
    return head[:4] == b"RIFF" and head[8:12] == b"WAVE"
