"""Recall model: token embedding -> backbone (+ streaming memory) -> norm -> vocabulary head.

Long inputs always go through :class:`memory.StreamRunner`: with a memory, the input is
cut into ``model.segment_len`` segments and the memory carries the past between them
(with ``carry_backbone_state=False`` the backbone restarts every segment, so the memory
is the *only* path across segments); without one, the runner streams the backbone with
its own carried state, which equals one full pass for causal backbones but keeps memory
bounded at 16K-1M tokens.

Axis legend: b batch, l length, n segment length, d model width, v vocabulary.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from longstream.backbones.base import RMSNorm
from longstream.memory import StreamRunner, create_memory, get_memory_class
from longstream.memory.stream import StreamState
from longstream.pipelines import common

from . import DOMAIN
from .config import Config


class RecallModel(nn.Module):
    """``tokens (B, L) -> logits (B, L, V)``, streamed segment by segment."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        d, v = cfg.backbone.d_model, cfg.data.vocab_size
        self.embed = nn.Embedding(v, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        mc = cfg.model
        bcfg = cfg.backbone
        if mc.memory and bcfg.final_norm:
            # a memory adds its read to the backbone's residual stream, and this model norms
            # before the head anyway: a final norm in between shrinks the read's share of the
            # stream and kept it from learning (pipelines/recall/diagnose.py, README)
            bcfg = dataclasses.replace(bcfg, final_norm=False)
        bb = common.build_backbone(bcfg)  # bad --backbone.* -> UserError (exit 2)
        self.backbone: nn.Module | None = bb
        self.memory = None
        if mc.memory:
            try:
                cls = get_memory_class(mc.memory)
            except KeyError as e:
                raise common.UserError(f"--model.memory: {e.args[0]}") from None
            if cls.wraps_backbone:
                self.backbone = None  # the memory owns (and runs) the backbone
                self.memory = create_memory(mc.memory, d_model=d, backbone=bb, **mc.memory_kwargs)
            else:
                self.memory = create_memory(mc.memory, d_model=d, **mc.memory_kwargs)
        self.norm = RMSNorm(d)
        # tied: logits against the embedding table (no separate head weights)
        self.head = None if mc.tie_embeddings else nn.Linear(d, v, bias=False)

    # ------------------------------------------------------------------ streaming
    def runner(self, *, segment_len: int | None = None, detach_every: int | None = None,
               progress: bool | None = False, head: bool = True) -> StreamRunner:
        """The :class:`StreamRunner` over this model (embedding and head applied per segment)."""
        mc = self.cfg.model
        seg = segment_len if segment_len is not None else (mc.segment_len or None)
        return StreamRunner(
            self.backbone,
            self.memory,
            segment_len=seg,
            detach_every=detach_every,
            carry_backbone_state=mc.carry_backbone_state,
            embed=self.embed,
            head=self.logits if head else None,
            progress=progress,
        )

    def forward(self, tokens: Tensor, targets: Tensor | None = None, state: StreamState | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, StreamState]:
        """Training / short-input forward with truncated BPTT per config.

        Without ``targets``: logits (B, L, V). With ``targets`` (B, L): logits only at the
        scored positions (``targets != -100``), shape (K, V) in row-major order, so a large
        vocabulary (MQAR's 8192) never materialises (B, L, V). ``state`` continues a stream
        (state passing in training); ``return_state`` also returns the final stream state.
        """
        self._check_tokens(tokens)
        de = self.cfg.model.detach_every or None
        if targets is None:
            out, st = self.runner(detach_every=de).run(tokens, state)
        else:
            h, st = self.runner(detach_every=de, head=False).run(tokens, state)  # (b, l, d)
            out = self.logits(h[targets != -100])  # (k, v)
        return (out, st) if return_state else out

    def logits(self, h: Tensor) -> Tensor:
        """Vocabulary logits (..., V) of backbone outputs h (..., D)."""
        h = self.norm(h)
        return h @ self.embed.weight.t() if self.head is None else self.head(h)

    @torch.no_grad()
    def predict_at(self, tokens: Tensor, targets: Tensor, *, segment_len: int | None = None,
                   progress: bool | None = False) -> tuple[Tensor, int]:
        """Argmax predictions at the scored positions of ``targets`` (-100 elsewhere).

        Streams ``tokens`` (B, L) without materialising (B, L, V) logits, so memory stays
        flat in L. Returns ``(preds (B, L), state bytes per row at the end)``.
        """
        self._check_tokens(tokens)
        if segment_len is None:
            segment_len = self.cfg.model.segment_len or min(tokens.shape[1], 4096)
        r = self.runner(segment_len=segment_len, detach_every=1, progress=progress, head=False)
        preds = torch.full_like(targets, -100)
        st = None
        for s, h, new_state in r.iter(tokens):
            st = new_state
            tseg = targets[:, s : s + h.shape[1]]
            sel = tseg != -100  # (b, n)
            if bool(sel.any()):
                p = self.logits(h[sel]).argmax(-1)
                preds[:, s : s + h.shape[1]][sel] = p
        nbytes = st.nbytes() // max(tokens.shape[0], 1) if st is not None else 0
        return preds, nbytes

    def _check_tokens(self, tokens: Tensor) -> None:
        if tokens.dim() != 2:
            raise common.UserError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        v = self.cfg.data.vocab_size
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= v):
            raise common.UserError(f"token ids must be in 0..{v - 1} for this checkpoint")

    # ---------------------------------------------------------------- checkpoints
    def save_pretrained(self, out_dir: str | Path, **kw: Any) -> Path:
        return common.save_pretrained(
            self, self.cfg, out_dir, pipeline=DOMAIN, backbone=self.cfg.backbone,
            task=describe(self.cfg), **kw,
        )

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> RecallModel:
        return from_pretrained(name_or_dir)


