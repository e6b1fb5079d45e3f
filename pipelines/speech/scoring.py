"""Scores of a connected-digit transcript against a stream's ground truth.

- **Digit error rate** (DER): word-level edit distance (substitutions + deletions +
  insertions) over the reference length, computed with ``jiwer`` on the digits written as
  space-separated words; several streams are pooled by summing the counts (a corpus rate,
  not a mean of per-stream rates).
- **Word timing error**: reference and hypothesis digits are aligned by the same edit-distance
  alignment; for every correctly recognised digit (an ``equal`` pair) the start and end errors
  are ``|hyp - ref|`` in seconds. Reported: mean, max and the fraction within 100 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _text(digits: Sequence[int]) -> str:
    return " ".join(str(int(d)) for d in digits)


def edit_counts(ref: Sequence[int], hyp: Sequence[int]) -> dict[str, int]:
    """``{"sub", "del", "ins", "hits", "n_ref"}`` of the best alignment of ``hyp`` to ``ref``."""
    import jiwer

    if not ref:
        return {"sub": 0, "del": 0, "ins": len(hyp), "hits": 0, "n_ref": 0}
    if not hyp:
        return {"sub": 0, "del": len(ref), "ins": 0, "hits": 0, "n_ref": len(ref)}
    o = jiwer.process_words(_text(ref), _text(hyp))
    return {"sub": o.substitutions, "del": o.deletions, "ins": o.insertions, "hits": o.hits, "n_ref": len(ref)}


def digit_error_rate(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]]) -> dict[str, float]:
    """Pooled DER of several streams: ``{"der", "sub", "del", "ins", "n_ref"}``."""
    tot = {"sub": 0, "del": 0, "ins": 0, "hits": 0, "n_ref": 0}
    for r, h in zip(refs, hyps, strict=True):
        for k, v in edit_counts(r, h).items():
            tot[k] += v
    n = max(tot["n_ref"], 1)
    return {"der": (tot["sub"] + tot["del"] + tot["ins"]) / n, **{k: tot[k] for k in ("sub", "del", "ins", "n_ref")}}


def aligned_pairs(ref: Sequence[int], hyp: Sequence[int]) -> list[tuple[int, int]]:
    """Index pairs ``(i_ref, j_hyp)`` of the digits the alignment marks equal."""
    import jiwer

    if not ref or not hyp:
        return []
    o = jiwer.process_words(_text(ref), _text(hyp))
    pairs = []
    for chunk in o.alignments[0]:
        if chunk.type == "equal":
            pairs += [(chunk.ref_start_idx + k, chunk.hyp_start_idx + k) for k in range(chunk.ref_end_idx - chunk.ref_start_idx)]
    return pairs


def timing_errors(ref_words: Sequence[dict], hyp_words: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Signed start / end errors (hyp - ref, seconds) of the aligned correct digits."""
    pairs = aligned_pairs([w["digit"] for w in ref_words], [w["digit"] for w in hyp_words])
    ds = np.array([hyp_words[j]["start"] - ref_words[i]["start"] for i, j in pairs], dtype=np.float64)
    de = np.array([hyp_words[j]["end"] - ref_words[i]["end"] for i, j in pairs], dtype=np.float64)
    return ds, de


def timing_summary(start_err: np.ndarray, end_err: np.ndarray, tol: float = 0.1) -> dict[str, float]:
    """Mean / max absolute error (ms) and the fraction of boundaries within ``tol`` seconds."""
    both = np.abs(np.concatenate([start_err, end_err]))
    if both.size == 0:
        return {"timing_n": 0, "start_mae_ms": 0.0, "end_mae_ms": 0.0, "boundary_max_ms": 0.0,
                "within_100ms": 0.0, "words_within_100ms": 0.0}
    words_ok = (np.abs(start_err) <= tol) & (np.abs(end_err) <= tol)
    return {"timing_n": int(start_err.size),
            "start_mae_ms": float(np.abs(start_err).mean() * 1000), "end_mae_ms": float(np.abs(end_err).mean() * 1000),
            "boundary_max_ms": float(both.max() * 1000), "within_100ms": float((both <= tol).mean()),
            "words_within_100ms": float(words_ok.mean())}
