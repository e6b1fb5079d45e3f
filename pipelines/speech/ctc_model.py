"""Causal CTC digit recogniser: log-mel -> stacked 20 ms tokens -> Mamba -> CTC + speech/pause heads.

Everything is causal, so a stream fed in chunks with carried state (front-end sample
carry, frame-stacking carry, backbone state) gives the same outputs as one forward over
the whole stream (``tests/test_speech_stream.py`` checks it). The log-mel features are
normalised with fixed statistics measured on training streams (``feat_mean`` /
``feat_std`` buffers), never per utterance, which a stream cannot know in advance.

Classes of the CTC head: 0 blank, ``d + 1`` for digit ``d``. The speech/pause head says,
per token, whether the token lies inside a word; the decoder (``ctc.py``) takes word
boundaries from it.

Axis legend: b batch, t samples, l tokens, f log-mel frames, m mel bins, d model width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from longstream.encoders.audio import LogMel
from longstream.pipelines import common

from . import DOMAIN
from .config import CTC_TASK, CTCConfig
from .streams import SAMPLE_RATE

N_CLASSES = 11  # blank + 10 digits


class CTCDigitModel(nn.Module):
    """``wave (B, T)`` at 8 kHz -> (CTC logits (B, L, 11), speech logits (B, L, 2), backbone state)."""

    def __init__(self, cfg: CTCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc, d = cfg.model, cfg.backbone.d_model
        self.frontend = LogMel(SAMPLE_RATE, n_mels=mc.n_mels, win_ms=mc.win_ms, hop_ms=mc.hop_ms, f_min=mc.f_min)
        self.register_buffer("feat_mean", torch.zeros(mc.n_mels))
        self.register_buffer("feat_std", torch.ones(mc.n_mels))
        self.stack = mc.stack
        self.proj = nn.Linear(mc.n_mels * mc.stack, d)
        self.drop = nn.Dropout(mc.dropout)
        self.backbone = common.build_backbone(cfg.backbone)
        self.ctc_head = common.TokenClassifier(d, N_CLASSES, blank=0)
        self.vad_head = common.TokenClassifier(d, 2)

    # ------------------------------------------------------------------ timing
    @property
    def hop(self) -> int:
        return self.frontend.hop

    @property
    def token_sec(self) -> float:
        return self.stack * self.frontend.hop / SAMPLE_RATE

    def token_center(self, j: float) -> float:
        """Centre (s) of the samples token ``j`` covers: frames ``j*s .. j*s+s-1``."""
        s, hop, win = self.stack, self.frontend.hop, self.frontend.n_fft
        return ((j * s) * hop + (j * s + s - 1) * hop + win) / 2 / SAMPLE_RATE

    def token_avail(self, j: float) -> float:
        """When (s) the audio of token ``j`` is complete."""
        s, hop, win = self.stack, self.frontend.hop, self.frontend.n_fft
        return ((j * s + s - 1) * hop + win) / SAMPLE_RATE

    def n_tokens(self, n_samples: int) -> int:
        return int(self.frontend.num_frames(n_samples)) // self.stack

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def features(self, wave: Tensor) -> Tensor:
        """``(B, T) -> (B, F, m)`` raw log-mel frames."""
        return self.frontend(wave)[0]

    def tokens(self, feats: Tensor) -> Tensor:
        """``(B, F, m)`` log-mel -> ``(B, F // stack, m * stack)`` normalised stacked frames."""
        b, f, m = feats.shape
        f = f - f % self.stack
        x = (feats[:, :f] - self.feat_mean) / self.feat_std
        return x.reshape(b, f // self.stack, m * self.stack)

    def forward_tokens(self, x: Tensor, state: Any = None) -> tuple[Tensor, Tensor, Any]:
        h = self.drop(self.proj(x))  # (b, l, d)
        h, state = self.backbone(h, state)
        return self.ctc_head(h), self.vad_head(h), state

    def forward(self, wave: Tensor, state: Any = None) -> tuple[Tensor, Tensor, Any]:
        return self.forward_tokens(self.tokens(self.features(wave)), state)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, out_dir: str | Path, **kw: Any) -> Path:
        return common.save_pretrained(self, self.cfg, out_dir, pipeline=DOMAIN, backbone=self.cfg.backbone,
                                      task=CTC_TASK, **kw)


def build_ctc_model(cfg: CTCConfig) -> CTCDigitModel:
    return CTCDigitModel(cfg)


def ctc_example_batch(cfg: CTCConfig, batch_size: int = 2) -> dict[str, Tensor]:
    """A tiny forward input: 0.2 s of noise (8 tokens)."""
    g = torch.Generator().manual_seed(0)
    return {"wave": 0.1 * torch.randn(batch_size, int(0.2 * SAMPLE_RATE), generator=g)}


def is_ctc_checkpoint(meta: dict) -> bool:
    return meta.get("task") == CTC_TASK or meta.get("config", {}).get("model", {}).get("task") == CTC_TASK


def load_ctc(sd: dict, meta: dict, path: Path) -> CTCDigitModel:
    with common.checkpoint_errors(path):
        cfg = common.config_from_dict(CTCConfig, meta["config"])
        model = common.load_weights(build_ctc_model(cfg), sd, path, meta)
    return model.eval()


def ctc_from_pretrained(name_or_dir: str | Path) -> CTCDigitModel:
    """Load a CTC checkpoint (``speech/mamba-ctc-digits`` or a directory); refuses other speech models."""
    sd, meta, path = common.load_pretrained(name_or_dir, pipeline=DOMAIN)
    if not is_ctc_checkpoint(meta):
        raise common.UserError(f"checkpoint {name_or_dir} is a {meta.get('task') or 'digit classification'} model, "
                               "not a connected-digit CTC recogniser; use --checkpoint speech/mamba-ctc-digits")
    return load_ctc(sd, meta, path)
