"""Audio fusion heads and the MLP classifier g (DESIGN §1, paper Eq. 6–7).

Every head maps (h_cls, audio sequence A, padding mask) to an audio vector that is concatenated with
h_cls before the MLP: ``none`` (no audio), ``avgpool`` / ``maxpool`` (Eq. 6, over valid positions only)
and ``vlmae`` (Eq. 7: q = W_q h_cls, k_i = W_k a_i, v_i = W_v a_i, α = softmax_i(q·k_i / sqrt(d)) over
the valid positions, a = Σ α_i v_i; with several heads, d = d_att / heads per head, as in standard
multi-head attention). An item without any valid audio gets a zero vector and zero weights.
"""
from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    filled = x.masked_fill(~mask.bool()[..., None], float("-inf")).amax(1)
    return torch.where(mask.any(1, keepdim=True), filled, torch.zeros_like(filled))


class AudioFusion(nn.Module):
    """``forward(h_cls, audio, mask) -> (vector (B, out_dim), weights (B, heads, L) or None)``."""

    def __init__(self, kind: str, d_cls: int, d_audio: int = 0, att_dim: int = 256, heads: int = 1):
        super().__init__()
        self.kind = kind
        self.heads = heads
        if kind == "vlmae":
            self.q = nn.Linear(d_cls, att_dim, bias=False)
            self.k = nn.Linear(d_audio, att_dim, bias=False)
            self.v = nn.Linear(d_audio, att_dim, bias=False)
        self.out_dim = {"none": 0, "avgpool": d_audio, "maxpool": d_audio, "vlmae": att_dim}[kind]

    def attention(self, h_cls: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor):
        b, length, _ = audio.shape
        q = self.q(h_cls).view(b, self.heads, 1, -1)
        k = self.k(audio).view(b, length, self.heads, -1).transpose(1, 2)
        v = self.v(audio).view(b, length, self.heads, -1).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).squeeze(2) / k.shape[-1] ** 0.5  # (B, heads, L)
        valid = mask.bool()[:, None, :]
        # Masked positions get exactly zero weight; rows with no valid position end up all zero.
        weights = torch.softmax(scores.masked_fill(~valid, torch.finfo(scores.dtype).min), -1) * valid
        vector = (weights[..., None] * v).sum(2).reshape(b, -1)
        return vector, weights

    def forward(self, h_cls, audio=None, mask=None):
        if self.kind == "none":
            return h_cls.new_zeros(h_cls.shape[0], 0), None
        if self.kind == "vlmae":
            return self.attention(h_cls, audio, mask)
        pool = masked_mean if self.kind == "avgpool" else masked_max
        return pool(audio, mask), None


def mlp_head(in_dim: int, hidden: int, num_classes: int, layers: int = 2, dropout: float = 0.1) -> nn.Sequential:
    """The classifier g: ``layers`` (2 or 3) linear layers with GELU and dropout between them."""
    mods: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
        width = hidden
    mods.append(nn.Linear(width, num_classes))
    return nn.Sequential(*mods)
