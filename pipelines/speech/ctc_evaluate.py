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
import torch

from longstream.pipelines.common import check_finite_result

from .config import CTCConfig, speakers
from .ctc_model import CTCDigitModel
from .recognizer import recognize_array
from .scoring import digit_error_rate, timing_errors, timing_summary
from .streams import SAMPLE_RATE, Clip, Stream, StreamSpec, load_clips, make_stream

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
    clips = clips if clips is not None else load_clips("test", cfg.data.root or None, speakers=speakers(cfg))
    n = cfg.data.eval_streams if n is None else n
    seconds = cfg.data.eval_seconds if seconds is None else seconds
    seed = cfg.data.eval_seed if seed is None else seed
    return [make_stream(clips, StreamSpec(seconds=seconds), seed + i) for i in range(n)]


def evaluate_model(model: CTCDigitModel) -> dict[str, Any]:
    return evaluate_loaded(model)


def evaluate(checkpoint: str, data: str | None = None) -> dict[str, Any]:
    """Metrics of a CTC checkpoint on its test streams (``data``: another FSDD recordings folder)."""
    from .ctc_model import ctc_from_pretrained

    return evaluate_loaded(ctc_from_pretrained(checkpoint), data)


def val_der(model: CTCDigitModel, clips: list[Clip], cfg: CTCConfig, seed: int) -> float:
    """Greedy DER on 3 x 30 s streams of the training clips (a training-time signal, not a result)."""
    was = model.training
    model.eval()
    streams = [make_stream(clips, StreamSpec(seconds=30.0), seed + i) for i in range(3)]
    der = score_streams(model, streams, chunk_ms=1000.0)["der"]
    model.train(was)
    return float(der)


def calibrate(model: CTCDigitModel, clips: list[Clip], cfg: CTCConfig, seed: int) -> dict[str, Any]:
    """Set the word-time offsets of ``model.cfg.model`` from train-take streams and return them.

    With both offsets at zero, the signed start / end errors (hyp - ref) of the correctly
    recognised words are collected on ``train.calib_streams`` 60 s streams of ``clips``; each
    offset is minus the median error. (Per-digit offsets were tried: their medians were all
    within 10 ms of zero, the late onsets being occasional, not systematic.)
    """
    mc = model.cfg.model
    mc.start_offset = mc.end_offset = 0.0
    ds, de = [], []
    for i in range(max(1, cfg.train.calib_streams)):
        s = make_stream(clips, StreamSpec(seconds=60.0 if cfg.train.steps > 50 else 5.0), seed + i)
        a, b = timing_errors([asdict(w) for w in s.words], word_dicts(recognize_array(model, s.audio, chunk_ms=1000.0)))
        ds.append(a)
        de.append(b)
    ds_a, de_a = np.concatenate(ds), np.concatenate(de)
    if ds_a.size:
        mc.start_offset = round(-float(np.median(ds_a)), 4)
        mc.end_offset = round(-float(np.median(de_a)), 4)
    return {"start_offset": mc.start_offset, "end_offset": mc.end_offset, "n_words": int(ds_a.size)}


@torch.no_grad()
def isolated_digit_metrics(model: CTCDigitModel, root: str | None = None, snr_db: float = 30.0) -> dict[str, Any]:
    """The classifier's stable keys (``evaluate.METRIC_KEYS``) for the CTC model, on FSDD's
    300 test clips: each clip (trimmed) is placed in a 2 s stream with white noise at
    ``snr_db`` (0.3 s before it); a clip's digit scores are each digit's highest per-token CTC
    posterior, ``loss`` the CTC loss of the one-digit target (nats)."""
    import torch.nn.functional as F

    from longstream.pipelines.common import accuracy, confusion_matrix, macro_f1, mcc

    clips = load_clips("test", root or model.cfg.data.root or None, speakers=speakers(model.cfg))
    rng = np.random.default_rng(12345)
    y, pred, loss, spk = [], [], 0.0, []
    for c in clips:
        n = int(2.0 * SAMPLE_RATE)
        x = np.zeros(max(n, len(c.audio) + int(0.8 * SAMPLE_RATE)), np.float64)
        lo = int(0.3 * SAMPLE_RATE)
        x[lo : lo + len(c.audio)] = c.audio
        p = float((c.audio.astype(np.float64) ** 2).mean())
        x += rng.standard_normal(len(x)) * np.sqrt(p / 10 ** (snr_db / 10))
        logits, _, _ = model(torch.from_numpy(x.astype(np.float32))[None])
        post = torch.softmax(logits[0].float(), -1)  # (l, 11)
        pred.append(int(post[:, 1:].max(0).values.argmax()))
        y.append(c.digit)
        spk.append(c.speaker)
        logp = torch.log_softmax(logits.float(), -1).transpose(0, 1)
        loss += float(F.ctc_loss(logp, torch.tensor([[c.digit + 1]]), torch.tensor([logits.shape[1]]),
                                 torch.tensor([1]), blank=0, zero_infinity=True))
    yt, pt = torch.tensor(y), torch.tensor(pred)
    return {"accuracy": accuracy(yt, pt), "macro_f1": macro_f1(yt, pt), "mcc": mcc(yt, pt), "loss": loss / len(y),
            "n": len(y), "split": "standard",
            "accuracy_by_speaker": {s: accuracy(yt[m], pt[m]) for s in sorted(set(spk))
                                    for m in [torch.tensor([t == s for t in spk])]},
            "confusion": confusion_matrix(yt, pt, n_classes=10)}


def evaluate_loaded(model: CTCDigitModel, data: str | None = None) -> dict[str, Any]:
    """All metrics of a loaded CTC model: the stream metrics plus the isolated-digit keys."""
    if data:
        model.cfg.data.root = data
    res = isolated_digit_metrics(model, data)
    res.update(score_streams(model, test_streams(model.cfg)))
    res = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in res.items()}
    return check_finite_result(res, what="speech CTC metrics")