def describe(cfg: Config) -> str:
    """One line: task, backbone pattern, memory."""
    mem = cfg.model.memory or "no memory"
    return (f"recall/{cfg.data.task} (train length {cfg.data.seq_len}), backbone {cfg.backbone.pattern!r} "
            f"x{cfg.backbone.n_layers} d{cfg.backbone.d_model}, {mem}")


def build_model(cfg: Config) -> RecallModel:
    """The model of ``cfg`` (backbone from ``cfg.backbone`` through ``common.build_backbone``)."""
    return RecallModel(cfg)


def example_batch(cfg: Config, batch_size: int = 2) -> dict[str, Tensor]:
    """Keyword arguments of a forward pass on a tiny input: ``tokens`` (B, <= 16)."""
    g = torch.Generator().manual_seed(0)
    n = max(1, min(cfg.data.seq_len, 16))
    return {"tokens": torch.randint(0, cfg.data.vocab_size, (batch_size, n), generator=g)}


def from_pretrained(name_or_dir: str | Path) -> RecallModel:
    """Load a checkpoint dir or hub name (``recall/<name>`` or ``<name>``)."""
    sd, meta, path = common.load_pretrained(name_or_dir, pipeline=DOMAIN)
    with common.checkpoint_errors(path):  # an edited config.json -> one UserError naming the dir
        cfg = common.config_from_dict(Config, meta["config"])
        return common.load_weights(build_model(cfg), sd, path, meta)


def with_memory(model: RecallModel, memory: str, memory_kwargs: dict[str, Any]) -> RecallModel:
    """A copy of ``model`` whose memory is replaced by ``memory`` (same backbone, head and,
    where parameter names match, the same read-head weights).

    Used for cache-policy ablations: e.g. the retrieval model's read head over a
    StreamingLLM sink + window cache instead of retrieved blocks. Raises if the new memory
    has parameters the old one cannot provide.
    """
    import copy

    cfg = copy.deepcopy(model.cfg)
    cfg.model.memory, cfg.model.memory_kwargs = memory, dict(memory_kwargs)
    new = build_model(cfg)
    sd = {k: v for k, v in model.state_dict().items() if k in new.state_dict()}
    missing, _ = new.load_state_dict(sd, strict=False)
    if missing:
        raise common.UserError(f"memory {memory!r} needs parameters the source model lacks: {missing[:4]}")
    return new.eval()
