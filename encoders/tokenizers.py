"""Tokenizers: text / DNA strings -> integer ids, the first step of an encoder.

:class:`CharacterTokenizer` reproduces HyenaDNA's character tokenizer (Nguyen et al.,
2023), so ids fed to a converted HyenaDNA checkpoint (``longstream.backbones.hyenadna``)
mean what they meant upstream: specials ``[CLS]=0, [SEP]=1, [BOS]=2, [MASK]=3, [PAD]=4,
[RESERVED]=5, [UNK]=6``, then one id per character from 7 (``A, C, G, T, N`` -> 7..11),
vocabulary 12 (the model pads its embedding to a multiple of 8). Sequences are wrapped
as ``[CLS] ... [SEP]``; padding is on the left by default, as upstream.

Axis legend: b batch, l length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["CharacterTokenizer"]


class CharacterTokenizer:
    """HyenaDNA's character tokenizer: specials 0..6, then one id per character from 7.

    ``encode("ACGT") == [0, 7, 8, 9, 10, 1]`` (``[CLS] ... [SEP]``). Unknown characters
    map to ``[UNK]`` (6). Lower-case input is upper-cased unless ``uppercase=False``
    (HyenaDNA's data pipelines upper-case genomes before tokenizing).
    """

    SPECIALS = {"[CLS]": 0, "[SEP]": 1, "[BOS]": 2, "[MASK]": 3, "[PAD]": 4, "[RESERVED]": 5, "[UNK]": 6}

    def __init__(
        self,
        characters: Sequence[str] = ("A", "C", "G", "T", "N"),
        model_max_length: int = 1024,
        padding_side: str = "left",
        uppercase: bool = True,
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.characters = list(characters)
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.uppercase = uppercase
        self.vocab = {**self.SPECIALS, **{c: i + 7 for i, c in enumerate(self.characters)}}
        self.inv_vocab = {v: k for k, v in self.vocab.items()}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    cls_token_id, sep_token_id, bos_token_id, mask_token_id, pad_token_id, unk_token_id = 0, 1, 2, 3, 4, 6

    def encode(self, seq: str, add_special_tokens: bool = True) -> list[int]:
        s = seq.upper() if self.uppercase else seq
        ids = [self.vocab.get(c, self.unk_token_id) for c in s]
        return [self.cls_token_id, *ids, self.sep_token_id] if add_special_tokens else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(
            self.inv_vocab.get(int(i), "[UNK]") for i in ids if not (skip_special_tokens and int(i) < 7)
        )

    def batch_encode(
        self, seqs: Sequence[str], add_special_tokens: bool = True, max_length: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Pad to a common length: ``(input_ids (B, L) long, attention_mask (B, L) bool)``."""
        enc = [self.encode(s, add_special_tokens) for s in seqs]
        if max_length is not None:
            enc = [e[:max_length] for e in enc]
        L = max(len(e) for e in enc)
        ids = torch.full((len(enc), L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(enc), L, dtype=torch.bool)
        for i, e in enumerate(enc):
            sl = slice(L - len(e), L) if self.padding_side == "left" else slice(0, len(e))
            ids[i, sl] = torch.tensor(e, dtype=torch.long)
            mask[i, sl] = True
        return ids, mask
