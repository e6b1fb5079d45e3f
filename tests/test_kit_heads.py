"""Masked pooling and heads: hand-computed values, loops, and padding that never leaks."""

from __future__ import annotations

import pytest
import torch

from longstream.pipelines.common import (
    AttentionPool,
    MaskedPool,
    RegressionHead,
    SequenceClassifier,
    TokenClassifier,
    UserError,
    ctc_greedy_decode,
    masked_max,
    masked_mean,
    pool_last,
)

LENGTHS = [5, 2, 7, 1]


def _batch(seed=0, d=6, fill=0.0):
    g = torch.Generator().manual_seed(seed)
    b, L = len(LENGTHS), max(LENGTHS)
    x = torch.randn(b, L, d, generator=g)
    mask = torch.arange(L)[None] < torch.tensor(LENGTHS)[:, None]
    return x.masked_fill(~mask[..., None], fill), mask


def _repad(x, mask, value):
    return x.masked_fill(~mask[..., None], value)


def test_pools_match_per_row_loop():
    x, mask = _batch()
    for i, n in enumerate(LENGTHS):
        torch.testing.assert_close(masked_mean(x, mask)[i], x[i, :n].mean(0))
        torch.testing.assert_close(masked_max(x, mask)[i], x[i, :n].amax(0))
        torch.testing.assert_close(pool_last(x, mask)[i], x[i, n - 1])
    # hand example: mean of [1, 3] (third position padded with 100) is 2; last is 3
    t = torch.tensor([[[1.0], [3.0], [100.0]]])
    m = torch.tensor([[True, True, False]])
    assert masked_mean(t, m).item() == 2.0 and pool_last(t, m).item() == 3.0 and masked_max(t, m).item() == 3.0
    assert masked_mean(t).item() == pytest.approx(104 / 3)  # no mask: every position counts


def test_last_with_holes_and_empty_rows():
    x = torch.arange(8.0).view(2, 4, 1)
    m = torch.tensor([[True, False, True, False], [False, False, False, False]])
    assert pool_last(x, m)[:, 0].tolist() == [2.0, 0.0]  # last True index; empty row -> zeros
    assert masked_mean(x, m)[:, 0].tolist() == [1.0, 0.0]
    assert masked_max(x, m)[:, 0].tolist() == [2.0, 0.0]


@pytest.mark.parametrize("pool", ["mean", "max", "last", "attention", "cls"])
def test_padding_never_influences_pooled_heads(pool):
    torch.manual_seed(0)
    head = SequenceClassifier(6, 3, pool=pool, hidden=8, n_heads=2).eval()
    if pool == "attention":
        torch.nn.init.normal_(head.pool.attn.query)  # a non-trivial query
    x, mask = _batch()
    ref = head(x, mask)
    for value in (5.0, -1e4, float("nan"), float("inf")):
        out = head(_repad(x, mask, value), mask)
        assert torch.equal(out, ref), (pool, value)
    assert ref.shape == (4, 3) and torch.isfinite(ref).all()


def test_attention_pool_is_masked_softmax_over_valid_tokens():
    torch.manual_seed(1)
    ap = AttentionPool(4, n_heads=1)
    torch.nn.init.normal_(ap.query)
    x, mask = _batch(d=4)
    out = ap(x, mask)
    for i, n in enumerate(LENGTHS):
        s = (ap.key(x[i, :n]) @ ap.query[0]) / 2.0  # sqrt(d / h) = 2
        w = torch.softmax(s, 0)
        torch.testing.assert_close(out[i], (w[:, None] * x[i, :n]).sum(0))
    w = ap.weights(x, mask)
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 1))
    assert (w[~mask[:, None, :].expand_as(w)] == 0).all()
    fresh = AttentionPool(4)  # zero query: starts as the masked mean
    torch.testing.assert_close(fresh(x, mask), masked_mean(x, mask))


def test_cls_pool_index_and_tensor_index():
    x, _ = _batch()
    torch.testing.assert_close(MaskedPool("cls")(x), x[:, 0])
    torch.testing.assert_close(MaskedPool("cls", cls_index=-1)(x), x[:, -1])
    idx = torch.tensor([1, 0, 3, 0])
    torch.testing.assert_close(MaskedPool("cls")(x, cls_index=idx), x[torch.arange(4), idx])


def test_unknown_pool_is_a_user_error():
    with pytest.raises(UserError, match="unknown pooling 'median'.*mean"):
        MaskedPool("median")


def test_token_classifier_per_token_and_padding_filled():
    torch.manual_seed(0)
    head = TokenClassifier(6, 5, blank=0).eval()
    x, mask = _batch()
    y = head(x, mask)
    assert y.shape == (4, 7, 5)
    torch.testing.assert_close(y[mask], head.mlp(x[mask]))
    assert (y[~mask] == 0).all()
    assert torch.equal(head(_repad(x, mask, float("nan")), mask), y)
    labels = torch.randint(0, 5, (4, 7))
    loss = TokenClassifier.loss(y, labels, mask)
    ref = torch.nn.functional.cross_entropy(y[mask], labels[mask])
    torch.testing.assert_close(loss, ref)


def test_ctc_loss_and_greedy_decode():
    torch.manual_seed(0)
    head = TokenClassifier(6, 4, blank=0)
    x, mask = _batch()
    lengths = mask.sum(1)
    targets = torch.tensor([[1, 2], [3, 0], [1, 1], [2, 0]])
    tlen = torch.tensor([2, 1, 2, 1])
    loss = head.ctc_loss(head(x, mask), lengths, targets, tlen)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert head.mlp.weight.grad.abs().sum() > 0
    # hand example: frames 1 1 0 1 2 2 0 (blank 0) -> [1, 1, 2]; length 3 -> [1]
    onehot = torch.nn.functional.one_hot(torch.tensor([[1, 1, 0, 1, 2, 2, 0]]), 3).float()
    assert ctc_greedy_decode(onehot) == [[1, 1, 2]]
    assert ctc_greedy_decode(onehot, torch.tensor([3])) == [[1]]
    with pytest.raises(ValueError, match="blank"):
        TokenClassifier(6, 4).ctc_loss(x, lengths, targets, tlen)


def test_regression_head_is_pool_plus_linear():
    torch.manual_seed(0)
    head = RegressionHead(6, 2, pool="mean")
    x, mask = _batch()
    ref = masked_mean(x, mask) @ head.mlp.weight.T + head.mlp.bias
    torch.testing.assert_close(head(x, mask), ref)
