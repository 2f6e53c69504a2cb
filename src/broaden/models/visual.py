"""Visual tokens (DESIGN §1): sampled frames → patch projection into the backbone's token space.

Both backbones get their visual tokens from :class:`VisualTokenizer`: a strided convolution cuts each
frame into ``patch_size`` patches (or takes the whole frame as one token when ``patch_size`` is None),
projects them to the token width, and adds a frame embedding and a patch-position embedding.

:func:`decode_frames` turns one item's ``frames`` cell into a (T, C, H, W) float array. Each frame may be
a flat or nested list of numbers (C·H·W values in C, H, W order, used as given), encoded image bytes
(PNG/JPEG…, decoded with Pillow, converted to L or RGB, resized to ``frame_size``, scaled to [0, 1]), or a
path (relative to the items file) to such an image or to a ``.npy`` array (loaded without pickle).
More than ``num_frames`` frames are sampled evenly. A numeric ``frames`` column (any nesting of lists of
numbers, e.g. list<fixed_size_list<fixed_size_list<uint8>>>) is decoded without a Python loop over pixels
by :func:`numeric_frames`; uint8 pixel values are divided by 255, other numbers are used as given.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from broaden.errors import BroadenError


class FrameError(BroadenError, ValueError):
    """A frame cannot be decoded or has the wrong size."""


class VisualTokenizer(nn.Module):
    """(B, T, C, H, W) frames + (B, T) frame mask → (B, T·P, width) tokens + (B, T·P) mask."""

    def __init__(self, width: int, num_frames: int, channels: int, frame_size: tuple[int, int],
                 patch_size: int | None = None):
        super().__init__()
        kernel = (patch_size, patch_size) if patch_size else tuple(frame_size)
        self.proj = nn.Conv2d(channels, width, kernel_size=kernel, stride=kernel)
        self.num_patches = (frame_size[0] // kernel[0]) * (frame_size[1] // kernel[1])
        self.frame_embed = nn.Parameter(torch.randn(num_frames, width) * 0.02)
        self.patch_embed = nn.Parameter(torch.randn(self.num_patches, width) * 0.02)
        self.norm = nn.LayerNorm(width)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = frames.shape[:2]
        x = self.proj(frames.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B·T, P, width)
        x = x.reshape(b, t, self.num_patches, -1) + self.frame_embed[:t, None] + self.patch_embed[None]
        tokens = self.norm(x).reshape(b, t * self.num_patches, -1)
        return tokens, frame_mask.repeat_interleave(self.num_patches, dim=1)


def _image_to_array(source, channels: int, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FrameError(f"not a readable image ({exc})") from exc
    if channels not in (1, 3):
        raise FrameError(f"images decode to 1 or 3 channels, the model expects {channels}")
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _one_frame(value, channels: int, size: tuple[int, int], base_dir: Path) -> np.ndarray:
    if isinstance(value, (bytes, bytearray)):
        return _image_to_array(io.BytesIO(value), channels, size)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        if not path.is_file():
            raise FrameError(f"{path}: frame file not found")
        if path.suffix.lower() == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except ValueError as exc:
                raise FrameError(f"{path}: not a plain numeric .npy array ({exc})") from exc
        else:
            return _image_to_array(path, channels, size)
    else:
        arr = np.asarray(value, dtype=np.float32)
    expected = channels * size[0] * size[1]
    if arr.size != expected:
        raise FrameError(f"frame has {arr.size} values, expected {expected} (= {channels}×{size[0]}×{size[1]})")
    arr = np.asarray(arr, dtype=np.float32).reshape(channels, *size)
    if not np.isfinite(arr).all():
        raise FrameError("frame contains NaN or infinite values")
    return arr


def sample_frames(count: int, num_frames: int) -> np.ndarray:
    """Indices of at most ``num_frames`` frames out of ``count``, evenly spread (all when fewer)."""
    if count <= num_frames:
        return np.arange(count)
    return np.linspace(0, count - 1, num_frames).round().astype(np.int64)


def _leaf_counts(arr: pa.Array) -> np.ndarray:
    """Number of numeric leaves under each element of a (nested) list array."""
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    child = arr.flatten()
    if not _is_list(child.type):
        return lengths
    inner = _leaf_counts(child)
    ends = np.cumsum(lengths)
    sums = np.concatenate([[0], np.cumsum(inner)])
    return sums[ends] - sums[ends - lengths]


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def is_numeric_frames(t: pa.DataType) -> bool:
    """True for a column of lists of frames whose values are numbers at any nesting depth."""
    if not _is_list(t):
        return False
    t = t.value_type
    if not _is_list(t):
        return False
    while _is_list(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def numeric_frames(column: pa.Array | pa.ChunkedArray, *, num_frames: int, channels: int,
                   frame_size: tuple[int, int]) -> list[np.ndarray | FrameError]:
    """Per row of a numeric ``frames`` column: float32 (T, C, H, W), or the :class:`FrameError` it raised."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    size = (int(frame_size[0]), int(frame_size[1]))
    expected = channels * size[0] * size[1]
    frames_per_row = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    frames = column.flatten()
    per_frame = _leaf_counts(frames)
    leaves = frames
    while _is_list(leaves.type):
        leaves = leaves.flatten()
    scale = 1 / 255 if pa.types.is_uint8(leaves.type) else 1.0
    values = leaves.to_numpy(zero_copy_only=False).astype(np.float32) * np.float32(scale)
    frame_start = np.concatenate([[0], np.cumsum(frames_per_row)])
    leaf_start = np.concatenate([[0], np.cumsum(per_frame)])
    out: list[np.ndarray | FrameError] = []
    for row, count in enumerate(frames_per_row):
        first = frame_start[row]
        wrong = np.flatnonzero(per_frame[first:first + count] != expected)
        if wrong.size:
            j = int(wrong[0])
            out.append(FrameError(f"frame {j}: has {per_frame[first + j]} values, expected {expected} "
                                  f"(= {channels}×{size[0]}×{size[1]})"))
            continue
        picks = first + sample_frames(int(count), num_frames)
        block = values[leaf_start[first]:leaf_start[first + count]].reshape(int(count), channels, *size)
        block = block[picks - first]
        if not np.isfinite(block).all():
            out.append(FrameError("frames contain NaN or infinite values"))
            continue
        out.append(block)
    return out


def decode_frames(cell, *, num_frames: int, channels: int, frame_size: tuple[int, int],
                  base_dir: str | os.PathLike = ".") -> np.ndarray:
    """One item's frames as float32 (T, C, H, W), T ≤ ``num_frames`` (evenly sampled when longer)."""
    size = (int(frame_size[0]), int(frame_size[1]))
    if cell is None or len(cell) == 0:
        return np.zeros((0, channels, *size), dtype=np.float32)
    cell = list(cell)
    cell = [cell[i] for i in sample_frames(len(cell), num_frames)]
    frames = []
    for i, value in enumerate(cell):
        try:
            frames.append(_one_frame(value, channels, size, Path(base_dir)))
        except FrameError as exc:
            raise FrameError(f"frame {i}: {exc}") from exc
    return np.stack(frames)
