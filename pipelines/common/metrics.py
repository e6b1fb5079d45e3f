"""Classification metrics that every pipeline reports, as plain JSON-able numbers.

Inputs may be tensors, numpy arrays or lists. Every function returns Python ``float`` /
``int`` / ``list`` values (never tensors, never NaN), so the result goes straight into
``evaluate()``'s dict and ``config.json``. Conventions where a metric is undefined:

- no examples at all: a ``ValueError`` (there is nothing to score; a 0 would be a lie);
- macro-F1 averages over the classes that occur in ``y_true`` or ``y_pred`` (or over
  ``labels`` when given); a class with zero precision and recall scores 0;
- MCC is 0.0 when its denominator is 0 (e.g. every prediction is the same class), as in
  scikit-learn;
- :func:`accuracy_by_length` reports an empty bucket with ``count: 0`` and
  ``accuracy: None`` (JSON ``null``), never NaN.

The definitions follow scikit-learn's (``accuracy_score``, ``top_k_accuracy_score``,
``f1_score(average="macro")``, ``matthews_corrcoef``, ``confusion_matrix``); the tests
check parity with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "accuracy_by_length",
    "classification_report",
    "confusion_matrix",
    "macro_f1",
    "mcc",
    "top_k_accuracy",
]


def _np(a: Any, what: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.size == 0:
        raise ValueError(f"{what} is empty: there is nothing to score")
    return arr


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _np(y_true, "y_true").reshape(-1), _np(y_pred, "y_pred").reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    return t.astype(np.int64), p.astype(np.int64)


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of ``y_pred == y_true``."""
    t, p = _pair(y_true, y_pred)
    return float((t == p).mean())


def top_k_accuracy(y_true: Any, scores: Any, k: int = 5) -> float:
    """Fraction of rows whose true class is among the ``k`` highest ``scores`` (N, C).

    Ties are broken by class index (a lower index ranks first; scikit-learn ranks the
    higher one first, which only matters for exactly tied scores); ``k >= C`` gives 1.0.
    """
    t = _np(y_true, "y_true").reshape(-1).astype(np.int64)
    s = _np(scores, "scores").astype(np.float64)
    if s.ndim != 2 or s.shape[0] != t.size:
        raise ValueError(f"scores must be (N={t.size}, C), got {s.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    true_score = s[np.arange(t.size), t]
    # rank = number of classes that beat the true one (higher score, or equal with a lower index)
    idx = np.arange(s.shape[1])[None, :]
    beats = (s > true_score[:, None]) | ((s == true_score[:, None]) & (idx < t[:, None]))
    return float((beats.sum(1) < k).mean())


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> list[list[int]]:
    """``m[i][j]`` = number of examples of true class ``i`` predicted as ``j`` (classes 0..C-1)."""
    t, p = _pair(y_true, y_pred)
    if (t < 0).any() or (p < 0).any():
        raise ValueError("class ids must be >= 0")
    c = int(max(t.max(), p.max()) + 1) if n_classes is None else n_classes
    if t.max() >= c or p.max() >= c:
        raise ValueError(f"a class id is >= n_classes={c}")
    m = np.zeros((c, c), dtype=np.int64)
    np.add.at(m, (t, p), 1)
    return m.tolist()


def _classes(t: np.ndarray, p: np.ndarray, labels: Sequence[int] | None) -> np.ndarray:
    return np.asarray(sorted(set(t.tolist()) | set(p.tolist())) if labels is None else list(labels))


def macro_f1(y_true: Any, y_pred: Any, labels: Sequence[int] | None = None) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN) (0 for a class with none)."""
    t, p = _pair(y_true, y_pred)
    f1s = []
    for c in _classes(t, p, labels):
        tp = int(((t == c) & (p == c)).sum())
        denom = 2 * tp + int(((t != c) & (p == c)).sum()) + int(((t == c) & (p != c)).sum())
        f1s.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(f1s))


def mcc(y_true: Any, y_pred: Any) -> float:
    """Matthews correlation coefficient (multi-class, Gorodkin's R_K); 0.0 when undefined."""
    t, p = _pair(y_true, y_pred)
    classes = _classes(t, p, None)
    ti = np.searchsorted(classes, t)
    pi = np.searchsorted(classes, p)
    c = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(c, (ti, pi), 1.0)
    n, correct = c.sum(), np.trace(c)
    tk, pk = c.sum(1), c.sum(0)  # true / predicted counts per class
    cov_tp = correct * n - tk @ pk
    cov_pp = n * n - pk @ pk
    cov_tt = n * n - tk @ tk
    denom = math.sqrt(cov_tt * cov_pp)
    return 0.0 if denom == 0 else float(cov_tp / denom)


def accuracy_by_length(
    lengths: Any, y_true: Any, y_pred: Any, edges: Sequence[float]
) -> list[dict[str, Any]]:
    """Accuracy per length bucket: ``[{"lo", "hi", "count", "accuracy"}, ...]``.

    ``edges`` ``[e0, e1, ..., ek]`` (increasing) make buckets ``e0 <= len < e1``, ...,
    ``e(k-1) <= len < ek``; lengths outside ``[e0, ek)`` are not counted. An empty bucket
    has ``count: 0`` and ``accuracy: None``.
    """
    n = _np(lengths, "lengths").reshape(-1).astype(np.float64)
    t, p = _pair(y_true, y_pred)
    if n.size != t.size:
        raise ValueError(f"{n.size} lengths for {t.size} labels")
    e = [float(v) for v in edges]
    if len(e) < 2 or any(b <= a for a, b in zip(e, e[1:])):
        raise ValueError(f"edges must be at least two increasing numbers, got {list(edges)}")
    out = []
    for lo, hi in zip(e, e[1:]):
        sel = (n >= lo) & (n < hi)
        cnt = int(sel.sum())
        acc = float((t[sel] == p[sel]).mean()) if cnt else None
        out.append({"lo": int(lo) if lo.is_integer() else lo, "hi": int(hi) if hi.is_integer() else hi,
                    "count": cnt, "accuracy": acc})
    return out


def classification_report(y_true: Any, y_pred: Any, scores: Any = None, *, ks: Sequence[int] = (5,),
                          n_classes: int | None = None) -> dict[str, Any]:
    """The usual bundle: ``accuracy``, ``macro_f1``, ``mcc``, ``n``, ``top{k}_accuracy`` (when
    ``scores`` are given) and ``confusion_matrix``; everything JSON-able."""
    out: dict[str, Any] = {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred),
                           "mcc": mcc(y_true, y_pred), "n": int(_pair(y_true, y_pred)[0].size)}
    if scores is not None:
        for k in ks:
            out[f"top{k}_accuracy"] = top_k_accuracy(y_true, scores, k)
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, n_classes)
    return out
