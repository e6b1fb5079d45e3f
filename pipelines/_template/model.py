"""Template model: scalar encoder -> registry backbone -> shared pooled classification head.

The parts a new domain replaces are the encoder (here one ``Linear(1, d)`` token per time
step) and the head's task; the backbone always comes from ``common.build_backbone``
(``--backbone.*`` overrides, bad values exit 2) and the pooling / head from
``common.SequenceClassifier`` (masked, so right-padded batches give the same result as
one series at a time).

Axis legend: b batch, l length, d model width, c classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from longstream.pipelines import common

from . import DOMAIN
from .config import Config

# Checkpoints saved before the shared head (e.g. the shipped ``template/sine-attn``) named
# the head's linear layer ``head``; it is now ``head.mlp`` (same weights, same maths).
LEGACY_KEYS = {"head.weight": "head.mlp.weight", "head.bias": "head.mlp.bias"}


class SineClassifier(nn.Module):
    """``(B, L)`` series (+ optional ``(B, L)`` bool mask, True = valid) -> ``(B, n_classes)`` logits."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.backbone.d_model
        self.encoder = nn.Linear(1, d)  # one token per time step
        self.backbone = common.build_backbone(cfg.backbone)  # bad --backbone.* -> UserError
        self.head = common.SequenceClassifier(d, cfg.data.n_classes, pool=cfg.model.pool,
                                              dropout=cfg.model.dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.encoder(x.unsqueeze(-1))  # (b, l, d)
        h, _ = self.backbone(h, mask=mask)  # (b, l, d)
        return self.head(h, mask)  # (b, c)

    def save_pretrained(self, out_dir: str | Path, **kw: Any) -> Path:
        return common.save_pretrained(
            self, self.cfg, out_dir, pipeline=DOMAIN, backbone=self.cfg.backbone,
            task="sine-frequency classification (generated data)", **kw,
        )

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> SineClassifier:
        return from_pretrained(name_or_dir)


def build_model(cfg: Config) -> SineClassifier:
    """The model of ``cfg`` (random weights)."""
    return SineClassifier(cfg)


def example_batch(cfg: Config, batch_size: int = 2) -> dict[str, Tensor]:
    """Keyword arguments for a forward pass on a tiny input: ``build_model(cfg)(**example_batch(cfg))``."""
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(batch_size, min(cfg.data.seq_len, 8), generator=g)}


def from_pretrained(name_or_dir: str | Path) -> SineClassifier:
    """Load a checkpoint dir or hub name (``template/<name>`` or ``<name>``)."""
    sd, meta, path = common.load_pretrained(name_or_dir, pipeline=DOMAIN)
    with common.checkpoint_errors(path):  # an edited config.json -> one UserError naming the dir
        cfg = common.config_from_dict(Config, meta["config"])
        sd = {LEGACY_KEYS.get(k, k): v for k, v in sd.items()}
        return common.load_weights(build_model(cfg), sd, path, meta)


@torch.no_grad()
def predict_proba(model: SineClassifier, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Class probabilities for ``x`` (B, L) or (L,), optionally right-padded with ``mask`` (B, L)."""
    if x.dim() == 1:
        x = x[None]
    return torch.softmax(model(x, mask), -1)
