"""VL backbones behind one interface: ``forward(input_ids, text_mask, visual, visual_mask) -> h_cls``.

``mome`` is the mixture-of-modality-experts transformer of :mod:`.mome`; ``hf-text`` is any local Hugging
Face encoder (e.g. the bundled all-MiniLM-L6-v2): its word embeddings for the text, followed by the
visual tokens from the shared :class:`~broaden.models.visual.VisualTokenizer`, fed as ``inputs_embeds``
(token type 1 marks visual positions where the model has token types).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from broaden.models.config import ConfigError, ModelConfig
from broaden.models.mome import MoMETransformer


class HFTextBackbone(nn.Module):
    """A Hugging Face encoder whose [CLS] (first position) state is h_cls."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # h_cls is the raw first state; an unused pooler would get no gradient
        self.encoder = encoder
        self.width = int(encoder.config.hidden_size)
        self.max_positions = int(getattr(encoder.config, "max_position_embeddings", 1 << 30))
        params = inspect.signature(encoder.forward).parameters
        self._token_types = "token_type_ids" in params and getattr(encoder.config, "type_vocab_size", 1) >= 2

    def forward(self, input_ids: torch.Tensor, text_mask: torch.Tensor,
                visual: torch.Tensor | None = None, visual_mask: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.encoder.get_input_embeddings()(input_ids)
        mask = text_mask.long()
        types = torch.zeros_like(input_ids)
        if visual is not None and visual.shape[1]:
            embeds = torch.cat([embeds, visual], dim=1)
            mask = torch.cat([mask, visual_mask.long()], dim=1)
            types = torch.cat([types, torch.ones(visual_mask.shape, dtype=types.dtype, device=types.device)], 1)
        if embeds.shape[1] > self.max_positions:
            raise ConfigError(f"text + visual tokens ({embeds.shape[1]}) exceed the encoder's "
                              f"{self.max_positions} positions; lower max_text_length, num_frames or patches")
        kwargs = {"token_type_ids": types} if self._token_types else {}
        return self.encoder(inputs_embeds=embeds, attention_mask=mask, **kwargs).last_hidden_state[:, 0]


def build_backbone(config: ModelConfig, tokenizer, *, hf_source: str | Path | None = None,
                   pretrained: bool = True) -> nn.Module:
    """The backbone named by ``config.backbone``; ``hf-text`` loads ``hf_source`` (weights when
    ``pretrained``, else only its architecture, to be filled from a saved run)."""
    if config.backbone == "mome":
        return MoMETransformer(
            vocab_size=len(tokenizer), max_text_length=config.max_text_length, width=config.width,
            layers=config.layers, heads=config.heads, vl_layers=config.vl_layers,
            mlp_ratio=config.mlp_ratio, dropout=config.dropout, pad_token_id=tokenizer.pad_token_id or 0)
    from transformers import AutoConfig, AutoModel

    from broaden.models.text import load_hf_encoder, resolve_model_path

    if pretrained:
        return HFTextBackbone(load_hf_encoder(hf_source))
    hf_config = AutoConfig.from_pretrained(str(resolve_model_path(hf_source)), local_files_only=True)
    return HFTextBackbone(AutoModel.from_config(hf_config))
