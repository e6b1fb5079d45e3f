"""Genomics pipeline config: dataclasses, presets as functions (issue 13).

One pipeline, three tasks, chosen by ``model.task``:

- ``species``: a window of L bases -> one of 4 bacterial species (``splits.SPECIES``), split by
  strain (the test strains are never trained on). Train windows of ``data.train_len_min`` ..
  ``data.train_len`` bases from the training strains, reverse-complemented with probability
  ``data.rc_prob``; evaluated at every L in ``data.eval_lengths`` on ``splits.eval_windows``.
- ``lm``: next-nucleotide language model on the training strains; bits per base on the test
  strains at every context in ``data.lm_contexts`` on the same target bases
  (``splits.lm_eval_points``).
- ``cds``: per-base labels (0 non-coding, 1 plus-strand CDS, 2 minus-strand CDS) on
  M. tuberculosis H37Rv, trained on the first 70% of the genome and tested on the rest,
  with a bidirectional backbone.

Dotted CLI overrides address these fields (``--model.task lm --backbone.d_model 64``).
Presets: ``tiny`` / ``tiny-lm`` / ``tiny-cds`` (seconds, tests), ``release`` (species),
``release-lm``, ``release-cds`` (each about 15 minutes on one CPU thread).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from longstream.backbones.config import BackboneConfig

TASKS = ("species", "lm", "cds")


@dataclass
class DataConfig:
    root: str = ""  # the genomics data folder; "" = $LONGSTREAM_DATA/genomics
    train_len: int = 1024  # longest training window (bases)
    train_len_min: int = 0  # shortest training window; 0 = always train_len (a length per step)
    train_len_dist: str = "uniform"  # how a step's length is drawn in [train_len_min, train_len]: uniform | log
    rc_prob: float = 0.5  # probability a training window is reverse-complemented
    mutate_prob: float = 0.0  # species / cds training: each base replaced by a random base with this probability
    # species evaluation
    eval_lengths: list[int] = field(default_factory=lambda: [256, 1024, 4096, 16384, 65536])
    eval_per_species: int = 32  # windows per species and length (fewer where a test genome is short)
    headline_length: int = 16384  # `accuracy` is the accuracy at this L (the target)
    # language-model evaluation
    lm_contexts: list[int] = field(default_factory=lambda: [1024, 4096, 16384, 65536])
    lm_points: int = 16  # target positions per test strain (each scores its last `lm_target` bases)
    lm_target: int = 512
    lm_train_chunks: int = 1  # >1: each LM training window is this many train_len chunks, state carried
    # CDS segmentation
    cds_stride: int = 0  # prediction stride over the test region; 0 = train_len // 2
    cds_max_test: int = 0  # >0: score only the first N bases of the test region (tests)
    gene_level: bool = False  # gene calls + gene-level metrics through genes.py
    gene_model_weight: float = 0.25  # with gene_prior and a cds_frames model: the model's weight in the *_combined calls
    gene_prior: bool = True  # with gene_level: also the calls of coding_prior.CodingPrior fitted on the training region (*_prior)
    # evaluation: long windows run as a chunked forward with carried state
    eval_segment: int = 4096
    eval_batch: int = 8
    seed: int = 0  # evaluation sampling seed


@dataclass
class ModelConfig:
    task: str = "species"  # species | lm | cds
    pool: str = "mean"  # species pooling (common.POOLS; streamed evaluation supports mean / last)
    dropout: float = 0.0
    rc_conjoin: bool = False  # species: average the logits of a window and its reverse complement
    kmer_k: int = 0  # species: add a strand-symmetric k-mer composition branch to the head (kmer_branch.py); 0 = off
    kmer_orders: int = 1  # species with kmer_k: read orders kmer_k, kmer_k - 1, ... (this many) in the branch
    kmer_aux: float = 0.0  # species with kmer_k: weight of an extra cross-entropy on the k-mer branch's own logits
    orf_features: bool = False  # add the 12 open-reading-frame channels of orf_features.py to the embedding
    cds_frames: bool = False  # cds: 7 classes (non-coding, plus / minus strand x codon position), decoded frame by frame
    prior_features: bool = False  # cds: add the 8 gene-finder prior channels of prior_features.py (fitted on the training region)
    cds_class_weights: list[float] = field(default_factory=list)  # cds loss weights [non-coding, plus, minus]; [] = equal
    label_smoothing: float = 0.0  # species / cds training cross-entropy label smoothing
    init: str = ""  # start from a `longstream hub import` output dir (embedding + backbone weights)
    members: int = 1  # species: a deep ensemble of this many models (member i trained as seed train.seed + i), probabilities averaged


@dataclass
class TrainConfig:
    steps: int = 1000
    log_every: int = 10  # log the training loss every N optimizer steps (metrics.jsonl)
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    save_every: int = 100  # steps between resumable train states
    seed: int = 0
    threads: int = 1  # torch threads (0 = leave default)
    device: str = "cpu"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CONFIG_CLASS = Config


def member_config(cfg: Config, i: int) -> Config:
    """Member ``i`` of a ``model.members`` ensemble: the same config as one model (``members`` 1)
    with ``train.seed + i``, so member ``i`` is exactly the single run of that seed."""
    out = copy.deepcopy(cfg)
    out.model.members = 1
    out.train.seed = cfg.train.seed + i
    return out


def _tiny_train() -> TrainConfig:
    return TrainConfig(steps=6, batch_size=4, warmup_steps=2, save_every=3, log_every=1, lr=3e-3)


def tiny() -> Config:
    """Species, seconds on one CPU core: used by the contract tests."""
    return Config(
        data=DataConfig(train_len=128, eval_lengths=[128, 512], eval_per_species=2, headline_length=512,
                        eval_segment=256, eval_batch=4),
        model=ModelConfig(task="species"),
        backbone=BackboneConfig(d_model=16, n_layers=1, pattern="M"),
        train=_tiny_train(),
    )


def tiny_lm() -> Config:
    """The DNA language model, seconds on one CPU core (tests)."""
    return Config(
        data=DataConfig(train_len=128, lm_contexts=[128, 512], lm_points=1, lm_target=64, eval_segment=256,
                        eval_batch=4),
        model=ModelConfig(task="lm"),
        backbone=BackboneConfig(d_model=16, n_layers=1, pattern="M"),
        train=_tiny_train(),
    )


def tiny_cds() -> Config:
    """CDS segmentation with a bidirectional backbone, seconds on one CPU core (tests)."""
    return Config(
        data=DataConfig(train_len=256, cds_max_test=2048, rc_prob=0.5, eval_batch=4),
        model=ModelConfig(task="cds"),
        backbone=BackboneConfig(d_model=16, n_layers=1, pattern="M", bidirectional=True),
        train=_tiny_train(),
    )


def release() -> Config:
    """Species (shipped ``genomics/mamba-species``): a deep ensemble of 3 models (seeds 0, 1, 2; their
    probabilities averaged), each a 2-layer Mamba d=64 trained on windows of 256-16K bases drawn
    log-uniformly, with the 5-mer composition branch of ``kmer_branch.py`` in the head,
    deep-supervised (``kmer_aux`` 1: its own logits get a second cross-entropy); 1,000 steps of 8
    windows per member, ~10 min at one thread plus ~2-4 min of evaluation each, and the
    ensemble's evaluation (~6-12 min)."""
    return Config(
        data=DataConfig(train_len=16384, train_len_min=256, train_len_dist="log"),
        model=ModelConfig(task="species", kmer_k=5, kmer_aux=1.0, members=3),
        backbone=BackboneConfig(d_model=64, n_layers=2, pattern="M"),
        train=TrainConfig(steps=1000, batch_size=8, lr=3e-3, warmup_steps=50, save_every=100),
    )


