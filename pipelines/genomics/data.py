"""Genomics data: token arrays of the real genomes and seeded training batches.

Genomes are read once per process (``functools.lru_cache``) through the splits of
:mod:`.splits` (species genomes, the M. tuberculosis CDS labels) and tokenized with
:class:`longstream.encoders.dna.DNATokenizer` into ``uint8`` id arrays (A=7 C=8 G=9 T=10
N=11). Every training batch is a function of ``(seed, step)`` only (a fresh
``numpy.random.Generator`` per step), so a resumed run sees the same batches and DDP
ranks agree without communicating.

Files: ``$LONGSTREAM_DATA/genomics`` (``--data.root`` overrides it), registered in
``longstream.pipelines.datasets`` as ``bacteria-genomes`` and ``mtb-h37rv``.

Axis legend: b batch, l window length.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from longstream.encoders.dna import reverse_complement_ids
from longstream.pipelines.common import UserError
from longstream.pipelines.datasets import dataset_path

from .config import Config, DataConfig

N_ID = 11  # the tokenizer's id of N


def genomics_root(dc: DataConfig) -> Path:
    """The genomics data folder (holding ``bacteria/`` and ``mtb/``)."""
    if dc.root:
        p = Path(dc.root)
        if not p.is_dir():
            raise UserError(f"--data.root {dc.root}: no such folder; give the folder holding bacteria/ and mtb/")
        return p
    return dataset_path("bacteria-genomes").parent


def _tokenizer():
    from longstream.encoders.dna import DNATokenizer

    return DNATokenizer()


def encode(seq: str) -> np.ndarray:
    """A DNA string -> ``uint8`` ids (soft-masked bases get the upper-case id)."""
    return _tokenizer().encode(seq).astype(np.uint8)


# ---------------------------------------------------------------------------- species
@dataclass
class SpeciesData:
    """Tokenized genomes: ``genomes[species][strain]`` = list of chromosome id arrays."""

    species: tuple[str, ...]
    genomes: dict[str, dict[str, list[np.ndarray]]]
    train: list[list[np.ndarray]]  # per species index: the training strains' chromosomes
    test_strains: dict[str, str]
    raw: dict[str, dict[str, list[str]]]  # the upper-cased sequences (for splits.eval_windows)

    def fingerprint(self) -> str:
        from longstream.pipelines.common import data_fingerprint

        return data_fingerprint(*[c for chroms in self.train for c in chroms])


@functools.lru_cache(maxsize=2)
def load_species(root: str) -> SpeciesData:
    """Every genome under ``root/bacteria`` (cached per process)."""
    from . import splits

    raw = splits.species_genomes(Path(root) / "bacteria")
    genomes = {sp: {st: [encode(c) for c in chroms] for st, chroms in strains.items()} for sp, strains in raw.items()}
    train = []
    for sp in splits.SPECIES:
        chroms = [c for st, cs in genomes[sp].items() if st != splits.TEST_STRAINS[sp] for c in cs]
        if not chroms:
            raise UserError(f"{root}/bacteria/{sp}: no training strain (only the held-out {splits.TEST_STRAINS[sp]})")
        train.append(chroms)
    return SpeciesData(tuple(splits.SPECIES), genomes, train, dict(splits.TEST_STRAINS), raw)


def _rng(seed: int, step: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(step), int(salt)])


def step_length(dc: DataConfig, seed: int, step: int) -> int:
    """The training window length of ``step`` (one length per step, a multiple of 64 when sampled)."""
    if dc.train_len_min <= 0 or dc.train_len_min >= dc.train_len:
        return dc.train_len
    if dc.train_len_dist not in ("uniform", "log"):
        raise UserError(f"--data.train_len_dist {dc.train_len_dist!r}: use uniform or log")
    r = _rng(seed, step, 1)
    lo, hi = dc.train_len_min // 64, dc.train_len // 64
    if dc.train_len_dist == "log":  # log-uniform: as many steps at 1-2K as at 8-16K
        return int(np.clip(np.rint(np.exp(r.uniform(np.log(lo), np.log(hi)))), lo, hi)) * 64
    return int(r.integers(lo, hi + 1)) * 64


def _window(chroms: list[np.ndarray], r: np.random.Generator, length: int) -> np.ndarray:
    """A random window of ``length`` bases from one of ``chroms`` (weighted by length)."""
    sizes = np.array([max(len(c) - length, 0) + 1 for c in chroms], dtype=np.float64)
    c = chroms[int(r.choice(len(chroms), p=sizes / sizes.sum()))]
    if len(c) < length:  # a chromosome shorter than the window: pad with N
        return np.concatenate([c, np.full(length - len(c), N_ID, np.uint8)])
    s = int(r.integers(0, len(c) - length + 1))
    return c[s : s + length]


def mutate(w: np.ndarray, r: np.random.Generator, prob: float) -> np.ndarray:
    """Random base substitution (augmentation): each A/C/G/T base becomes a uniformly drawn
    base (possibly itself) with probability ``prob``; N and specials are kept."""
    if prob <= 0:
        return w
    hit = (r.random(len(w)) < prob) & (w >= 7) & (w <= 10)
    out = w.copy()
    out[hit] = r.integers(7, 11, int(hit.sum()), dtype=np.uint8) if hit.any() else out[hit]
    return out


def species_batch(data: SpeciesData, cfg: Config, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (b, l) int64, species (b,) int64)``: class-balanced windows of the training strains."""
    tc, dc = cfg.train, cfg.data
    L = step_length(dc, tc.seed, step)
    r = _rng(tc.seed, step)
    ys = r.integers(0, len(data.species), tc.batch_size)
    rows = []
    for y in ys:
        w = _window(data.train[int(y)], r, L)
        if r.random() < dc.rc_prob:
            w = reverse_complement_ids(w)
        rows.append(np.ascontiguousarray(mutate(w, r, dc.mutate_prob)))
    return torch.from_numpy(np.stack(rows).astype(np.int64)), torch.from_numpy(ys.astype(np.int64))


