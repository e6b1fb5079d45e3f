"""Evaluation of the CTC recogniser on test streams, decoded in streaming mode.

``evaluate(checkpoint)`` builds ``data.eval_streams`` streams of ``data.eval_seconds`` from
TEST takes (0-4; seeds ``data.eval_seed + i``, ``streams.StreamSpec`` defaults: pauses
0.1-1.0 s, white or pink noise at 10-30 dB SNR, +-6 dB clip gains), feeds each through
:class:`~.recognizer.StreamingRecognizer` in 200 ms chunks, and scores the words.

Metrics (stable keys, :data:`CTC_METRIC_KEYS`): ``der`` (pooled digit error rate, jiwer),
``sub`` / ``del`` / ``ins`` / ``n_ref`` (its counts), ``start_mae_ms`` / ``end_mae_ms`` /
``boundary_max_ms`` / ``within_100ms`` / ``words_within_100ms`` / ``timing_n`` (word-time
errors of the correctly recognised digits, ``scoring.timing_summary``), ``n_streams``,
``audio_seconds``. The long-stream benchmark (``benchmarks/speech_streams.py``) adds
10-minute streams, real-time factor, latency and memory.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from longstream.pipelines.common import check_finite_result

from .ctc_config import CTCConfig
from .ctc_model import CTCDigitModel
from .recognizer import recognize_array
from .scoring import digit_error_rate, timing_errors, timing_summary
from .streams import Clip, Stream, StreamSpec, load_clips, make_stream

CTC_METRIC_KEYS = ["der", "sub", "del", "ins", "n_ref", "start_mae_ms", "end_mae_ms", "within_100ms",
                   "words_within_100ms", "n_streams", "audio_seconds"]


def word_dicts(words) -> list[dict]:
    return [{"digit": w.digit, "start": w.start, "end": w.end} for w in words]


def score_streams(model: CTCDigitModel, streams: list[Stream], chunk_ms: float = 200.0) -> dict[str, Any]:
    refs, hyps, ds, de = [], [], [], []
    for s in streams:
        words = recognize_array(model, s.audio, chunk_ms)
        refs.append(s.digits)
        hyps.append([w.digit for w in words])
        a, b = timing_errors([asdict(w) for w in s.words], word_dicts(words))
        ds.append(a)
        de.append(b)
    out: dict[str, Any] = digit_error_rate(refs, hyps)
    out.update(timing_summary(np.concatenate(ds), np.concatenate(de)))
    out["n_streams"] = len(streams)
    out["audio_seconds"] = round(float(sum(s.seconds for s in streams)), 3)
    return out


def test_streams(cfg: CTCConfig, clips: list[Clip] | None = None, *, n: int | None = None,
                 seconds: float | None = None, seed: int | None = None) -> list[Stream]:
    from .ctc_train import speakers

    clips = clips if clips is not None else load_clips("test", cfg.data.root or None, speakers=speakers(cfg))
    n = cfg.data.eval_streams if n is None else n
    seconds = cfg.data.eval_seconds if seconds is None else seconds
    seed = cfg.data.eval_seed if seed is None else seed
    return [make_stream(clips, StreamSpec(seconds=seconds), seed + i) for i in range(n)]


def evaluate_model(model: CTCDigitModel) -> dict[str, Any]:
    res = score_streams(model, test_streams(model.cfg))
    res = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in res.items()}
    return check_finite_result(res, what="speech CTC metrics")


def evaluate(checkpoint: str, data: str | None = None) -> dict[str, Any]:
    """Metrics of a CTC checkpoint on its test streams (``data``: another FSDD recordings folder)."""
    from .ctc_model import ctc_from_pretrained

    model = ctc_from_pretrained(checkpoint)
    if data:
        model.cfg.data.root = data
    return evaluate_model(model)


def val_der(model: CTCDigitModel, clips: list[Clip], cfg: CTCConfig, seed: int) -> float:
    """Greedy DER on 3 x 30 s streams of the training clips (a training-time signal, not a result)."""
    was = model.training
    model.eval()
    streams = [make_stream(clips, StreamSpec(seconds=30.0), seed + i) for i in range(3)]
    der = score_streams(model, streams, chunk_ms=1000.0)["der"]
    model.train(was)
    return float(der)


def calibrate(model: CTCDigitModel, clips: list[Clip], cfg: CTCConfig, seed: int) -> tuple[float, float]:
    """Word-time offsets: median start / end errors with zero offsets on train-take streams."""
    mc = model.cfg.model
    mc.start_offset = mc.end_offset = 0.0
    ds, de = [], []
    for i in range(max(1, cfg.train.calib_streams)):
        s = make_stream(clips, StreamSpec(seconds=60.0 if cfg.train.steps > 50 else 5.0), seed + i)
        words = recognize_array(model, s.audio)
        a, b = timing_errors([asdict(w) for w in s.words], word_dicts(words))
        ds.append(a)
        de.append(b)
    ds_all, de_all = np.concatenate(ds), np.concatenate(de)
    start = -float(np.median(ds_all)) if ds_all.size else 0.0
    end = -float(np.median(de_all)) if de_all.size else 0.0
    return round(start, 4), round(end, 4)
