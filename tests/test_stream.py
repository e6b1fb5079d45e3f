"""The segment runner: equivalence with one pass, truncated BPTT, embed/head, restart."""

from __future__ import annotations

import pytest
import torch

from longstream.backbones import create_backbone
from longstream.memory import MemoryStateError, StreamRunner, create_memory

torch.set_num_threads(1)
D = 16


# every one is built by the tests: a missing mixer fails them, it never shrinks this list
STREAM_BACKBONES = ["test_attention", "test_s4d", "test_mamba", "test_mamba2"]


@pytest.mark.parametrize("bb_name", STREAM_BACKBONES)
def test_runner_equals_one_forward(bb_name):
    torch.manual_seed(0)
    bb = create_backbone(bb_name)
    x = torch.randn(2, 19, D)
    ref, _ = bb(x)
    y, st = StreamRunner(bb, segment_len=4).run(x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert st.position == 19 and st.segments == 5


def test_embed_and_head_are_applied_per_segment():
    torch.manual_seed(0)
    bb = create_backbone("test_attention")
    emb = torch.nn.Embedding(11, D)
    head = torch.nn.Linear(D, 11)
    tok = torch.randint(0, 11, (2, 17))
    seen = []

    def embed(t):
        seen.append(t.shape[1])
        return emb(t)

    r = StreamRunner(bb, segment_len=6, embed=embed, head=head)
    logits, _ = r.run(tok)
    assert seen == [6, 6, 5] and logits.shape == (2, 17, 11)
    torch.testing.assert_close(logits, head(bb(emb(tok))[0]), atol=1e-5, rtol=1e-5)


def test_iter_is_incremental_and_matches_run():
    torch.manual_seed(0)
    bb = create_backbone("test_attention")
    mem = create_memory("sink_window", d_model=D, sinks=1, window=4)
    r = StreamRunner(bb, mem, segment_len=5, progress=False)
    x = torch.randn(1, 12, D)
    parts = [(s, y.shape[1]) for s, y, _ in r.iter(x)]
    assert parts == [(0, 5), (5, 5), (10, 2)]


@pytest.mark.parametrize("k,reach", [(1, False), (2, True), (None, True)])
def test_detach_every_bounds_backprop(k, reach):
    torch.manual_seed(0)
    bb = create_backbone("test_attention")
    r = StreamRunner(bb, segment_len=4, detach_every=k)
    x = torch.randn(1, 8, D, requires_grad=True)
    y, _ = r.run(x)
    y[:, 4:].sum().backward()
    assert (float(x.grad[:, :4].abs().sum()) > 0) == reach


def test_no_carry_makes_memory_the_only_path():
    torch.manual_seed(0)
    bb = create_backbone("test_attention")
    r = StreamRunner(bb, segment_len=4, carry_backbone_state=False)
    x = torch.randn(1, 8, D)
    y, st = r.run(x)
    torch.testing.assert_close(y[:, 4:], bb(x[:, 4:])[0])
    assert st.backbone is None


def test_stream_save_restore_continue(tmp_path):
    torch.manual_seed(0)
    bb = create_backbone("test_attention")
    mem = create_memory("retrieval", d_model=D, block_size=3, top_k=2)
    torch.nn.init.normal_(mem.attn.gate)
    torch.nn.init.normal_(mem.attn.o.weight)
    r = StreamRunner(bb, mem, segment_len=5)
    x = torch.randn(2, 31, D)
    with torch.no_grad():
        full, _ = r.run(x)
        a, st = r.run(x[:, :15])
        r.save_state(st, tmp_path / "stream.safetensors")
        b, _ = r.run(x[:, 15:], r.load_state(tmp_path / "stream.safetensors"))
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)
    # another segment length (or backbone, or memory config) refuses the state
    r2 = StreamRunner(bb, mem, segment_len=6)
    with pytest.raises(MemoryStateError, match="segment_len"):
        r2.load_state(tmp_path / "stream.safetensors")
    r3 = StreamRunner(create_backbone("test_attention", n_layers=3), mem, segment_len=5)
    with pytest.raises(MemoryStateError, match="backbone"):
        r3.load_state(tmp_path / "stream.safetensors")


def test_runner_rejects_bad_arguments():
    bb = create_backbone("test_attention")
    with pytest.raises(ValueError, match="segment_len"):
        StreamRunner(bb, segment_len=0)
    with pytest.raises(ValueError, match="detach_every"):
        StreamRunner(bb, detach_every=0)
    other = create_backbone("test_attention")
    with pytest.raises(ValueError, match="own backbone"):
        StreamRunner(other, create_memory("carried_state", backbone=bb))


def test_state_nbytes_counts_backbone_and_memory():
    bb = create_backbone("test_attention")
    mem = create_memory("compressive_bank", d_model=D, budget=4)
    r = StreamRunner(bb, mem, segment_len=3)
    with torch.no_grad():
        _, st = r.run(torch.randn(1, 9, D))
    assert st.nbytes() > mem.state_nbytes(st.memory) > 0
