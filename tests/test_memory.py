"""Memory modules: protocol, no-op at init, segment invariance, detach, save/restore, budgets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from longstream.backbones import create_backbone
from longstream.memory import MemoryStateError, StreamRunner, create_memory, list_memories

torch.set_num_threads(1)
D = 16
ALL = ["carried_state", "compressive_bank", "memory_tokens", "retrieval", "sink_window"]
SMALL_KW = {
    "compressive_bank": {"budget": 8},
    "sink_window": {"sinks": 2, "window": 5},
    "retrieval": {"block_size": 4, "top_k": 2, "max_blocks": 6, "local": True},
    "memory_tokens": {"num_tokens": 3},
    "carried_state": {},
}


# every one is built by the tests: a missing mixer fails them, it never shrinks this list
STREAM_BACKBONES = ["test_attention", "test_s4d", "test_mamba", "test_hybrid"]
FIXED_STATE_BB = "test_mamba"  # constant-size recurrent state


def make(name: str, backbone=None, randomize_gate: bool = True, **over):
    torch.manual_seed(0)
    bb = backbone if backbone is not None else create_backbone("test_attention")
    kw = dict(SMALL_KW[name], **over)
    if name in ("carried_state", "memory_tokens"):
        kw["backbone"] = bb
    m = create_memory(name, d_model=D, **kw)
    if randomize_gate:  # exercise the read path (it is a no-op at init)
        for n_, p in m.named_parameters():
            if n_.endswith("gate") or n_.endswith("salience.weight") or n_.endswith("attn.o.weight"):
                torch.nn.init.normal_(p, std=0.5)
    runner = StreamRunner(None if m.wraps_backbone else bb, m, segment_len=7)
    return m, bb, runner


def test_registry_lists_all_and_rejects_unknown():
    assert list_memories() == ALL
    with pytest.raises(KeyError, match="unknown memory"):
        create_memory("nope", d_model=D)
    with pytest.raises(TypeError, match="backbone"):
        create_memory("carried_state", d_model=D)


@pytest.mark.parametrize("name", ["compressive_bank", "sink_window", "retrieval"])
def test_read_is_noop_at_init(name):
    m, _, _ = make(name, randomize_gate=False)
    st = m.init_state(2)
    x = torch.randn(2, 9, D)
    _, st = m(x, st)  # memory now holds something
    q = torch.randn(2, 5, D)
    out, _ = m(q, st)
    torch.testing.assert_close(out, q)


def test_memory_tokens_carry_nothing_at_init():
    m, _, _ = make("memory_tokens", randomize_gate=False)
    x = torch.randn(2, 6, D)
    st_a = m.init_state(2)
    _, st_b = m(torch.randn(2, 6, D), st_a)
    ya, _ = m(x, st_a)
    yb, _ = m(x, st_b)
    torch.testing.assert_close(ya, yb)


@pytest.mark.parametrize("bb_name", STREAM_BACKBONES)
@pytest.mark.parametrize("name", ["carried_state", "sink_window"])
def test_segment_invariant_memories(name, bb_name):
    m, bb, _ = make(name, backbone=create_backbone(bb_name))
    assert type(m).segment_invariant
    x = torch.randn(2, 23, D)
    outs = []
    for seg in (None, 1, 5, 8):
        r = StreamRunner(None if m.wraps_backbone else bb, m, segment_len=seg)
        outs.append(r.run(x)[0])
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_save_restore_continue_equals_uninterrupted(name, tmp_path):
    m, _, r = make(name)
    x = torch.randn(2, 30, D)
    with torch.no_grad():
        full, _ = r.run(x)
        first, st = r.run(x[:, :14])
        r.save_state(st, tmp_path / "s.safetensors")
        st2 = r.load_state(tmp_path / "s.safetensors")
        rest, _ = r.run(x[:, 14:], st2)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-5)
    # the memory-level API round-trips too
    m.save_state(st.memory, tmp_path / "m.safetensors")
    back = m.load_state(tmp_path / "m.safetensors")
    assert back.nbytes() == st.memory.nbytes()


@pytest.mark.parametrize(
    "name,over",
    [("compressive_bank", {"budget": 12}), ("sink_window", {"window": 9}), ("retrieval", {"top_k": 3})],
)
def test_wrong_config_restore_is_refused(name, over, tmp_path):
    m, _, r = make(name)
    st = r.run(torch.randn(1, 10, D))[1]
    m.save_state(st.memory, tmp_path / "m.safetensors")
    r.save_state(st, tmp_path / "s.safetensors")
    other, _, r2 = make(name, **over)
    key = next(iter(over))
    with pytest.raises(MemoryStateError, match=key):
        other.load_state(tmp_path / "m.safetensors")
    with pytest.raises(MemoryStateError, match="memory"):
        r2.load_state(tmp_path / "s.safetensors")
    bank, _, _ = make("compressive_bank")
    if name != "compressive_bank":
        with pytest.raises(MemoryStateError, match="memory type"):
            bank.load_state(tmp_path / "m.safetensors")


def test_restore_of_garbage_file_is_clear(tmp_path):
    m, _, _ = make("sink_window")
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"not a safetensors file")
    with pytest.raises(MemoryStateError, match="cannot read"):
        m.load_state(p)
    with pytest.raises(FileNotFoundError):
        m.load_state(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("name", ALL)
def test_detach_cuts_the_graph(name):
    m, _, r = make(name)
    x = torch.randn(1, 14, D, requires_grad=True)
    st = r.init_state(1)
    _, _, st = next(iter(r.iter(x[:, :7], st)))  # detach_every=1: detached after the segment
    leaves = [t for t in torch.utils._pytree.tree_flatten(st.memory.__dict__)[0] if isinstance(t, torch.Tensor)]
    leaves += [t for t in torch.utils._pytree.tree_flatten(st.backbone)[0] if isinstance(t, torch.Tensor)]
    assert leaves and all(t.grad_fn is None for t in leaves)
    # with detaching, the second segment's loss cannot reach the first segment's input
    y2, _ = r.step_segment(x[:, 7:], st)
    y2.sum().backward()
    assert x.grad is None or float(x.grad[:, :7].abs().sum()) == 0.0


@pytest.mark.parametrize("name", ["carried_state", "sink_window", "compressive_bank", "retrieval", "memory_tokens"])
def test_gradient_crosses_segments_without_detach(name):
    m, bb, _ = make(name)
    r = StreamRunner(None if m.wraps_backbone else bb, m, segment_len=7, detach_every=None)
    x = torch.randn(1, 16, D, requires_grad=True)
    y, _ = r.run(x)
    y[:, 14:].sum().backward()  # loss only on the third segment
    assert float(x.grad[:, :7].abs().sum()) > 0


def test_budgets_are_respected_and_state_stays_flat():
    torch.manual_seed(0)
    sizes = {}
    for name in ALL:
        m, _, r = make(name, backbone=create_backbone(FIXED_STATE_BB))
        nbytes = []
        with torch.no_grad():
            st = r.init_state(2)
            for _, _, new_state in r.iter(torch.randn(2, 7 * 20, D), st):
                nbytes.append(new_state.memory.nbytes())
            st = new_state
        sizes[name] = nbytes
        if name == "compressive_bank":
            assert st.memory.entries.shape[1] <= 8 and int(st.memory.valid.sum(-1).max()) <= 8
            assert torch.allclose(st.memory.weight.sum(-1), torch.full((2,), 140.0))  # nothing lost
        if name == "sink_window":
            assert st.memory.win.shape[1] == 5 and st.memory.sink.shape[1] == 2
        if name == "retrieval":
            assert int(m.num_blocks(st.memory).max()) == 6
        # flat: the last half of the stream does not grow the state
        assert nbytes[-1] == nbytes[len(nbytes) // 2], (name, nbytes)


def test_compressive_bank_merges_most_similar_adjacent_pair():
    bank = create_memory("compressive_bank", d_model=2, budget=3)
    st = bank.init_state(1)
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.05, 1.0], [-1.0, 0.0]]])  # entries 1 and 2 nearly equal
    st = bank.write(st, e)
    assert st.entries.shape[1] == 3
    torch.testing.assert_close(st.entries[0, 1], torch.tensor([0.025, 1.0]))
    torch.testing.assert_close(st.weight[0], torch.tensor([1.0, 2.0, 1.0]))
    torch.testing.assert_close(st.position[0], torch.tensor([0.0, 1.5, 3.0]))


def test_compressive_bank_pools_frames():
    bank = create_memory("compressive_bank", d_model=2, budget=10)
    st = bank.init_state(1)
    x = torch.tensor([[[1.0, 0], [3.0, 0], [0, 2.0], [0, 4.0], [0, 6.0]]])
    st = bank.write(st, x, frame_ids=torch.tensor([[0, 0, 1, 1, 1]]))
    torch.testing.assert_close(st.entries[0], torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
    torch.testing.assert_close(st.weight[0], torch.tensor([2.0, 3.0]))


def test_sink_window_sees_exactly_sinks_and_window():
    m, _, _ = make("sink_window")  # sinks 2, window 5
    x = torch.randn(1, 20, D)
    base = m(x, m.init_state(1))[0]
    for j, visible in [(0, True), (1, True), (2, False), (14, False), (15, True), (19, True)]:
        x2 = x.clone()
        x2[0, j] += 3.0
        out = m(x2, m.init_state(1))[0]
        changed = not torch.allclose(out[0, 19], base[0, 19])
        assert changed == visible, (j, visible)


def identity_retrieval(max_blocks: int | None, read_too: bool = False):
    """A 4-wide retrieval memory (blocks of 2, top-1) whose projections are identities."""
    torch.manual_seed(0)
    m = create_memory("retrieval", d_model=4, block_size=2, top_k=1, d_key=4, max_blocks=max_blocks)
    with torch.no_grad():
        for lin in (m.attn.q, m.attn.k) + ((m.attn.v, m.attn.o) if read_too else ()):
            lin.weight.copy_(torch.eye(4))
    return m


def test_retrieval_selects_the_matching_block_exactly():
    m = identity_retrieval(None)
    st = m.init_state(1)
    blocks = torch.tensor([[[1.0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 5, 0], [0, 0, 5, 0]]])
    st = m.write(st, blocks)
    assert int(m.num_blocks(st)) == 3
    q = m.attn.q(torch.tensor([[[0.0, 0, 1, 0]]]))
    idx, ok, _ = m._select(st, q, None)
    assert ok.all() and int(st.start[0, idx[0, 0]]) == 4


def test_retrieval_lru_eviction_keeps_used_blocks():
    m = identity_retrieval(2)
    st = m.init_state(1)
    needle = torch.tensor([[[0.0, 0, 9, 0], [0, 0, 9, 0]]])
    st = m.write(st, needle)
    query = torch.tensor([[[0.0, 0, 1, 0]]])
    for _ in range(4):  # each segment asks for the needle, then adds a filler block
        _, st = m(query, st)
        st = m.write(st, torch.tensor([[[0.0, 1, 0, 0]]]))
    assert int(m.num_blocks(st)) == 2
    assert 0 in st.start[0][st.valid[0]].tolist()  # the needle block (start 0) survived


@pytest.mark.parametrize("name", ["compressive_bank", "sink_window", "retrieval", "carried_state"])
def test_reset_rows(name):
    m, _, r = make(name, backbone=create_backbone(FIXED_STATE_BB))
    with torch.no_grad():
        st = r.run(torch.randn(2, 14, D))[1]
        st = r.reset(st, torch.tensor([True, False]))
        x = torch.randn(2, 7, D)
        y, _ = r.run(x, st)
        fresh, _ = r.run(x[:1])
    torch.testing.assert_close(y[:1], fresh, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["compressive_bank", "sink_window", "retrieval"])
def test_padding_does_not_leak(name):
    m, _, _ = make(name)
    x = torch.randn(2, 12, D)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    with torch.no_grad():
        st = m.init_state(2)
        _, st = m(x[:, :6], st)
        _, st = m(x[:, 6:], st, mask=mask[:, 6:])
        q = torch.randn(2, 4, D)
        y, _ = m(q, st)
        st1 = m.init_state(1)
        _, st1 = m(x[1:, :6], st1)
        _, st1 = m(x[1:, 6:8], st1)
        y1, _ = m(q[1:], st1)
    torch.testing.assert_close(y[1:], y1, atol=1e-5, rtol=1e-5)


def test_bad_input_shape_is_clear():
    m, _, _ = make("sink_window")
    with pytest.raises(ValueError, match="expects"):
        m(torch.randn(2, 3, D + 1), m.init_state(2))


def test_retrieval_each_query_fetches_its_own_blocks():
    # two queries in one segment ask for different blocks; with top_k 1 each must read its own
    m = identity_retrieval(None, read_too=True)
    st = m.init_state(1)
    st = m.write(st, torch.tensor([[[9.0, 0, 0, 0], [9, 0, 0, 0], [0, 9, 0, 0], [0, 9, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]]))
    q = torch.tensor([[[5.0, 0, 0, 0], [0, 5, 0, 0]]])
    read = m.read(st, q)
    assert read[0, 0, 0] > 10 * read[0, 0, 1].abs() and read[0, 1, 1] > 10 * read[0, 1, 0].abs()
    idx, ok, _ = m._select(st, m.attn.queries(q), None)
    assert ok.all() and [int(st.start[0, i]) for i in idx[0, :, 0]] == [0, 2]


def test_retrieval_local_window_is_causal_and_counts_pending_tokens():
    torch.manual_seed(0)
    m = create_memory("retrieval", d_model=D, block_size=4, top_k=2, local=True)
    torch.nn.init.normal_(m.attn.o.weight)
    st = m.init_state(1)
    _, st = m(torch.randn(1, 6, D), st)  # one block stored, two tokens pending
    assert int(st.pend_n[0]) == 2
    x = torch.randn(1, 5, D)
    base = m.read(st, x)
    x2 = x.clone()
    x2[0, 3] += 3.0
    out = m.read(st, x2)
    torch.testing.assert_close(out[0, :3], base[0, :3])  # earlier queries do not see token 3
    assert not torch.allclose(out[0, 3:], base[0, 3:])  # token 3 and later do
    st2 = dataclasses.replace(st, pend_n=torch.zeros_like(st.pend_n))
    assert not torch.allclose(m.read(st2, x)[0, 0], base[0, 0])  # the pending tokens are read
