"""The multimodal classifier (DESIGN §1): frames → visual tokens; [CLS] + text + visual → backbone →
h_cls; audio → Whisper → fusion head; MLP on [h_cls ; audio vector] → C logits."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from broaden.models.audio import WhisperAudio
from broaden.models.backbone import build_backbone
from broaden.models.config import ModelConfig
from broaden.models.fusion import AudioFusion, mlp_head
from broaden.models.visual import VisualTokenizer


@dataclass
class Batch:
    """Model input. Audio comes either pre-encoded (``audio`` + ``audio_mask``, from the cache of a frozen
    encoder) or as Mel features (``mel`` + ``audio_lengths``, run through the encoder in the forward)."""

    input_ids: torch.Tensor
    text_mask: torch.Tensor
    labels: torch.Tensor | None = None
    frames: torch.Tensor | None = None
    frame_mask: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    audio_mask: torch.Tensor | None = None
    mel: torch.Tensor | None = None
    audio_lengths: torch.Tensor | None = None

    def to(self, device) -> Batch:
        return Batch(**{f.name: (None if (v := getattr(self, f.name)) is None else v.to(device))
                        for f in fields(self)})


@dataclass
class Output:
    logits: torch.Tensor
    h_cls: torch.Tensor
    attention: torch.Tensor | None = None  # (B, heads, L) VLMAE weights over the audio positions
    audio_mask: torch.Tensor | None = None


class MultimodalClassifier(nn.Module):
    """Backbone + optional visual tokenizer + optional Whisper audio + fusion + MLP head.

    A frozen part (``freeze_audio`` / ``freeze_text``) has ``requires_grad=False`` and stays in eval mode
    (no dropout) even while the rest trains.
    """

    def __init__(self, config: ModelConfig, tokenizer, *, audio: WhisperAudio | None = None,
                 hf_source=None, pretrained: bool = True):
        super().__init__()
        if config.num_classes is None:
            raise ValueError("ModelConfig.num_classes must be set before building the model")
        self.config = config
        self.backbone = build_backbone(config, tokenizer, hf_source=hf_source, pretrained=pretrained)
        width = self.backbone.width
        self.visual = (VisualTokenizer(width, config.num_frames, config.frame_channels,
                                       tuple(config.frame_size), config.patch_size)
                       if config.num_frames > 0 else None)
        self.audio = audio if config.fusion != "none" else None
        d_audio = self.audio.dim if self.audio is not None else 0
        self.fusion = AudioFusion(config.fusion, width, d_audio, config.att_dim, config.att_heads)
        self.head = mlp_head(width + self.fusion.out_dim, config.mlp_hidden, config.num_classes,
                             config.mlp_layers, config.classifier_dropout)
        self._frozen = []
        if self.audio is not None and config.freeze_audio:
            self._frozen.append(self.audio)
        if config.backbone == "hf-text" and config.freeze_text:
            self._frozen.append(self.backbone)
        for part in self._frozen:
            part.requires_grad_(False)
            part.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        for part in self._frozen:
            part.eval()
        return self

    def forward(self, batch: Batch) -> Output:
        visual = visual_mask = None
        if self.visual is not None and batch.frames is not None and batch.frames.shape[1]:
            visual, visual_mask = self.visual(batch.frames, batch.frame_mask)
        h_cls = self.backbone(batch.input_ids, batch.text_mask, visual, visual_mask)
        audio, mask = batch.audio, batch.audio_mask
        if self.audio is not None and audio is None and batch.mel is not None:
            audio, lengths = self.audio(batch.mel, batch.audio_lengths)
            mask = torch.arange(audio.shape[1], device=audio.device)[None] < lengths[:, None]
        if self.fusion.kind != "none" and audio is None:
            raise ValueError(f"fusion {self.fusion.kind!r} needs audio in the batch")
        vector, weights = self.fusion(h_cls, audio, mask)
        return Output(self.head(torch.cat([h_cls, vector], dim=1)), h_cls, weights, mask)
