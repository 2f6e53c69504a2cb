"""A mixture-of-modality-experts (MoME) transformer in the style of VLMo / BEiT-3 (DESIGN §1, §7).

Each block has one self-attention shared by all tokens and per-modality feed-forward experts: text
positions go through the text expert, visual positions through the vision expert. The top
``vl_layers`` blocks replace both with a single vision-language expert that fuses the modalities (VLMo's
V-L FFN). The input is [CLS] + text tokens followed by the visual tokens, so the expert routing is a
split of the sequence at the text length. Pre-LayerNorm residual blocks, padding masks throughout.
"""
from __future__ import annotations

import torch
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask (True = real token)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


def feed_forward(width: int, ratio: float, dropout: float) -> nn.Sequential:
    hidden = int(width * ratio)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))


class MoMEBlock(nn.Module):
    """Shared attention, then the text / vision experts (or the V-L expert when ``fused``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, fused: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        names = ("vl",) if fused else ("text", "vision")
        self.experts = nn.ModuleDict({n: feed_forward(width, mlp_ratio, dropout) for n in names})
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, n_text: int) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask))
        h = self.norm2(x)
        if "vl" in self.experts:
            f = self.experts["vl"](h)
        elif n_text == h.shape[1]:  # no visual tokens: leave the vision expert out of the graph
            f = self.experts["text"](h)
        else:
            f = torch.cat([self.experts["text"](h[:, :n_text]), self.experts["vision"](h[:, n_text:])], dim=1)
        return x + self.drop(f)


class MoMETransformer(nn.Module):
    """Token ids (+ visual tokens) → h_cls, the final state of the first ([CLS]) position."""

    def __init__(self, vocab_size: int, max_text_length: int, width: int = 256, layers: int = 4,
                 heads: int = 4, vl_layers: int = 1, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 pad_token_id: int = 0):
        super().__init__()
        self.width = width
        self.token_embed = nn.Embedding(vocab_size, width, padding_idx=pad_token_id)
        self.position_embed = nn.Parameter(torch.randn(max_text_length, width) * 0.02)
        self.modality_embed = nn.Parameter(torch.randn(2, width) * 0.02)  # 0 = text, 1 = vision
        self.blocks = nn.ModuleList(
            MoMEBlock(width, heads, mlp_ratio, dropout, fused=i >= layers - vl_layers) for i in range(layers))
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, text_mask: torch.Tensor,
                visual: torch.Tensor | None = None, visual_mask: torch.Tensor | None = None) -> torch.Tensor:
        n_text = input_ids.shape[1]
        x = self.token_embed(input_ids) + self.position_embed[:n_text] + self.modality_embed[0]
        mask = text_mask.bool()
        if visual is not None and visual.shape[1]:
            x = torch.cat([x, visual + self.modality_embed[1]], dim=1)
            mask = torch.cat([mask, visual_mask.bool()], dim=1)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask, n_text)
        return self.norm(x[:, 0])
