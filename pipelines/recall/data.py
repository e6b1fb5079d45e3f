"""Generated recall tasks. Every example is a deterministic function of (task config, seed).

All generators return ``(tokens (N, L) int64, targets (N, L) int64)`` where ``targets`` is
``-100`` except at the positions whose *next-token prediction* is scored (the model sees
``tokens[:, :t+1]`` and must output ``targets[:, t]``).

Tasks (``DataConfig.task``):

- ``mqar`` — multi-query associative recall, following Zoology (Arora et al., 2023,
  ``zoology/data/associative_recall.py``): ``num_kv_pairs`` key-value pairs at the start
  (keys from the first half of the vocabulary, values from the second, no repeated key),
  then the keys are queried again at power-law distributed gaps (exponent ``power_a``),
  each query followed by its value; the model predicts the value at every query. Filler
  positions hold random tokens (``random_non_queries``, as in Zoology) or 0.
- ``induction`` — induction heads (Mamba paper, Gu & Dao 2023): random tokens; a trigger
  token appears once followed by a target token; the sequence ends with the trigger and
  the model predicts the target. ``depth`` places the first trigger.
- ``selective_copy`` — selective copying (Mamba paper): ``n_copy`` data tokens scattered
  among filler 0s; the last ``n_copy`` positions hold a copy marker and the model outputs
  the data tokens in order.
- ``passkey`` — passkey retrieval: noise tokens; a needle ``KEY d1..dk`` at a controlled
  depth; the sequence ends with ``QUERY d1..d(k-1)`` and the model predicts the ``k``
  digits (teacher forced; scored as exact match of all digits).
- ``multikey`` — RULER-style multi-key needle: ``n_needles`` needles ``KEY name d1..dk``
  with distinct names; the query ``QUERY name`` asks for one of them (the one at ``depth``).
- ``vartrack`` — RULER-style variable tracking: ``ASSIGN x1 d1..dk`` at ``depth`` then
  ``ASSIGN x2 x1``, ..., ``ASSIGN xh x(h-1)`` later; the query ``QUERY xh`` asks for the digits.

Needle-task vocabulary: 0 pad, 1 KEY/ASSIGN, 2 QUERY, 3..12 digits, 13..28 names,
29.. noise (so ``vocab_size`` must be > 29).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longstream.pipelines.common import UserError

from .config import TASKS, DataConfig

KEY, QUERY, DIGIT0, N_DIGITS, NAME0, N_NAMES = 1, 2, 3, 10, 13, 16
NOISE0 = NAME0 + N_NAMES
NEEDLE_TASKS = ("passkey", "multikey", "vartrack")
EXACT_MATCH_TASKS = ("passkey", "multikey", "vartrack")
DEPTH_TASKS = ("induction", "passkey", "multikey", "vartrack")
_SPLIT_OFFSET = {"train": 0, "val": 7_000_003, "test": 13_000_019}
SEED_MAX = 2**63 - 1
"""The largest example seed (torch generators take 64-bit seeds; larger ones overflow)."""


def check_config(cfg: DataConfig, seq_len: int | None = None) -> None:
    """Raise :class:`UserError` when the task cannot be generated with these settings."""
    L = seq_len or cfg.seq_len
    if cfg.task not in TASKS:
        raise UserError(f"unknown recall task {cfg.task!r}; choose from {', '.join(TASKS)} (--data.task)")
    if cfg.task == "mqar":
        if cfg.vocab_size < 2 * cfg.num_kv_pairs + 2:
            raise UserError(f"mqar needs vocab_size >= {2 * cfg.num_kv_pairs + 2} for {cfg.num_kv_pairs} pairs")
        if L < 4 * cfg.num_kv_pairs:
            raise UserError(f"mqar needs seq_len >= 4 * num_kv_pairs = {4 * cfg.num_kv_pairs}, got {L}")
    elif cfg.task == "induction":
        if cfg.vocab_size < 4 or L < 4:
            raise UserError("induction needs vocab_size >= 4 and seq_len >= 4")
    elif cfg.task == "selective_copy":
        if cfg.vocab_size < 4 or L < 2 * cfg.n_copy + 1:
            raise UserError(f"selective_copy needs vocab_size >= 4 and seq_len >= {2 * cfg.n_copy + 1}")
    else:
        if cfg.vocab_size <= NOISE0:
            raise UserError(f"{cfg.task} needs vocab_size > {NOISE0} (digits, names and noise tokens)")
        need = _needle_span(cfg) + cfg.key_len + 2
        if L < need + 2:
            raise UserError(f"{cfg.task} with these settings needs seq_len >= {need + 2}, got {L}")


def _needle_span(cfg: DataConfig) -> int:
    if cfg.task == "passkey":
        return 1 + cfg.key_len
    if cfg.task == "multikey":
        return cfg.n_needles * (2 + cfg.key_len) + (cfg.n_queries - 1) * (1 + cfg.key_len)
    return (2 + cfg.key_len) + (cfg.n_hops - 1) * 3  # vartrack


def generate(
    cfg: DataConfig,
    n: int,
    *,
    seq_len: int | None = None,
    depth: float | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """``n`` examples of ``cfg.task`` at length ``seq_len`` (default ``cfg.seq_len``).

    ``depth`` in [0, 1] fixes where the needle / first trigger sits (None = uniform).
    """
    L = int(seq_len or cfg.seq_len)
    check_config(cfg, L)
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise UserError(f"depth must be in [0, 1], got {depth}")
    if not 0 <= int(seed) <= SEED_MAX:
        raise UserError(f"seed {seed} is out of range; use a whole number from 0 to {SEED_MAX}")
    g = torch.Generator().manual_seed(int(seed))
    fn = {
        "mqar": _mqar,
        "induction": _induction,
        "selective_copy": _selective_copy,
        "passkey": _needles,
        "multikey": _needles,
        "vartrack": _needles,
    }[cfg.task]
    return fn(cfg, n, L, depth, g)


def split(cfg: DataConfig, name: str, n: int, step: int = 0, seq_len: int | None = None) -> tuple[Tensor, Tensor]:
    """Training batches (fresh per ``step``) and the fixed validation set."""
    return generate(cfg, n, seq_len=seq_len, seed=cfg.seed * 1_000_033 + _SPLIT_OFFSET[name] + step)


def _power_gaps(space: int, k: int, a: float, g: Tensor) -> Tensor:
    p = a * torch.arange(1, space + 1, dtype=torch.float64) ** (a - 1)
    return torch.multinomial(p / p.sum(), k, replacement=False, generator=g)


def _mqar(cfg: DataConfig, n: int, L: int, depth: float | None, g: torch.Generator) -> tuple[Tensor, Tensor]:
    V, P = cfg.vocab_size, cfg.num_kv_pairs
    half = V // 2
    ctx = 2 * P
    space = (L + 1 - ctx) // 2
    seq = torch.zeros(n, L + 1, dtype=torch.long)
    lab = torch.full((n, L + 1), -100, dtype=torch.long)
    for i in range(n):
        keys = torch.randperm(half - 1, generator=g)[:P] + 1  # from [1, half)
        vals = torch.randperm(V - half, generator=g)[:P] + half  # from [half, V)
        seq[i, 0:ctx:2], seq[i, 1:ctx:2] = keys, vals
        gaps = _power_gaps(space, P, cfg.power_a, g)
        qpos = ctx + 2 * gaps
        seq[i, qpos], seq[i, qpos + 1] = keys, vals
        lab[i, qpos + 1] = vals
    if cfg.random_non_queries:
        filler = seq == 0
        seq = torch.where(filler, torch.randint(1, V, seq.shape, generator=g), seq)
    return seq[:, :-1].contiguous(), lab[:, 1:].contiguous()


def _induction(cfg: DataConfig, n: int, L: int, depth: float | None, g: torch.Generator) -> tuple[Tensor, Tensor]:
    V = cfg.vocab_size
    trig = V - 1
    seq = torch.randint(1, V - 1, (n, L), generator=g)  # content tokens never equal the trigger
    tgt = torch.full((n, L), -100, dtype=torch.long)
    hi = L - 3  # first trigger in [0, L-3]
    if depth is None:
        pos = torch.randint(0, hi + 1, (n,), generator=g)
    else:
        pos = torch.full((n,), round(depth * hi), dtype=torch.long)
    ar = torch.arange(n)
    seq[ar, pos] = trig
    seq[:, -1] = trig
    tgt[:, -1] = seq[ar, pos + 1]
    return seq, tgt


def _selective_copy(cfg: DataConfig, n: int, L: int, depth: float | None, g: torch.Generator) -> tuple[Tensor, Tensor]:
    V, k = cfg.vocab_size, cfg.n_copy
    body = L - k
    seq = torch.zeros(n, L, dtype=torch.long)
    tgt = torch.full((n, L), -100, dtype=torch.long)
    for i in range(n):
        pos = torch.randperm(body, generator=g)[:k].sort().values
        data = torch.randint(1, V - 1, (k,), generator=g)
        seq[i, pos] = data
        tgt[i, body:] = data
    seq[:, body:] = V - 1  # copy slots
    # the prediction made *at* slot j is scored against data[j]: the slot token itself marks "output now"
    return seq, tgt


def _needles(cfg: DataConfig, n: int, L: int, depth: float | None, g: torch.Generator) -> tuple[Tensor, Tensor]:
    V, k = cfg.vocab_size, cfg.key_len
    seq = torch.randint(NOISE0, V, (n, L), generator=g)
    tgt = torch.full((n, L), -100, dtype=torch.long)
    task = cfg.task
    nq = cfg.n_queries if task == "multikey" else 1
    if task == "multikey" and not 1 <= nq <= cfg.n_needles:
        raise UserError(f"multikey needs 1 <= n_queries <= n_needles, got {nq} and {cfg.n_needles}")
    tail = nq * (k + (0 if task == "passkey" else 1))  # per query: QUERY [name] d1..d(k-1)
    hay = L - tail  # haystack length (needles live in [0, hay))
    for i in range(n):
        digits = torch.randint(DIGIT0, DIGIT0 + N_DIGITS, (k,), generator=g)
        if task == "passkey":
            needle = torch.cat([torch.tensor([KEY]), digits])
            s = _depth_pos(depth, hay - len(needle), g)
            seq[i, s : s + len(needle)] = needle
            query = torch.tensor([QUERY])
        elif task == "multikey":
            names = torch.randperm(N_NAMES, generator=g)[: cfg.n_needles] + NAME0
            width = 2 + k
            starts = _spread(cfg.n_needles, width, hay, depth, g)  # first start = queried needle
            answers = []
            for j, s in enumerate(starts):
                d = digits if j == 0 else torch.randint(DIGIT0, DIGIT0 + N_DIGITS, (k,), generator=g)
                seq[i, s : s + width] = torch.cat([torch.tensor([KEY, int(names[j])]), d])
                answers.append(d)
            for j in range(nq - 1, 0, -1):  # extra queries (dense training) come first, in reverse
                q0 = L - tail + (nq - 1 - j) * (k + 1)
                seq[i, q0 : q0 + 2] = torch.tensor([QUERY, int(names[j])])
                seq[i, q0 + 2 : q0 + k + 1] = answers[j][:-1]
                tgt[i, q0 + 1 : q0 + k + 1] = answers[j]
            query = torch.tensor([QUERY, int(names[0])])
        else:  # vartrack
            names = torch.randperm(N_NAMES, generator=g)[: cfg.n_hops] + NAME0
            first = torch.cat([torch.tensor([KEY, int(names[0])]), digits])
            s0 = _depth_pos(depth, hay - len(first) - 3 * (cfg.n_hops - 1), g)
            seq[i, s0 : s0 + len(first)] = first
            lo = s0 + len(first)
            # later hops at increasing random positions after the value assignment
            room = hay - lo - 3 * (cfg.n_hops - 1)
            offs = torch.randint(0, room + 1, (cfg.n_hops - 1,), generator=g).sort().values
            for h in range(1, cfg.n_hops):
                s = lo + int(offs[h - 1]) + 3 * (h - 1)
                seq[i, s : s + 3] = torch.tensor([KEY, int(names[h]), int(names[h - 1])])
            query = torch.tensor([QUERY, int(names[-1])])
        q0 = L - len(query) - (k - 1)  # the main query is always last
        seq[i, q0 : q0 + len(query)] = query
        seq[i, q0 + len(query) :] = digits[:-1]
        tgt[i, q0 + len(query) - 1 :] = digits  # predicted at the last query token and after each digit
    return seq, tgt


def _depth_pos(depth: float | None, hi: int, g: torch.Generator) -> int:
    hi = max(hi, 0)
    if depth is None:
        return int(torch.randint(0, hi + 1, (1,), generator=g))
    return round(depth * hi)


def _spread(m: int, width: int, hay: int, depth: float | None, g: torch.Generator) -> list[int]:
    """Non-overlapping starts of ``m`` needles of ``width`` in ``[0, hay)``; the first at ``depth``."""
    first = _depth_pos(depth, hay - width, g)
    taken = [(first, first + width)]
    out = [first]
    for _ in range(m - 1):
        for _try in range(1000):
            s = int(torch.randint(0, hay - width + 1, (1,), generator=g))
            if all(s + width <= a or s >= b for a, b in taken):
                break
        taken.append((s, s + width))
        out.append(s)
    return out


def example_groups(targets: Tensor) -> Tensor:
    """(N,) number of scored positions per example (for exact-match scoring)."""
    return (targets != -100).sum(-1)
