"""encoders/dna.py: HyenaDNA's ids, soft masking, IUPAC handling, reverse complement (numpy and torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longstream.encoders.dna import (
    BASE_IDS,
    COMPLEMENT_IDS,
    DNATokenizer,
    reverse_complement,
    reverse_complement_ids,
)
from longstream.encoders.tokenizers import CharacterTokenizer

tok = DNATokenizer()


def test_ids_are_hyenadnas():
    ref = CharacterTokenizer(characters="ACGTN")
    seq = "ACGTNNTGCA"
    assert tok.encode(seq).tolist() == ref.encode(seq, add_special_tokens=False)
    assert tok.encode(seq, add_special_tokens=True).tolist() == ref.encode(seq)
    assert tok.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]
    assert BASE_IDS == {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
    assert tok.vocab_size == ref.vocab_size == 12
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id, tok.mask_id) == (0, 1, 4, 6, 3)
    assert tok.encode("ACGT").dtype == np.int64


def test_soft_mask_iupac_and_rna():
    assert tok.encode("acgtn").tolist() == tok.encode("ACGTN").tolist()
    assert tok.soft_mask("ACgtNn").tolist() == [False, False, True, True, False, True]
    # IUPAC ambiguity codes -> N, either case; U -> T
    assert tok.encode("RYKMSWBDHVrykmswbdhv").tolist() == [11] * 20
    assert tok.encode("UuT").tolist() == [10, 10, 10]
    # bytes and uint8 arrays give the same ids as str
    assert tok.encode(b"ACgT").tolist() == tok.encode(np.frombuffer(b"ACgT", np.uint8)).tolist() == [7, 8, 9, 10]


@pytest.mark.parametrize("seq, pos, char", [("ACGT-A", 4, "-"), ("AC GT", 2, " "), ("ACGTÄ", 4, "Ä"), ("1", 0, "1")])
def test_bad_characters_name_the_position(seq, pos, char):
    with pytest.raises(ValueError, match=f"invalid character {char!r} at position {pos}"):
        tok.encode(seq)


def test_decode_round_trip_and_batch():
    assert tok.decode(tok.encode("ACGTN", add_special_tokens=True)) == "ACGTN"
    assert tok.decode([0, 7, 1], skip_special_tokens=False) == "[CLS]A[SEP]"
    assert tok.decode(torch.tensor([10, 9])) == "TG"
    with pytest.raises(ValueError, match="id 12"):
        tok.decode([12])
    ids, mask = tok.encode_batch(["ACG", "T"])
    assert ids.tolist() == [[7, 8, 9], [10, 4, 4]] and mask.tolist() == [[True] * 3, [True, False, False]]


def test_reverse_complement_strings():
    assert reverse_complement("AACGTN") == "NACGTT"
    assert reverse_complement("acGT") == "ACgt"  # case kept per base
    assert reverse_complement("RYKMSWBDHVU") == "ABDHVWSKMRY"
    rng = np.random.default_rng(0)
    s = "".join(rng.choice(list("ACGTNacgtnRY"), 500))
    assert reverse_complement(reverse_complement(s)) == s
    with pytest.raises(ValueError, match="position 2"):
        reverse_complement("AC-")


def test_complement_table_is_an_involution_that_keeps_specials():
    assert (COMPLEMENT_IDS[COMPLEMENT_IDS] == np.arange(12)).all()
    assert COMPLEMENT_IDS[:7].tolist() == list(range(7)) and COMPLEMENT_IDS[11] == 11
    assert [COMPLEMENT_IDS[BASE_IDS[b]] for b in "ACGT"] == [BASE_IDS[b] for b in "TGCA"]


def test_reverse_complement_ids_numpy_and_torch_agree_with_strings():
    rng = np.random.default_rng(1)
    seqs = ["".join(rng.choice(list("ACGTN"), 64)) for _ in range(3)]
    ids = np.stack([tok.encode(s) for s in seqs])  # (3, 64)
    want = np.stack([tok.encode(reverse_complement(s)) for s in seqs])
    assert (reverse_complement_ids(ids) == want).all()
    t = torch.from_numpy(ids)
    rc_t = reverse_complement_ids(t)
    assert isinstance(rc_t, torch.Tensor) and rc_t.dtype == t.dtype
    assert (rc_t.numpy() == want).all()
    assert (reverse_complement_ids(rc_t) == t).all()
    # dim: reverse along the batch axis of a (L, B) layout
    assert (reverse_complement_ids(ids.T, dim=0) == want.T).all()
    assert (reverse_complement_ids(t.T, dim=0) == torch.from_numpy(want.T)).all()
    # specials keep their id; order reverses (left padding becomes right padding)
    assert reverse_complement_ids(np.array([4, 0, 7, 8, 1])).tolist() == [1, 9, 10, 0, 4]
    with pytest.raises(ValueError):
        reverse_complement_ids(np.array([7, 12]))
    with pytest.raises(ValueError):
        reverse_complement_ids(torch.tensor([-1, 7]))


def test_real_genome_counts_and_rc(data_root):
    from longstream.pipelines.genomics.formats import read_fasta

    (seq,) = read_fasta(data_root / "genomics" / "lambda_virus.fa.gz").values()
    ids = tok.encode(seq)
    assert len(ids) == 48_502
    counts = np.bincount(ids, minlength=12)
    assert counts[7:11].tolist() == [seq.count(b) for b in "ACGT"] and counts[11] == 0
    assert (reverse_complement_ids(ids) == tok.encode(reverse_complement(seq))).all()
    assert tok.decode(ids) == seq
