"""Streamed evaluation of one long input: equals one full forward, and memory stays flat."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from longstream.memory import StreamRunner, create_memory
from longstream.pipelines.common import build_backbone, masked_mean, stream_evaluate
from longstream.pipelines.common.streaming import iter_stream


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("test_mamba").eval()


def _x(L, seed=0, d=16):
    return torch.randn(2, L, d, generator=torch.Generator().manual_seed(seed))


def test_streamed_equals_full_forward(backbone):
    x = _x(2048)
    with torch.no_grad():
        full, _ = backbone(x)
    res = stream_evaluate(backbone, x, segment_len=300)  # 300 does not divide 2048: a short last segment
    assert res.segments == 7 and res.tokens == 2048
    torch.testing.assert_close(res.outputs, full, atol=1e-5, rtol=1e-5)
    assert (res.outputs - full).abs().max().item() <= 1e-5
    # online pooling equals pooling the full output
    res = stream_evaluate(backbone, x, segment_len=512, keep_outputs=False, pool="mean")
    assert res.outputs is None
    torch.testing.assert_close(res.pooled, full.mean(1), atol=1e-5, rtol=1e-5)
    res = stream_evaluate(backbone, x, segment_len=512, keep_outputs=False, pool="last")
    torch.testing.assert_close(res.pooled, full[:, -1], atol=1e-5, rtol=1e-5)


def test_continue_from_state_and_runner_with_memory(backbone):
    x = _x(1024, seed=1)
    with torch.no_grad():
        full, _ = backbone(x)
    a = stream_evaluate(backbone, x[:, :600], segment_len=256)
    b = stream_evaluate(backbone, x[:, 600:], segment_len=256, state=a.state)
    torch.testing.assert_close(torch.cat([a.outputs, b.outputs], 1), full, atol=1e-5, rtol=1e-5)
    runner = StreamRunner(None, create_memory("carried_state", backbone=backbone), segment_len=128)
    res = stream_evaluate(runner, x)
    assert res.segments == 8
    torch.testing.assert_close(res.outputs, full, atol=1e-5, rtol=1e-5)


def test_padded_rows_pool_only_valid_tokens(backbone):
    x = _x(700, seed=2)
    mask = torch.ones(2, 700, dtype=torch.bool)
    mask[1, 450:] = False  # row 1 is right-padded
    with torch.no_grad():
        full, _ = backbone(x, mask=mask)
    res = stream_evaluate(backbone, x, mask=mask, segment_len=200, pool="mean")
    torch.testing.assert_close(res.pooled, masked_mean(full, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.outputs[mask], full[mask], atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[1, 450:] = 1e3  # padding content must not change the pooled vector
    res2 = stream_evaluate(backbone, x2, mask=mask, segment_len=200, pool="mean")
    torch.testing.assert_close(res2.pooled, res.pooled, atol=1e-5, rtol=1e-5)


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inspecting torch.distributed.reduce_op warns
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_memory_does_not_grow_with_input_length(backbone):
    def measure(L):
        x = _x(L, seed=3)
        base = _live_tensors()  # includes x itself
        extra: list[int] = []

        def count(start, y, state):  # after segment 4 and after the last one (gc scans are slow)
            if state.segments == 4 or start + y.shape[1] == L:
                extra.append(_live_tensors() - base)

        res = stream_evaluate(backbone, x, segment_len=512, keep_outputs=False, on_segment=count)
        return res, extra

    (short, e_short), (long, e_long) = measure(2048), measure(8192)
    assert (short.segments, long.segments) == (4, 16)
    assert short.state.nbytes() == long.state.nbytes() > 0
    assert short.peak_state_bytes == long.peak_state_bytes == long.state.nbytes()
    # tensors alive beyond the input while streaming: as many at segment 16 of 8K as at segment 4 of 2K
    assert len(e_long) == 2 and e_long[-1] == e_long[0] == e_short[-1] < 40
    kept = stream_evaluate(backbone, _x(2048, seed=3), segment_len=512)  # keep_outputs=True does hold them
    assert kept.outputs.shape == (2, 2048, 16)


def test_iter_stream_restores_training_mode_and_no_grad(backbone):
    backbone.train()
    try:
        x = _x(64)
        modes = []
        for seg in iter_stream(backbone, x, segment_len=32):
            modes.append(backbone.training)
            assert not seg.output.requires_grad
        assert modes == [False, False] and backbone.training
    finally:
        backbone.eval()
