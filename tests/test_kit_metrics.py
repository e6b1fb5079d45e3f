"""Metrics: parity with scikit-learn, hand-computed examples, JSON-able, never NaN."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from longstream.pipelines.common import (
    accuracy,
    accuracy_by_length,
    classification_report,
    confusion_matrix,
    macro_f1,
    mcc,
    top_k_accuracy,
)


def _data(seed, n=300, c=5):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, c, n)
    p = np.where(rng.random(n) < 0.6, t, rng.integers(0, c, n))
    scores = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[t] * rng.random((n, 1))
    return t, p, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_sklearn(seed):
    t, p, s = _data(seed)
    assert accuracy(t, p) == pytest.approx(skm.accuracy_score(t, p))
    assert macro_f1(t, p) == pytest.approx(skm.f1_score(t, p, average="macro"))
    assert mcc(t, p) == pytest.approx(skm.matthews_corrcoef(t, p))
    assert confusion_matrix(t, p, 5) == skm.confusion_matrix(t, p, labels=range(5)).tolist()
    for k in (1, 2, 3):
        assert top_k_accuracy(t, s, k) == pytest.approx(skm.top_k_accuracy_score(t, s, k=k, labels=range(5)))
    # torch tensors in, same numbers out
    assert macro_f1(torch.as_tensor(t), torch.as_tensor(p)) == pytest.approx(macro_f1(t, p))


def test_binary_and_degenerate_cases_match_sklearn():
    t = [0, 1, 1, 0, 1, 1]
    p = [0, 1, 0, 0, 1, 1]
    assert mcc(t, p) == pytest.approx(skm.matthews_corrcoef(t, p))
    assert macro_f1(t, p) == pytest.approx(skm.f1_score(t, p, average="macro"))
    same = [1, 1, 1]
    assert mcc([0, 1, 1], same) == 0.0 == skm.matthews_corrcoef([0, 1, 1], same)  # undefined -> 0
    assert macro_f1([0, 0], [1, 1]) == 0.0
    with pytest.raises(ValueError, match="nothing to score"):
        accuracy([], [])


def test_hand_computed_example():
    t = [0, 0, 1, 1, 2]
    p = [0, 1, 1, 1, 0]
    assert accuracy(t, p) == pytest.approx(3 / 5)
    assert confusion_matrix(t, p) == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # F1: class0 2*1/(2+1+1)=0.5, class1 2*2/(4+1+0)=0.8, class2 0 -> mean 1.3/3
    assert macro_f1(t, p) == pytest.approx(1.3 / 3)
    scores = [[0.5, 0.3, 0.2], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3], [0.5, 0.1, 0.4]]
    # true-class ranks: 1, 2, 1, 1, 2 -> top1 3/5, top2 5/5
    assert top_k_accuracy(t, scores, 1) == pytest.approx(3 / 5)
    assert top_k_accuracy(t, scores, 2) == 1.0


def test_accuracy_by_length_grid_and_empty_bucket():
    lengths = [10, 20, 150, 160, 170, 5000]
    t = [1, 1, 0, 0, 0, 1]
    p = [1, 0, 0, 0, 1, 1]
    grid = accuracy_by_length(lengths, t, p, [0, 100, 1000, 2000])
    assert grid == [
        {"lo": 0, "hi": 100, "count": 2, "accuracy": 0.5},
        {"lo": 100, "hi": 1000, "count": 3, "accuracy": pytest.approx(2 / 3)},
        {"lo": 1000, "hi": 2000, "count": 0, "accuracy": None},  # 5000 lies outside the edges
    ]
    # against a straightforward loop on random data
    rng = np.random.default_rng(0)
    n = rng.integers(1, 1000, 500)
    tt, pp = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    edges = [0, 250, 500, 750, 1000]
    for cell, lo, hi in zip(accuracy_by_length(n, tt, pp, edges), edges, edges[1:]):
        sel = [i for i in range(500) if lo <= n[i] < hi]
        assert cell["count"] == len(sel)
        assert cell["accuracy"] == pytest.approx(sum(tt[i] == pp[i] for i in sel) / len(sel))
    with pytest.raises(ValueError, match="increasing"):
        accuracy_by_length(lengths, t, p, [100, 10])


def test_report_is_json_and_never_nan():
    t, p, s = _data(3)
    rep = classification_report(t, p, s, ks=(1, 3), n_classes=5)
    text = json.dumps(rep, allow_nan=False)  # raises on NaN / inf
    back = json.loads(text)
    assert set(back) == {"accuracy", "macro_f1", "mcc", "n", "top1_accuracy", "top3_accuracy", "confusion_matrix"}
    assert back["top1_accuracy"] == pytest.approx(accuracy(t, s.argmax(1)))
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for k, v in back.items() if k != "confusion_matrix")
    assert sum(map(sum, back["confusion_matrix"])) == back["n"] == 300
    grid = accuracy_by_length([1, 2], [0, 0], [0, 1], [0, 10, 20])
    json.dumps(grid, allow_nan=False)
