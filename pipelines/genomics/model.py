"""Genomics model: single-nucleotide embedding -> registry backbone -> task head.

- ``species``: ``common.SequenceClassifier`` (masked mean pooling + linear) -> (b, 4) logits;
  with ``model.members`` K > 1 a deep ensemble of K such models (member 0 is this module, the
  others live in ``extra``), whose logits are the log of the mean of the members' probabilities;
- ``lm``: a linear next-nucleotide head -> (b, l, V) logits (needs a causal backbone);
- ``cds``: ``common.TokenClassifier`` -> (b, l, 3) per-base logits (non-coding, plus-strand
  CDS, minus-strand CDS); meant for a bidirectional backbone (``--backbone.bidirectional true``).

Tokens are HyenaDNA's character ids (:class:`longstream.encoders.dna.DNATokenizer`, A=7 ..
N=11), embedded in ``VOCAB`` = 16 rows (12 padded to a multiple of 8, as HyenaDNA does), so
a converted HyenaDNA / longstream DNA LM embedding loads row for row (``--model.init``).

Long inputs (a 64 Kbp species window, a 64 Kbp LM context) run as a chunked forward with
carried state (:func:`species_logits`, :func:`lm_target_nll`): memory is bounded by the
segment length, and for a causal backbone the result equals one full forward pass.

Axis legend: b batch, l length, d model width, c classes, v vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longstream.encoders.dna import reverse_complement_ids
from longstream.pipelines import common

from . import DOMAIN, genes
from .config import TASKS, Config
from .kmer_branch import KmerComposition, KmerCounter, kmer_counts

VOCAB = 16  # DNATokenizer's 12 ids padded to a multiple of 8 (HyenaDNA's layout)
N_SPECIES = 4
N_CDS = 3
N_CDS_FRAMES = 7  # --model.cds_frames: non-coding, plus x codon position 0..2, minus x 0..2
TASK_TEXT = {
    "species": "bacterial species from a DNA window (4 species, held-out strains)",
    "lm": "next-nucleotide DNA language model (bits per base)",
    "cds": "per-base coding-sequence segmentation of M. tuberculosis (3 classes)",
}


class GenomicsModel(nn.Module):
    """``ids (b, l)`` int64 (+ ``mask (b, l)`` bool, True = valid) -> task logits (see the module docstring)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        task = cfg.model.task
        if task not in TASKS:
            raise common.UserError(f"unknown --model.task {task!r}; use one of {', '.join(TASKS)}")
        self.cfg, self.task = cfg, task
        d = cfg.backbone.d_model
        self.rc = bool(cfg.backbone.rc_equivariant)  # Caduceus-PS: RC embedding, RC-invariant / equivariant heads
        if self.rc:
            from longstream.encoders.dna_rc import RCEmbedding

            if d % 2:
                raise common.UserError(f"--backbone.rc_equivariant needs an even --backbone.d_model, got {d}")
            self.embed = RCEmbedding(VOCAB, d)
        else:
            self.embed = nn.Embedding(VOCAB, d)
        self.orf = None
        if cfg.model.orf_features:
            if self.rc:
                raise common.UserError("--model.orf_features does not combine with --backbone.rc_equivariant; "
                                       "drop one of them")
            from .orf_features import N_FEATURES

            self.orf = nn.Linear(N_FEATURES, d)
        self.prior = self.prior_proj = None
        if cfg.model.prior_features:
            if task != "cds" or self.rc:
                raise common.UserError("--model.prior_features is a cds option without --backbone.rc_equivariant; "
                                       "drop it (or use --model.task cds)")
            from .prior_features import N_FEATURES as N_PRIOR
            from .prior_features import PriorFeatures

            self.prior = PriorFeatures()
            self.prior_proj = nn.Linear(N_PRIOR, d)
        self.backbone = common.build_backbone(cfg.backbone)  # bad --backbone.* -> UserError
        if task == "lm" and not getattr(self.backbone, "is_causal", False):
            raise common.UserError("--model.task lm needs a causal backbone; drop --backbone.bidirectional "
                                   "(or pick a causal --backbone.pattern such as M or H)")
        self.kmer = None
        if cfg.model.kmer_aux < 0 or (cfg.model.kmer_aux and not (task == "species" and cfg.model.kmer_k)):
            raise common.UserError(f"--model.kmer_aux {cfg.model.kmer_aux} needs a species model with "
                                   "--model.kmer_k K and a weight >= 0; set --model.kmer_k 4 or drop --model.kmer_aux")
        if task == "species":
            self.head = common.SequenceClassifier(d // 2 if self.rc else d, N_SPECIES, pool=cfg.model.pool,
                                                  dropout=cfg.model.dropout)
            if cfg.model.kmer_k:
                self.kmer = KmerComposition(cfg.model.kmer_k, N_SPECIES, dropout=cfg.model.dropout,
                                            orders=cfg.model.kmer_orders)
        elif cfg.model.kmer_k:
            raise common.UserError(f"--model.kmer_k is a species-head option; drop it for --model.task {task}")
        elif task == "lm":
            if self.rc:
                from longstream.encoders.dna_rc import RCLMHead

                self.head = RCLMHead(self.embed)
            else:
                self.head = nn.Linear(d, VOCAB)
        elif self.rc:
            if cfg.model.cds_frames:
                raise common.UserError("--model.cds_frames does not combine with --backbone.rc_equivariant; drop one")
            self.head = RCStrandHead(d)
        else:
            self.head = common.TokenClassifier(d, N_CDS_FRAMES if cfg.model.cds_frames else N_CDS,
                                               dropout=cfg.model.dropout)
        # --model.members K: this module is member 0, ``extra`` holds members 1 .. K-1
        self.extra: nn.ModuleList | None = None
        k = cfg.model.members
        if k < 1 or (k > 1 and task != "species"):
            raise common.UserError(f"--model.members {k}: use 1, or K >= 2 with --model.task species "
                                   "(an ensemble of K species models)")
        if k > 1:
            from .config import member_config

            self.extra = nn.ModuleList(GenomicsModel(member_config(cfg, i)) for i in range(1, k))

    def members(self) -> list[GenomicsModel]:
        """The ensemble's models (``[self]`` for a single model); each member has ``extra`` None."""
        return [self] if self.extra is None else [self, *self.extra]

    def embed_ids(self, ids: Tensor) -> Tensor:
        """Input vectors ``(b, l, d)``: the base embedding (+ the ORF channels with ``model.orf_features``)."""
        x = self.embed(ids)
        if self.orf is not None:
            from .orf_features import orf_features

            x = x + self.orf(orf_features(ids).to(x.dtype))
        if self.prior is not None:
            x = x + self.prior_proj(self.prior(ids).to(x.dtype))
        return x

    def fit_prior(self, data) -> None:
        """With ``model.prior_features``: fit the gene-finder prior on ``data`` (a ``CdsData``)'s
        training region ``[0, split)`` and its single-part CDS, and load it into the buffers."""
        if self.prior is None:
            return
        from .coding_prior import CodingPrior

        self.prior.load_prior(CodingPrior.fit_region(data.record, data.split))

    def features(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """Backbone outputs ``(b, l, d)``."""
        h, _ = self.backbone(self.embed_ids(ids), mask=mask)
        return h

    def forward(self, ids: Tensor, mask: Tensor | None = None, state: Any = None,
                return_state: bool = False, kmer_part: bool = False) -> Tensor | tuple[Tensor, Any]:
        """Logits; with ``kmer_part`` (species with a k-mer branch) also the branch's own logits
        ``(b, 4)``, for the auxiliary loss of ``model.kmer_aux``. An ensemble (``model.members``)
        returns :func:`ensemble_logits` of its members (it is trained member by member)."""
        if self.extra is not None:
            if return_state or kmer_part:
                raise ValueError("an ensemble has no single state or k-mer part: call a member (model.members())")
            return ensemble_logits([m._logits(ids, mask) for m in self.members()])
        return self._logits(ids, mask, state, return_state, kmer_part)

    def _logits(self, ids: Tensor, mask: Tensor | None = None, state: Any = None,
                return_state: bool = False, kmer_part: bool = False) -> Tensor | tuple[Tensor, Any]:
        if return_state:  # continue a stream (truncated back-propagation through time, causal backbones)
            h, state = self.backbone(self.embed_ids(ids), state, mask=mask)
            return self.head(h) if self.task == "lm" else self.head(h, mask), state
        h = self.features(ids, mask)  # (b, l, d)
        if self.task == "species":
            logits = self.head(rc_symmetric(h) if self.rc else h, mask)  # (b, 4)
            if self.kmer is not None:
                composition = self.kmer(kmer_counts(ids, self.kmer.k, mask))
                logits = logits + composition
                if kmer_part:
                    return logits, composition
            return logits
        if self.task == "lm":
            return self.head(h)  # (b, l, v)
        return self.head(h, mask)  # (b, l, 3)

    def classify_pooled(self, pooled: Tensor, kmer_counts: Tensor | None = None) -> Tensor:
        """Species logits from a pooled ``(b, d)`` vector (the streamed path) and, with ``model.kmer_k``,
        the window's k-mer counts ``(b, 4**k)``."""
        if self.rc:
            pooled = rc_symmetric(pooled)
        logits = self.head.mlp(self.head.dropout(pooled))
        if self.kmer is not None:
            if kmer_counts is None:
                raise ValueError("this species model has a k-mer branch: pass the window's kmer_counts")
            logits = logits + self.kmer(kmer_counts)
        return logits

    def save_pretrained(self, out_dir: str | Path, **kw: Any) -> Path:
        return common.save_pretrained(self, self.cfg, out_dir, pipeline=DOMAIN, backbone=self.cfg.backbone,
                                      task=TASK_TEXT[self.task], **kw)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> GenomicsModel:
        return from_pretrained(name_or_dir)


def ensemble_logits(logits: list[Tensor]) -> Tensor:
    """Logits whose softmax is the mean of the members' probabilities: ``log mean_i softmax(l_i)``."""
    if len(logits) == 1:
        return logits[0]
    logp = torch.stack([F.log_softmax(x.float(), -1) for x in logits])
    return torch.logsumexp(logp, 0) - math.log(len(logits))


def rc_symmetric(h: Tensor) -> Tensor:
    """``(..., d) -> (..., d/2)``: the mean of the two RC halves, ``(h[:w] + reverse(h[w:])) / 2``.

    For an RC-equivariant stream the result at position t of the RC input equals the result at
    position l - 1 - t of the input, so any pooling over positions is RC-invariant.
    """
    w = h.shape[-1] // 2
    return (h[..., :w] + h[..., w:].flip(-1)) / 2


class RCStrandHead(nn.Module):
    """RC-equivariant per-base strand head: ``(b, l, d) -> (b, l, 3)`` [non-coding, plus, minus].

    One linear map ``g: w -> (n, same, opposite)`` reads both halves: non-coding =
    ``g_n(h1) + g_n(h2)``, plus = ``g_same(h1) + g_opp(h2)``, minus = ``g_opp(h1) + g_same(h2)``
    with ``h2`` the channel-reversed second half. Reverse complementing the input reverses the
    positions and swaps plus and minus, as the labels do.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.g = nn.Linear(d_model // 2, 3)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        w = h.shape[-1] // 2
        a, b = self.g(h[..., :w]), self.g(h[..., w:].flip(-1))  # (b, l, 3) each
        return torch.stack([a[..., 0] + b[..., 0], a[..., 1] + b[..., 2], a[..., 2] + b[..., 1]], -1)


def build_model(cfg: Config) -> GenomicsModel:
    """The model of ``cfg`` (random weights)."""
    return GenomicsModel(cfg)


def example_batch(cfg: Config, batch_size: int = 2) -> dict[str, Tensor]:
    """Keyword arguments for a forward pass on a tiny input: ``build_model(cfg)(**example_batch(cfg))``."""
    g = torch.Generator().manual_seed(0)
    return {"ids": torch.randint(7, 11, (batch_size, 16), generator=g)}


def from_pretrained(name_or_dir: str | Path) -> GenomicsModel:
    """Load a checkpoint dir or hub name (``genomics/<name>`` or ``<name>``)."""
    sd, meta, path = common.load_pretrained(name_or_dir, pipeline=DOMAIN)
    with common.checkpoint_errors(path):  # an edited config.json -> one UserError naming the dir
        cfg = common.config_from_dict(Config, meta["config"])
        return common.load_weights(build_model(cfg), sd, path, meta)


# ---------------------------------------------------------------------------- --model.init
def imported_backbone(init_dir: str):
    """The ``ImportedBackbone`` (``pipelines/hf_import.py``) of a ``longstream hub import`` output dir.

    Supported kinds: ``lm`` (Mamba / Mamba-2 / Caduceus-Ph language models) and ``rc_lm``
    (Caduceus-PS). A HyenaDNA import (``hyenadna``) has LayerNorm + GELU-MLP blocks that the
    registry stack does not describe, so it cannot initialise this pipeline's backbone yet.
    """
    from longstream.pipelines.hf_import import load_imported_backbone

    imp = load_imported_backbone(init_dir)
    if imp.kind not in ("lm", "rc_lm"):
        raise common.UserError(f"--model.init {init_dir}: a {imp.kind} checkpoint cannot initialise this "
                               "pipeline's backbone yet; import a Mamba or Caduceus model instead")
    return imp


def init_from_imported(model: GenomicsModel, imp, source: str) -> list[str]:
    """Copy an imported LM's backbone (and its DNA embedding) into ``model``; returns the keys loaded."""
    own = model.state_dict()
    new = {f"backbone.{k}": v for k, v in imp.backbone_state.items()}
    bad = [k for k, v in new.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise common.UserError(f"--model.init {source}: {len(bad)} backbone weights (e.g. {bad[0]}) do not fit "
                               "this model; keep the imported backbone's settings")
    emb = imp.embedding_state.get("weight")
    w = own["embed.weight"]
    if emb is not None and emb.shape[1] == w.shape[1] and emb.shape[0] >= 12:  # HyenaDNA's character ids
        w = w.clone()
        n = min(emb.shape[0], w.shape[0])
        w[:n] = emb[:n]
        new["embed.weight"] = w
    model.load_state_dict(new, strict=False)
    return sorted(new)


# ---------------------------------------------------------------------------- long inputs
def _causal(model: GenomicsModel) -> bool:
    return bool(getattr(model.backbone, "is_causal", False))


@torch.no_grad()
def species_logits(model: GenomicsModel, ids: Tensor, *, segment: int, device: str | torch.device = "cpu") -> Tensor:
    """Species logits ``(b, 4)`` of windows ``ids (b, l)`` of any length, with bounded memory.

    A causal backbone runs as a chunked forward with carried state and an online masked
    mean over the outputs (equal to one full forward); a bidirectional backbone sees each
    chunk on its own and the chunk means are averaged by length. With ``model.rc_conjoin`` the
    logits of the window and of its reverse complement are averaged; an ensemble
    (``model.members``) averages its members' probabilities (:func:`ensemble_logits`).
    """
    model.eval()
    ids = ids.to(device)
    return ensemble_logits([_member_logits(m, ids, segment) for m in model.members()])


def _member_logits(model: GenomicsModel, ids: Tensor, segment: int) -> Tensor:
    if model.cfg.model.rc_conjoin:  # post-hoc conjoining (Caduceus): mean logits of both strands
        one = _species_logits(model, ids, segment)
        return (one + _species_logits(model, reverse_complement_ids(ids), segment)) / 2
    return _species_logits(model, ids, segment)


def _species_logits(model: GenomicsModel, ids: Tensor, segment: int) -> Tensor:
    if model.cfg.model.pool not in ("mean", "last") or ids.shape[1] <= segment:
        return model._logits(ids)
    counts = None
    if model.kmer is not None:
        counter = KmerCounter(model.kmer.k)
        for s in range(0, ids.shape[1], segment):
            counter.add(ids[:, s : s + segment])
        counts = counter.counts
    if _causal(model):
        res = common.stream_evaluate(model.backbone, ids, segment_len=segment, embed=model.embed,
                                     keep_outputs=False, pool=model.cfg.model.pool, desc="species")
        return model.classify_pooled(res.pooled, counts)
    total = None
    for s in range(0, ids.shape[1], segment):
        h = model.features(ids[:, s : s + segment]).sum(1)  # (b, d)
        total = h if total is None else total + h
    return model.classify_pooled(total / ids.shape[1], counts)


@torch.no_grad()
def lm_target_nll(model: GenomicsModel, ids: Tensor, target: int, *, segment: int) -> Tensor:
    """Per-base negative log-likelihood (nats) ``(b, target)`` of the last ``target`` bases of ``ids (b, C)``.

    The context is the whole window: bases ``C - target .. C - 1`` are predicted from
    everything before them in the window (chunked forward with carried state).
    """
    model.eval()
    C = ids.shape[1]
    x, first = ids[:, :-1], C - 1 - target  # outputs at positions >= first predict the targets
    parts = []
    for seg in common.iter_stream(model.backbone, x, segment_len=segment, embed=model.embed, desc="lm"):
        lo = max(first - seg.start, 0)
        if lo < seg.output.shape[1]:
            parts.append(model.head(seg.output[:, lo:]))  # (b, n, v)
    logits = torch.cat(parts, 1).float()  # (b, target, v)
    return F.cross_entropy(logits.transpose(1, 2), ids[:, -target:], reduction="none")


def call_genes(model: GenomicsModel, probs: Any, seq: Any) -> list:
    """The pipeline's gene calls on ``seq`` (a base string or ``genes`` base codes) from the model's
    numpy ``probs`` (``(L, 3)``, or ``(L, 7)`` for a ``cds_frames`` model): with a gene-finder prior in
    the checkpoint (``--model.prior_features``), the prior's ORF decoding (``CodingPrior.decode``:
    it scored best on the validation split, README); otherwise ``genes.decode_model_track``."""
    prior = carried_prior(model)
    if prior is not None:
        return prior.decode(seq)
    return genes.decode_model_track(probs, seq)


def carried_prior(model: GenomicsModel):
    """The gene-finder prior a ``--model.prior_features`` checkpoint carries (``CodingPrior``), or None."""
    from .coding_prior import CodingPrior

    if model.prior is None or not bool(model.prior.llr.abs().sum() > 0):
        return None
    return CodingPrior.from_features(model.prior)


@torch.no_grad()
def cds_probs(model: GenomicsModel, ids: Tensor, *, window: int, stride: int, batch: int = 8,
              keep_frames: bool = False) -> Tensor:
    """Per-base class probabilities ``(L, 3)`` of one sequence ``ids (L,)`` from overlapping windows.

    Windows of ``window`` bases every ``stride`` bases (the last one flush with the end);
    each base averages the windows covering it, weighted towards the window centre
    (a triangle), so edge effects of a window count little. A ``model.cds_frames`` model's 7
    codon-position classes are summed per strand, unless ``keep_frames`` (then ``(L, 7)``).
    """
    model.eval()
    L = ids.shape[0]
    window = min(window, L)
    starts = list(range(0, L - window + 1, max(stride, 1)))
    if starts[-1] != L - window:
        starts.append(L - window)
    pos = torch.arange(window, dtype=torch.float32)
    w = torch.minimum(pos + 1, window - pos)[:, None]  # (window, 1)
    acc = None
    norm = torch.zeros(L, 1)
    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        xb = torch.stack([ids[s : s + window] for s in chunk])  # (b, window)
        p = torch.softmax(model(xb).float(), -1)  # (b, window, 3 or 7 classes)
        if acc is None:
            acc = torch.zeros(L, p.shape[-1])
        for s, ps in zip(chunk, p):
            acc[s : s + window] += ps * w
            norm[s : s + window] += w
    out = acc / norm
    return out if keep_frames else torch.from_numpy(genes.collapse_frames(out.numpy()))
