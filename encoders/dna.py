"""Single-nucleotide DNA tokenizer and reverse complement (HyenaDNA / Caduceus ids).

Ids are exactly those of HyenaDNA's character tokenizer (Nguyen et al., *HyenaDNA: Long-Range
Genomic Sequence Modeling at Single Nucleotide Resolution*, NeurIPS 2023), as reproduced by
:class:`longstream.encoders.tokenizers.CharacterTokenizer` with ``characters="ACGTN"``:
specials ``[CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6``, then
``A=7 C=8 G=9 T=10 N=11`` (vocabulary 12). A converted HyenaDNA or Caduceus checkpoint reads
them as it did upstream.

Characters (documented rule, applied by :meth:`DNATokenizer.encode`):

- ``A C G T N``: their ids; **lower case** (soft-masked repeats in FASTA files) gets the same
  id as upper case — :meth:`DNATokenizer.soft_mask` returns where the input was lower case;
- ``U`` (RNA) -> ``T``;
- IUPAC ambiguity codes ``R Y K M S W B D H V`` -> ``N`` (the models see one "unknown base");
- anything else (digits, ``-``, ``*``, spaces, non-ASCII) -> ``ValueError`` naming the
  0-based position and the character. FASTA readers strip line breaks before this.

:func:`reverse_complement` works on strings (IUPAC-aware, case kept);
:func:`reverse_complement_ids` on id arrays / tensors: ``A<->T``, ``C<->G``, ``N`` and the
specials map to themselves, and the order is reversed along ``dim`` (so left padding becomes
right padding). :data:`COMPLEMENT_IDS` is the id permutation alone (Caduceus ties an
embedding's rows to their complements with it; Schiff et al., *Caduceus: Bi-Directional
Equivariant Long-Range DNA Sequence Modeling*, ICML 2024).

Axis legend: b batch, l length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .tokenizers import CharacterTokenizer

__all__ = [
    "DNATokenizer",
    "COMPLEMENT_IDS",
    "BASE_IDS",
    "reverse_complement",
    "reverse_complement_ids",
]

_CHAR = CharacterTokenizer(characters=("A", "C", "G", "T", "N"))
#: base -> id, from HyenaDNA's tokenizer (A=7, C=8, G=9, T=10, N=11).
BASE_IDS: dict[str, int] = {c: _CHAR.vocab[c] for c in "ACGTN"}
_AMBIGUOUS = "RYKMSWBDHV"
_N_SPECIALS = len(CharacterTokenizer.SPECIALS)

# byte -> id (-1 = not allowed)
_ENCODE = np.full(256, -1, dtype=np.int64)
for _c, _i in BASE_IDS.items():
    _ENCODE[ord(_c)] = _ENCODE[ord(_c.lower())] = _i
for _c in _AMBIGUOUS:
    _ENCODE[ord(_c)] = _ENCODE[ord(_c.lower())] = BASE_IDS["N"]
_ENCODE[ord("U")] = _ENCODE[ord("u")] = BASE_IDS["T"]
_LOWER = np.zeros(256, dtype=bool)
_LOWER[[ord(c) for c in "acgtnu" + _AMBIGUOUS.lower()]] = True

#: id -> id of the complement base (specials and N map to themselves); shape (vocab,).
COMPLEMENT_IDS = np.arange(_CHAR.vocab_size, dtype=np.int64)
for _a, _b in ("AT", "CG", "GC", "TA"):
    COMPLEMENT_IDS[BASE_IDS[_a]] = BASE_IDS[_b]
_COMPLEMENT_T = torch.from_numpy(COMPLEMENT_IDS.copy())

_RC_FROM = "ACGTURYKMSWBDHVN"
_RC_TO = "TGCAAYRMKSWVHDBN"
_RC_TABLE = str.maketrans(_RC_FROM + _RC_FROM.lower(), _RC_TO + _RC_TO.lower())
_RC_OK = frozenset(_RC_FROM + _RC_FROM.lower())


def _as_bytes(seq: str | bytes | bytearray | np.ndarray) -> np.ndarray:
    """``seq`` as a uint8 array (l,), without copying bytes / uint8 arrays."""
    if isinstance(seq, np.ndarray):
        if seq.dtype != np.uint8:
            raise TypeError(f"a sequence array must be uint8 (ASCII codes), got {seq.dtype}")
        return seq.reshape(-1)
    if isinstance(seq, (bytes, bytearray, memoryview)):
        return np.frombuffer(seq, dtype=np.uint8)
    if isinstance(seq, str):
        try:
            return np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError as e:
            raise ValueError(f"invalid character {seq[e.start]!r} at position {e.start}: "
                             "a DNA sequence holds A, C, G, T, N (or IUPAC codes)") from None
    raise TypeError(f"expected str, bytes or a uint8 array, got {type(seq).__name__}")


class DNATokenizer:
    """Single-nucleotide tokenizer with HyenaDNA's ids (see the module docstring).

    ``encode("ACgtN") -> array([7, 8, 9, 10, 11])``: one id per base, no specials, so
    position ``i`` of the ids is base ``i`` of the sequence; ``add_special_tokens=True`` wraps
    it as ``[CLS] ... [SEP]`` like :class:`CharacterTokenizer`.
    """

    SPECIALS = dict(CharacterTokenizer.SPECIALS)
    cls_id, sep_id, bos_id, mask_id, pad_id, unk_id = 0, 1, 2, 3, 4, 6
    a_id, c_id, g_id, t_id, n_id = (BASE_IDS[c] for c in "ACGTN")

    def __init__(self) -> None:
        self.vocab: dict[str, int] = dict(_CHAR.vocab)
        self.inv_vocab = {v: k for k, v in self.vocab.items()}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)  # 12

    def encode(self, seq: str | bytes | np.ndarray, add_special_tokens: bool = False) -> np.ndarray:
        """``seq`` (l,) -> int64 ids (l,) (``l + 2`` with specials). ValueError names a bad position."""
        raw = _as_bytes(seq)
        ids = _ENCODE[raw]  # (l,) int64
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"invalid character {chr(raw[i])!r} at position {i}: a DNA sequence holds "
                             "A, C, G, T, N, U or IUPAC codes R Y K M S W B D H V (any case)")
        if add_special_tokens:
            ids = np.concatenate([[self.cls_id], ids, [self.sep_id]]).astype(np.int64)
        return ids

    def soft_mask(self, seq: str | bytes | np.ndarray) -> np.ndarray:
        """bool (l,): True where the base was lower case (soft-masked repeat)."""
        return _LOWER[_as_bytes(seq)]

    def decode(self, ids: Sequence[int] | np.ndarray | Tensor, skip_special_tokens: bool = True) -> str:
        """ids -> upper-case bases; specials are dropped (or written as ``[CLS]`` etc.)."""
        arr = ids.detach().cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
        out = []
        for i in arr.reshape(-1).tolist():
            if i not in self.inv_vocab:
                raise ValueError(f"id {i} is not in the DNA vocabulary (0..{self.vocab_size - 1})")
            if i < _N_SPECIALS and skip_special_tokens:
                continue
            out.append(self.inv_vocab[i])
        return "".join(out)

    def encode_batch(self, seqs: Sequence[str], padding_side: str = "right") -> tuple[Tensor, Tensor]:
        """Pad to a common length with ``[PAD]``: ``(ids (b, l) long, mask (b, l) bool)``."""
        enc = [self.encode(s) for s in seqs]
        L = max((len(e) for e in enc), default=0)
        ids = torch.full((len(enc), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(enc), L, dtype=torch.bool)
        for i, e in enumerate(enc):
            sl = slice(L - len(e), L) if padding_side == "left" else slice(0, len(e))
            ids[i, sl] = torch.from_numpy(e)
            mask[i, sl] = True
        return ids, mask


def reverse_complement(seq: str) -> str:
    """Reverse complement of a DNA string: IUPAC-aware (``R<->Y``, ``K<->M``, ``B<->V``,
    ``D<->H``; ``S W N`` self), ``U -> A``, lower case kept. ValueError on other characters."""
    if not _RC_OK.issuperset(seq):
        i = next(i for i, c in enumerate(seq) if c not in _RC_OK)
        raise ValueError(f"invalid character {seq[i]!r} at position {i}: cannot reverse-complement it")
    return seq.translate(_RC_TABLE)[::-1]


def reverse_complement_ids(ids: np.ndarray | Tensor, dim: int = -1) -> np.ndarray | Tensor:
    """Complement each id (A<->T, C<->G; N and specials kept) and reverse along ``dim``.

    Works on numpy arrays (returns a new contiguous array) and torch tensors (same device,
    differentiable-free: ids are integers). Ids outside the vocabulary raise.
    """
    if isinstance(ids, Tensor):
        if ids.is_floating_point():
            raise TypeError("reverse_complement_ids expects integer ids")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(COMPLEMENT_IDS)):
            raise ValueError(f"ids must lie in 0..{len(COMPLEMENT_IDS) - 1}")
        return _COMPLEMENT_T.to(ids.device)[ids.long()].to(ids.dtype).flip(dim)
    arr = np.asarray(ids)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError("reverse_complement_ids expects integer ids")
    if arr.size and (arr.min() < 0 or arr.max() >= len(COMPLEMENT_IDS)):
        raise ValueError(f"ids must lie in 0..{len(COMPLEMENT_IDS) - 1}")
    return np.ascontiguousarray(np.flip(COMPLEMENT_IDS[arr].astype(arr.dtype), axis=dim))
