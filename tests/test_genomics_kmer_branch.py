"""The species head's k-mer composition branch (pipelines/genomics/kmer_branch.py)."""

from __future__ import annotations

import itertools

import pytest
import torch

from longstream.encoders.dna import DNATokenizer, reverse_complement
from longstream.pipelines.common import UserError
from longstream.pipelines.genomics import config as C
from longstream.pipelines.genomics.kmer_branch import KmerComposition, KmerCounter, kmer_counts
from longstream.pipelines.genomics.model import build_model, species_logits

TOK = DNATokenizer()
COMP = {"A": "T", "C": "G", "G": "C", "T": "A"}


def _ids(seq: str) -> torch.Tensor:
    return torch.as_tensor(TOK.encode(seq), dtype=torch.long)[None]


def _naive(seq: str, k: int) -> dict[str, int]:
    """Strand-symmetric counts by hand: every k-mer of ACGT only, plus its reverse complement's count."""
    plain: dict[str, int] = {}
    for i in range(len(seq) - k + 1):
        w = seq[i : i + k]
        if set(w) <= set("ACGT"):
            plain[w] = plain.get(w, 0) + 1
    rc = lambda w: "".join(COMP[c] for c in reversed(w))
    return {w: plain.get(w, 0) + plain.get(rc(w), 0) for w in map("".join, itertools.product("ACGT", repeat=k))}


@pytest.mark.parametrize("k", [1, 2, 4])
def test_counts_equal_a_by_hand_count(k):
    g = torch.Generator().manual_seed(k)
    seq = "".join("ACGTN"[i] for i in torch.randint(0, 5, (300,), generator=g).tolist())
    got = kmer_counts(_ids(seq), k)[0]
    want = _naive(seq, k)
    codes = ["".join(p) for p in itertools.product("ACGT", repeat=k)]  # code order: first base most significant
    assert [int(v) for v in got.tolist()] == [want[w] for w in codes]


def test_counts_are_strand_symmetric_and_respect_the_mask():
    seq = "ACGTTGCAAGGCTTACGATCGATCGGGCTA" * 5
    a, b = kmer_counts(_ids(seq), 4), kmer_counts(_ids(reverse_complement(seq)), 4)
    assert torch.equal(a, b)
    ids = _ids(seq + "ACGTACGT")
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, len(seq):] = False
    assert torch.equal(kmer_counts(ids, 4, mask), a)


def test_chunked_counter_equals_the_whole_window():
    g = torch.Generator().manual_seed(0)
    ids = _ids("".join("ACGT"[i] for i in torch.randint(0, 4, (1000,), generator=g).tolist()))
    c = KmerCounter(4)
    for s in range(0, 1000, 97):
        c.add(ids[:, s : s + 97])
    assert torch.equal(c.counts, kmer_counts(ids, 4))


def test_streamed_species_logits_equal_one_forward_with_the_branch():
    cfg = C.tiny()
    cfg.model.kmer_k = 3
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    ids = torch.randint(7, 11, (2, 700))
    with torch.no_grad():
        full = m(ids)
        streamed = species_logits(m, ids, segment=128)
    assert torch.allclose(full, streamed, atol=1e-4), (full - streamed).abs().max()
    with torch.no_grad():  # the branch changes the logits (it is wired in)
        m.kmer.proj.weight.add_(torch.randn_like(m.kmer.proj.weight))
        assert not torch.allclose(m(ids), full, atol=1e-3)


def test_bad_k_is_a_user_error():
    with pytest.raises(UserError, match="kmer_k"):
        KmerComposition(9, 4)
    cfg = C.tiny_lm()
    cfg.model.kmer_k = 4
    with pytest.raises(UserError, match="species-head option"):
        build_model(cfg)



def test_kmer_aux_loss_adds_the_branch_cross_entropy(monkeypatch):
    """``model.kmer_aux`` w: the species training loss is CE(summed logits) + w * CE(branch logits)."""
    import torch.nn.functional as F

    from longstream.pipelines.common.distributed import DistEnv
    from longstream.pipelines.genomics import train as T

    cfg = C.tiny()
    cfg.model.kmer_k, cfg.train.batch_size = 3, 3
    ids, y = torch.randint(7, 11, (3, 200)), torch.tensor([0, 1, 2])
    monkeypatch.setattr(T.D, "species_batch", lambda data, cfg, step: (ids, y))
    torch.manual_seed(0)
    m = build_model(cfg)
    logits, comp = m(ids, kmer_part=True)
    assert torch.equal(logits, m(ids))  # the summed logits are the usual forward
    plain = T.batch_loss(m, cfg, None, 0, DistEnv())
    assert torch.allclose(plain, F.cross_entropy(logits, y))
    cfg.model.kmer_aux = 0.5
    got = T.batch_loss(m, cfg, None, 0, DistEnv())
    want = F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(comp, y)
    assert torch.allclose(got, want) and got > plain + 1e-3
    bad = C.tiny()
    bad.model.kmer_aux = 1.0  # no k-mer branch to supervise
    with pytest.raises(UserError, match="kmer_aux"):
        build_model(bad)


def test_lower_orders_are_the_k_counts_summed_over_the_last_base():
    """``orders`` 2: the branch's (k-1)-mer features come from the k-mer counts marginalised over the
    last base; they equal a direct (k-1)-mer count up to the window's last (k-1)-mers."""
    g = torch.Generator().manual_seed(3)
    ids = _ids("".join("ACGT"[i] for i in torch.randint(0, 4, (2000,), generator=g).tolist()))
    c4, c3 = kmer_counts(ids, 4), kmer_counts(ids, 3)
    marg = c4.view(1, -1, 4).sum(-1)
    assert (c3 - marg).abs().sum() <= 2  # the last 3-mer of each strand has no following base
    torch.manual_seed(0)
    one, two = KmerComposition(4, 4), KmerComposition(4, 4, orders=2)
    assert set(one.state_dict()) == {"norm.weight", "norm.bias", "proj.weight", "proj.bias"}  # old checkpoints load
    assert two.proj.in_features == 256 + 64
    with torch.no_grad():  # the lower-order features are wired in: the 3-mer weights change the logits
        before = two(c4)
        two.proj.weight[:, 256:] += torch.randn(4, 64)
        assert not torch.allclose(two(c4), before)
    with pytest.raises(UserError, match="kmer_orders"):
        KmerComposition(3, 4, orders=4)