def lm_batch(data: SpeciesData, cfg: Config, step: int) -> torch.Tensor:
    """``ids (b, k l + 1)`` int64 (k = ``data.lm_train_chunks``): windows of the training genomes
    (species uniform), for next-base prediction."""
    tc, dc = cfg.train, cfg.data
    L = step_length(dc, tc.seed, step) * max(1, dc.lm_train_chunks) + 1
    r = _rng(tc.seed, step)
    rows = []
    for y in r.integers(0, len(data.species), tc.batch_size):
        w = _window(data.train[int(y)], r, L)
        if r.random() < dc.rc_prob:
            w = reverse_complement_ids(w)
        rows.append(np.ascontiguousarray(w))
    return torch.from_numpy(np.stack(rows).astype(np.int64))


# ---------------------------------------------------------------------------- CDS (M. tuberculosis)
@dataclass
class CdsData:
    """H37Rv ids and per-base labels, and where the test region starts."""

    record: object  # formats.GenBankRecord
    ids: np.ndarray  # (L,) uint8
    labels: np.ndarray  # (L,) uint8: 0 non-coding, 1 plus-strand CDS, 2 minus-strand CDS
    split: int  # first base of the test region
    frame_labels: np.ndarray | None = None  # (L,) uint8: 0, 1 + codon position (plus), 4 + codon position (minus)

    def fingerprint(self) -> str:
        from longstream.pipelines.common import data_fingerprint

        return data_fingerprint(self.ids[: self.split], self.labels[: self.split])


@functools.lru_cache(maxsize=2)
def load_cds(root: str) -> CdsData:
    """The annotated M. tuberculosis genome under ``root/mtb`` (cached per process)."""
    from . import formats, splits

    gb = Path(root) / "mtb" / "NC_000962.3.gb"
    if not gb.is_file():
        raise UserError(f"{gb}: missing; put the M. tuberculosis GenBank file there (see the data README)")
    record = formats.read_genbank(gb)
    ids = encode(record.sequence)
    labels = np.asarray(splits.cds_labels(record), dtype=np.uint8)
    split = int(len(ids) * splits.CDS_TRAIN_FRACTION)
    frames = np.asarray(splits.cds_frame_labels(record), dtype=np.uint8)
    return CdsData(record, ids, labels, split, frames)


def rc_labels(labels: np.ndarray, frames: bool = False) -> np.ndarray:
    """Labels of the reverse-complemented window: order reversed, plus <-> minus strand (with
    ``frames``, the 7-class codon-position labels: a plus base at codon position c becomes a minus
    base at codon position c, since the position counts from the gene's own 5' end)."""
    flip = np.array([0, 4, 5, 6, 1, 2, 3] if frames else [0, 2, 1], dtype=labels.dtype)
    return flip[labels[::-1]]


def cds_batch(data: CdsData, cfg: Config, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (b, l), labels (b, l))`` int64: random windows of the training region, RC-augmented."""
    tc, dc = cfg.train, cfg.data
    L = min(step_length(dc, tc.seed, step), data.split)
    r = _rng(tc.seed, step)
    xs, ys = [], []
    for _ in range(tc.batch_size):
        s = int(r.integers(0, data.split - L + 1))
        frames = cfg.model.cds_frames
        x, y = data.ids[s : s + L], (data.frame_labels if frames else data.labels)[s : s + L]
        if r.random() < dc.rc_prob:
            x, y = reverse_complement_ids(x), rc_labels(y, frames)
        xs.append(np.ascontiguousarray(mutate(x, r, dc.mutate_prob)))
        ys.append(np.ascontiguousarray(y))
    return (torch.from_numpy(np.stack(xs).astype(np.int64)), torch.from_numpy(np.stack(ys).astype(np.int64)))
