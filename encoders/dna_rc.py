"""Reverse-complement (RC) equivariant DNA embedding, LM head and RC-invariant pooling.

The RCPS embedding and LM head of Caduceus (Schiff et al., "Caduceus: Bi-Directional
Equivariant Long-Range DNA Sequence Modeling", 2024), after Zhou et al., "Towards a
Better Understanding of Reverse-Complement Equivariance for Deep Learning Models in
Regulatory Genomics" (2022). One table ``E`` (v, w) embeds a token into ``d = 2w`` channels:
the first half is ``E[x_t]``, the second half is ``E[complement(x_t)]`` with its channels
reversed. Then reverse complementing the ids (reverse the order, complement each base)
maps the embedding to ``h.flip(length, channels)`` — the hidden-stream RC that the
RC-equivariant backbone (``BackboneConfig.rc_equivariant``, backbones/caduceus.py)
commutes with. The LM head, tied to ``E``, reads the first half with ``E`` and the
channel-reversed second half with ``E[complement]``, so the logits of the RC input are the
logits of the input reversed in position and complemented in vocabulary.
:func:`rc_pool` averages (or max-pools) both halves into one RC-invariant vector for
sequence classification.

Token ids are those of HyenaDNA's character tokenizer (``encoders/dna.py``): specials 0-6,
A=7 C=8 G=9 T=10 N=11; :func:`dna_complement` gives the id permutation (A<->T, C<->G,
everything else fixed, padding rows included).

Axis legend: b batch, l length, v vocabulary rows, d hidden width, w = d / 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dna import COMPLEMENT_IDS

__all__ = ["RCEmbedding", "RCLMHead", "RCLanguageModel", "dna_complement", "rc_hidden", "rc_pool"]

def dna_complement(vocab_rows: int = 16) -> list[int]:
    """The complement of each token id in ``range(vocab_rows)``: ``encoders/dna.py``'s
    ``COMPLEMENT_IDS`` (A<->T, C<->G, N and specials fixed), padding rows mapped to themselves."""
    base = [int(c) for c in COMPLEMENT_IDS]
    if vocab_rows < len(base):
        raise ValueError(f"the DNA vocabulary has {len(base)} ids; an embedding needs at least that many rows, got {vocab_rows}")
    return base + list(range(len(base), vocab_rows))


def _check_complement(complement: Sequence[int], vocab_rows: int) -> Tensor:
    comp = torch.as_tensor(list(complement), dtype=torch.long)
    if comp.shape != (vocab_rows,) or sorted(comp.tolist()) != list(range(vocab_rows)):
        raise ValueError(f"complement must be a permutation of range({vocab_rows}), got {list(complement)[:20]}")
    if not torch.equal(comp[comp], torch.arange(vocab_rows)):
        raise ValueError("complement must be an involution (complement of the complement = the id)")
    return comp


def rc_hidden(h: Tensor) -> Tensor:
    """The RC of an (unpadded) hidden stream h (b, l, d): ``h.flip(length, channels)``."""
    return h.flip(-2, -1)


class RCEmbedding(nn.Module):
    """ids (b, l) -> (b, l, d): ``[E[x], reverse_channels(E[complement(x)])]`` from one (v, d/2) table."""

    def __init__(self, vocab_rows: int, d_model: int, complement: Sequence[int] | None = None) -> None:
        super().__init__()
        if d_model % 2:
            raise ValueError(f"an RC embedding needs an even width (two halves), got d_model={d_model}")
        self.d_model = d_model
        self.weight = nn.Parameter(torch.randn(vocab_rows, d_model // 2) * 0.02)  # (v, w)
        comp = _check_complement(complement if complement is not None else dna_complement(vocab_rows), vocab_rows)
        self.register_buffer("complement", comp, persistent=False)  # recorded in the model config

    def forward(self, ids: Tensor) -> Tensor:
        """Position-wise, so right padding needs no care: the flip in length of the RC strand
        and the flip back cancel."""
        ids = ids.long()
        fwd = F.embedding(ids, self.weight)  # (b, l, w)
        rc = F.embedding(self.complement[ids], self.weight).flip(-1)  # (b, l, w)
        return torch.cat([fwd, rc], dim=-1)


class RCLMHead(nn.Module):
    """hidden (b, l, d) -> logits (b, l, v), tied to an :class:`RCEmbedding`'s table.

    ``logits = h[:w] @ E.T + reverse_channels(h[w:]) @ E[complement].T``.
    """

    def __init__(self, embedding: RCEmbedding) -> None:
        super().__init__()
        # not a registered submodule: the head owns no parameters and adds no state-dict keys
        object.__setattr__(self, "embedding", embedding)

    def forward(self, h: Tensor) -> Tensor:
        w = h.shape[-1] // 2
        e = self.embedding.weight.to(h.dtype)
        return F.linear(h[..., :w], e) + F.linear(h[..., w:].flip(-1), e[self.embedding.complement])


def rc_pool(h: Tensor, mask: Tensor | None = None, how: str = "mean") -> Tensor:
    """RC-invariant pooling: (b, l, d) -> (b, d/2), ``(pool(h[:w]) + pool(reverse_channels(h[w:]))) / 2``.

    ``mask`` (b, l) marks the valid (right-padded) positions; ``how`` is "mean" or "max".
    For an RC-equivariant ``h`` the result is the same for a sequence and its reverse
    complement (pooling over positions forgets their order).
    """
    if how not in ("mean", "max"):
        raise ValueError(f"rc_pool how must be 'mean' or 'max', got {how!r}")
    w = h.shape[-1] // 2
    both = torch.stack([h[..., :w], h[..., w:].flip(-1)], dim=0)  # (2, b, l, w)
    if mask is None:
        pooled = both.mean(2) if how == "mean" else both.amax(2)
    else:
        m = mask[None, :, :, None].to(torch.bool)  # (1, b, l, 1)
        if how == "mean":
            pooled = (both * m).sum(2) / m.sum(2).clamp_min(1)
        else:
            pooled = both.masked_fill(~m, float("-inf")).amax(2)
    return pooled.mean(0)  # (b, w)


class RCLanguageModel(nn.Module):
    """:class:`RCEmbedding` -> an RC-equivariant backbone ((b, l, d) -> (b, l, d)) -> :class:`RCLMHead`.

    ``backbone`` is any module with that signature returning ``(hidden, state)``, e.g.
    ``create_backbone("caduceus_ps")``. ``forward(ids, mask=)`` -> ``(logits (b, l, v), None)``;
    :meth:`hidden` gives the backbone output (for pooling or per-base heads).
    """

    def __init__(self, backbone: nn.Module, vocab_rows: int = 16, complement: Sequence[int] | None = None) -> None:
        super().__init__()
        d = int(backbone.d_model)  # type: ignore[arg-type]
        self.vocab_size = vocab_rows
        self.embedding = RCEmbedding(vocab_rows, d, complement)
        self.backbone = backbone
        self.lm_head = RCLMHead(self.embedding)

    def hidden(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """ids (b, l) -> backbone output (b, l, d)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be (batch, length), got shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")
        h, _ = self.backbone(self.embedding(ids), None, mask=mask)
        return h

    def forward(self, ids: Tensor, state: None = None, *, mask: Tensor | None = None) -> tuple[Tensor, None]:
        if state is not None:
            raise ValueError("an RC-equivariant model sees the whole sequence; it takes no state")
        return self.lm_head(self.hidden(ids, mask)), None

    def logits(self, ids: Tensor) -> Tensor:
        """Logits (b, l, v) in float32."""
        return self(ids)[0].float()
