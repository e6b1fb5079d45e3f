"""Per-base channels of the supervised gene-finder prior (:mod:`.coding_prior`) for the ``cds`` model.

:class:`PriorFeatures` holds a fitted :class:`.coding_prior.CodingPrior` as buffers (so a
checkpoint carries it and runs on any sequence) and turns a window of ids into 8 channels,
each strand read on its own 5'->3' axis and flipped back to the forward axis:

- 3 per strand: the coding log-likelihood ratio summed over the ``2 * half_window + 1`` bases
  around base t, in the reading frame that puts t at codon position c (c = 0, 1, 2) — a
  window-local version of the ORF score the decoder sums, shift-invariant (channel c means
  the same thing wherever the window starts), divided by ``_LLR_SCALE``;
- 1 per strand: the start-site log-odds at each start codon (0 elsewhere), divided by
  ``_START_SCALE``.

``(b, l) int64 ids -> (b, l, 8) float``; ``N`` and special tokens break k-mers (score 0).
Call :meth:`PriorFeatures.load_prior` before use (training fits the prior on the training
region: ``train.py``); an unloaded module returns zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

N_FEATURES = 8
_LLR_SCALE = 20.0  # a coding window of ~120 bases sums to ~ +10..+40 nats
_START_SCALE = 4.0
_START_CODONS = ((0, 3, 2), (2, 3, 2), (3, 3, 2))  # ATG GTG TTG with A0 C1 G2 T3


class PriorFeatures(nn.Module):
    """The prior's tables as buffers; ``forward(ids) -> (b, l, 8)`` (module docstring)."""

    def __init__(self, order: int = 5, half_window: int = 60, start_upstream: int = 20,
                 start_downstream: int = 9) -> None:
        super().__init__()
        self.order, self.half_window = int(order), int(half_window)
        self.up, self.down = int(start_upstream), int(start_downstream)
        self.register_buffer("llr", torch.zeros(3, 4 ** (self.order + 1)))
        self.register_buffer("start_w", torch.zeros(4, self.up + 3 + self.down))
        self.register_buffer("start_b", torch.zeros(()))

    @torch.no_grad()
    def load_prior(self, prior) -> None:
        """Copy a fitted :class:`.coding_prior.CodingPrior` (same order / start window) into the buffers."""
        if (prior.order, prior.up, prior.down) != (self.order, self.up, self.down):
            raise ValueError(f"prior (order {prior.order}, start window -{prior.up}/+{prior.down}) does not match "
                             f"the features (order {self.order}, -{self.up}/+{self.down})")
        self.llr.copy_(torch.as_tensor(prior.llr, dtype=torch.float32))
        coef = torch.as_tensor(prior.start_coef.reshape(-1, 4), dtype=torch.float32)  # (positions, 4)
        self.start_w.copy_(coef.T)
        self.start_b.fill_(prior.start_intercept - prior.start_prior)

    def _strand(self, base: Tensor, ok: Tensor) -> Tensor:
        """Channels ``(b, 4, l)`` of one strand, ``base (b, l)`` codes 0..3 on that strand's 5'->3' axis."""
        b, n = base.shape
        k = self.order
        v = torch.zeros(b, n, dtype=torch.long, device=base.device)
        valid = torch.ones(b, n, dtype=torch.bool, device=base.device)
        for j in range(k + 1):  # k-mer ending at i: bases i-k .. i
            sh = k - j
            v = v * 4 + F.pad(base, (sh, 0))[:, :n]
            valid &= F.pad(ok, (sh, 0), value=False)[:, :n]
        v = torch.where(valid, v, torch.zeros_like(v))
        per_phase = self.llr[:, v] * valid.unsqueeze(0)  # (3, b, l): LLR if base i sits at codon position c
        pos = torch.arange(n, device=base.device)
        w = self.half_window
        sums = []
        for f in range(3):  # frame f: codon position (i - f) % 3 at base i
            track = per_phase.gather(0, ((pos - f) % 3).expand(1, b, n)).squeeze(0)  # (b, l)
            cum = F.pad(track.cumsum(1), (1, 0))
            hi = (pos + w + 1).clamp(max=n)
            lo = (pos - w).clamp(min=0)
            sums.append(cum[:, hi] - cum[:, lo])
        frames = torch.stack(sums, 1)  # (b, 3, l) window sums per absolute frame
        # base i at codon position c lies in frame (i - c) % 3
        idx = torch.stack([(pos - c) % 3 for c in range(3)], 0).expand(b, 3, n)
        coding = frames.gather(1, idx) / _LLR_SCALE
        # start-site log-odds at start codons: one-hot bases (b, 4, l) correlated with the weights
        oh = F.one_hot(base, 4).to(self.start_w.dtype) * ok.unsqueeze(-1)
        score = F.conv1d(F.pad(oh.transpose(1, 2), (self.up, self.down + 2)), self.start_w[None]).squeeze(1)
        is_start = torch.zeros_like(ok)
        nxt1, nxt2 = F.pad(base, (0, 1))[:, 1:], F.pad(base, (0, 2))[:, 2:]
        ok3 = ok & F.pad(ok, (0, 1), value=False)[:, 1:] & F.pad(ok, (0, 2), value=False)[:, 2:]
        for a, c1, c2 in _START_CODONS:
            is_start |= (base == a) & (nxt1 == c1) & (nxt2 == c2)
        start = torch.where(is_start & ok3, (score[:, :n] + self.start_b) / _START_SCALE, torch.zeros_like(score[:, :n]))
        return torch.cat([coding, start.unsqueeze(1)], 1)

    def forward(self, ids: Tensor) -> Tensor:
        base = ids.long() - 7  # A0 C1 G2 T3, N 4, specials < 0 (the tokenizer's layout)
        ok = (base >= 0) & (base <= 3)
        base = base.clamp(0, 3)
        plus = self._strand(base, ok)
        minus = self._strand((3 - base).flip(1), ok.flip(1)).flip(2)
        return torch.cat([plus[:, :3], minus[:, :3], plus[:, 3:], minus[:, 3:]], 1).transpose(1, 2)
