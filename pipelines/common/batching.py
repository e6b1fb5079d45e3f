"""Variable-length batches: padding + masks, and a length-bucketing batch sampler.

Audio clips, DNA reads, videos and motion clips come in different lengths. A batch is
padded on the right to its longest item and carries a ``mask`` (B, L) bool, ``True`` for
valid positions (the convention of ``longstream.memory`` and :mod:`.heads`), or the
``lengths`` (B,) it is made from.

Random batches of very different lengths waste most of their compute on padding.
:class:`LengthBucketSampler` groups items of similar length: each epoch it shuffles the
indices (seeded by ``seed + epoch``, so it is deterministic and resumable), cuts them
into pools of ``pool_batches`` batches, sorts each pool by length, cuts it into batches
and shuffles the batch order. Under ``torchrun`` every rank draws the same global
batches and keeps its contiguous share (:func:`~.distributed.shard_indices`), so the DDP
gradient average equals the single-process one. :func:`padding_fraction` measures the
waste of a list of batches.

Axis legend: b batch, l (padded) length.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from .distributed import DistEnv, shard_indices
from .errors import UserError

__all__ = ["LengthBucketSampler", "lengths_to_mask", "mask_to_lengths", "pad_sequences", "padding_fraction"]


def lengths_to_mask(lengths: Sequence[int] | Tensor, max_len: int | None = None) -> Tensor:
    """(B,) lengths -> (B, L) bool mask, ``True`` on the first ``lengths[i]`` positions."""
    n = torch.as_tensor(lengths, dtype=torch.long)
    L = int(n.max()) if max_len is None and n.numel() else int(max_len or 0)
    return torch.arange(L, device=n.device)[None, :] < n[:, None]


def mask_to_lengths(mask: Tensor) -> Tensor:
    """(B, L) bool mask -> (B,) long number of valid positions per row."""
    return mask.to(torch.bool).sum(1)


def pad_sequences(
    seqs: Sequence[Tensor],
    pad_value: float = 0.0,
    *,
    max_len: int | None = None,
    side: str = "right",
    what: str = "sequence",
) -> tuple[Tensor, Tensor]:
    """Stack tensors of shapes (L_i, ...) into ``(padded (B, L, ...), mask (B, L))``.

    ``max_len`` truncates longer items (and pads to exactly that length); ``side="left"``
    pads on the left instead (then the mask is ``True`` on the last ``L_i`` positions).
    Items must agree on their trailing shape; ``what`` names them in the error.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not seqs:
        raise ValueError("pad_sequences needs at least one tensor")
    tail = tuple(seqs[0].shape[1:])
    for i, s in enumerate(seqs):
        if s.dim() == 0 or tuple(s.shape[1:]) != tail:
            raise UserError(
                f"{what} {i} has shape {tuple(s.shape)}, but {what} 0 has per-step shape {tail}; "
                f"give every {what} the same channels / features (only the length may differ)"
            )
    L = max(len(s) for s in seqs) if max_len is None else max_len
    out = seqs[0].new_full((len(seqs), L, *tail), pad_value)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool, device=seqs[0].device)
    for i, s in enumerate(seqs):
        n = min(len(s), L)
        sl = slice(0, n) if side == "right" else slice(L - n, L)
        out[i, sl] = s[:n]
        mask[i, sl] = True
    return out, mask


def padding_fraction(lengths: Sequence[int] | Tensor, batches: Sequence[Sequence[int]]) -> float:
    """Fraction of padded positions when each batch is padded to its longest item."""
    n = torch.as_tensor(lengths, dtype=torch.long)
    total = valid = 0
    for b in batches:
        ln = n[list(b)]
        total += int(ln.max()) * len(b) if len(b) else 0
        valid += int(ln.sum())
    return 0.0 if total == 0 else 1.0 - valid / total


class LengthBucketSampler:
    """Batches of indices with similar lengths; deterministic per ``(seed, epoch)``; sharded over ranks.

    Args:
        lengths: the length of every item of the dataset.
        batch_size: the *global* batch size (split across ranks; must divide by the world size).
        seed: base seed; the order of epoch ``e`` is drawn from ``seed + e`` (:meth:`set_epoch`).
        shuffle: False keeps the (length-sorted) pools in dataset order, for evaluation.
        drop_last: drop the final incomplete batch. When kept under DDP, it is filled up to a
            multiple of the world size by repeating its first items (every rank needs the
            same number of items).
        pool_batches: batches per sorting pool; larger pools pad less but mix lengths less
            randomly (1 = no bucketing at all).
        env: the :class:`~.distributed.DistEnv` of this process (None = single process).

    Iterating yields this rank's list of indices for each batch (from ``start_batch``, see
    :meth:`set_epoch`); ``len()`` is the number of batches per epoch (the same on every rank).
    """

    def __init__(
        self,
        lengths: Sequence[int] | Tensor,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        pool_batches: int = 50,
        env: DistEnv | None = None,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size {batch_size} must be >= 1; change --train.batch_size")
        if pool_batches < 1:
            raise ValueError(f"pool_batches must be >= 1, got {pool_batches}")
        self.env = env or DistEnv()
        if batch_size % self.env.world_size:
            raise UserError(
                f"global batch {batch_size} is not divisible by {self.env.world_size} processes; "
                "change --train.batch_size"
            )
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.drop_last, self.pool_batches = drop_last, pool_batches
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the order of ``epoch`` (call before iterating, as with ``DistributedSampler``).

        ``start_batch`` skips the first batches of that epoch: a run resumed after ``k``
        batches of epoch ``e`` calls ``set_epoch(e, k)`` and sees exactly the batches the
        uninterrupted run would have seen next.
        """
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def global_batches(self) -> list[list[int]]:
        """Every batch of this epoch as global index lists (identical on every rank)."""
        n = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        pool = self.batch_size * self.pool_batches
        batches: list[list[int]] = []
        for s in range(0, n, pool):
            idx = order[s : s + pool]
            # stable sort by length (descending) so equal lengths keep the shuffled order
            idx = idx[torch.sort(self.lengths[idx], descending=True, stable=True).indices]
            batches += [idx[i : i + self.batch_size].tolist() for i in range(0, len(idx), self.batch_size)]
        # only the last batch of the last pool can be short; move it to the end
        short = [b for b in batches if len(b) < self.batch_size]
        batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        if short and not self.drop_last:
            last = short[0]
            w = self.env.world_size
            while len(last) % w:
                last = last + last[: w - len(last) % w]
            batches.append(last)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.global_batches()[self.start_batch :]:
            yield shard_indices(b, self.env)

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)