def release_lm() -> Config:
    """DNA language model (shipped ``genomics/mamba-lm``): 2-layer Mamba d=64 on 4K windows, run as
    4 chunks of 1K with the state carried (truncated BPTT), so the model learns to use a long state."""
    return Config(
        data=DataConfig(train_len=1024, lm_train_chunks=4),
        model=ModelConfig(task="lm"),
        backbone=BackboneConfig(d_model=64, n_layers=2, pattern="M"),
        train=TrainConfig(steps=800, batch_size=8, lr=3e-3, warmup_steps=50, save_every=100),
    )


def release_cds() -> Config:
    """CDS segmentation (shipped ``genomics/bimamba-cds``): bidirectional 2-layer Mamba d=64 on 2K windows,
    with the 12 open-reading-frame channels of ``orf_features.py`` and the 8 gene-finder prior channels
    of ``prior_features.py`` (fitted on the training region) added to the embedding, predicting 7
    codon-position classes; gene calls and gene-level metrics through ``genes.py`` and
    ``coding_prior.py`` (~5-16 min training + ~1 min evaluation, one thread, depending on load)."""
    return Config(
        data=DataConfig(train_len=2048, rc_prob=0.5, gene_level=True),
        model=ModelConfig(task="cds", orf_features=True, prior_features=True, cds_frames=True),
        backbone=BackboneConfig(d_model=64, n_layers=2, pattern="M", bidirectional=True),
        train=TrainConfig(steps=800, batch_size=8, lr=3e-3, warmup_steps=50, save_every=100),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "tiny": tiny, "tiny-lm": tiny_lm, "tiny-cds": tiny_cds,
    "release": release, "release-lm": release_lm, "release-cds": release_cds,
}
