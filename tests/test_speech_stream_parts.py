"""Long-stream speech parts without a trained model: streams, CTC decoding, scoring, subtitles."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from longstream.pipelines.common import UserError
from longstream.pipelines.speech.ctc import StreamingCTCDecoder, decode_arrays
from longstream.pipelines.speech.scoring import digit_error_rate, edit_counts, timing_errors, timing_summary
from longstream.pipelines.speech.streams import (
    SAMPLE_RATE,
    Clip,
    StreamSpec,
    _noise,
    load_clips,
    make_stream,
    trim_bounds,
)
from longstream.pipelines.speech.subtitles import parse_srt, srt_time, to_srt, to_text


def _tone_clips(n: int = 6) -> list[Clip]:
    t = np.arange(int(0.4 * SAMPLE_RATE)) / SAMPLE_RATE
    return [Clip(d, "synth", 0, (0.3 * np.sin(2 * np.pi * (300 + 100 * d) * t)).astype(np.float32)) for d in range(n)]


# ------------------------------------------------------------------------------------ streams
def test_trim_bounds_finds_the_burst():
    x = np.zeros(8000, np.float32)
    x[2000:5000] = 0.5 * np.sin(np.arange(3000) * 0.3)
    x += 1e-4 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    lo, hi = trim_bounds(x)
    assert abs(lo - 2000) <= 80 and abs(hi - 5000) <= 80


def test_stream_is_seeded_and_its_word_times_are_consistent():
    spec = StreamSpec(seconds=20.0)
    clips = _tone_clips()
    a, b, c = make_stream(clips, spec, 3), make_stream(clips, spec, 3), make_stream(clips, spec, 4)
    assert np.array_equal(a.audio, b.audio) and a.digits == b.digits
    assert not np.array_equal(a.audio, c.audio)
    assert len(a.audio) == 20 * SAMPLE_RATE and np.abs(a.audio).max() <= 0.95 + 1e-6
    assert len(a.words) >= 15
    for w, nxt in zip(a.words, a.words[1:]):
        assert w.end - w.start == pytest.approx(0.4, abs=1e-3)
        assert spec.pause_min - 1e-3 <= nxt.start - w.end <= spec.pause_max + 1e-3
    assert a.words[-1].end <= 20.0 and spec.lead_min - 1e-3 <= a.words[0].start <= spec.lead_max + 1e-3


def test_stream_snr_matches_what_it_records():
    clips = _tone_clips()
    s = make_stream(clips, StreamSpec(seconds=30.0, noise="white", clip_gain_db=0.0), 11)
    inside = np.zeros(len(s.audio), bool)
    for w in s.words:
        inside[int(w.start * SAMPLE_RATE) : int(w.end * SAMPLE_RATE)] = True
    p_noise = float((s.audio[~inside].astype(np.float64) ** 2).mean())
    p_speech = float((s.audio[inside].astype(np.float64) ** 2).mean()) - p_noise
    assert 10 * np.log10(p_speech / p_noise) == pytest.approx(s.info["snr_db"], abs=0.5)
    assert 10.0 <= s.info["snr_db"] <= 30.0


def test_pink_noise_has_more_low_frequency_power():
    rng = np.random.default_rng(0)
    for kind, ratio_lo, ratio_hi in (("white", 0.7, 1.4), ("pink", 5.0, np.inf)):
        spec = np.abs(np.fft.rfft(_noise(kind, 16000, rng))) ** 2
        low, high = spec[10:400].mean(), spec[4000:8000].mean()  # ~5-200 Hz vs 2-4 kHz at 8 kHz
        assert ratio_lo < low / high < ratio_hi, kind


def test_bad_stream_specs_are_user_errors():
    with pytest.raises(UserError, match="noise"):
        make_stream(_tone_clips(), StreamSpec(noise="brown"), 0)
    with pytest.raises(UserError, match="seconds"):
        make_stream(_tone_clips(), StreamSpec(seconds=0), 0)


def test_fsdd_splits_are_disjoint_and_complete(data_root):
    test = load_clips("test")
    assert len(test) == 300 and {c.take for c in test} == set(range(5))
    assert {c.speaker for c in test} == {"george", "jackson", "lucas", "nicolas", "theo", "yweweler"}
    train = load_clips("train", speakers=["theo"])
    assert len(train) == 450 and min(c.take for c in train) == 5
    assert all(0.05 < len(c.audio) / SAMPLE_RATE < 2.5 for c in test)


# ------------------------------------------------------------------------------- CTC decoding
def _track(n: int, words: list[tuple[int, int, int, int]]):
    """Per-token arrays: words as (digit, speech start, speech end, spike token)."""
    labels, probs, speech = np.zeros(n, int), np.full(n, 0.9), np.full(n, 0.05)
    for d, a, b, spike in words:
        speech[a:b] = 0.95
        labels[spike] = d + 1
    return labels, probs, speech


KW = dict(token_sec=0.02, first_time=0.01, avail_time=0.02, grace=5)


def test_decoder_words_take_their_times_from_the_speech_segments():
    labels, probs, speech = _track(200, [(3, 20, 45, 40), (7, 60, 80, 84), (7, 100, 130, 120)])
    partials, words = decode_arrays(labels, probs, speech, **KW)
    assert [p.digit for p in partials] == [3, 7, 7]
    assert [w.digit for w in words] == [3, 7, 7]  # a spike 4 tokens after its segment is still its word
    for w, (a, b) in zip(words, [(20, 45), (60, 80), (100, 130)]):
        assert w.start == pytest.approx(0.01 + (a - 0.5) * 0.02) and w.end == pytest.approx(0.01 + (b - 0.5) * 0.02)


def test_decoder_splits_a_merged_segment_at_its_weakest_token_and_applies_offsets():
    labels, probs, speech = _track(120, [(1, 10, 60, 30), (2, 10, 60, 55)])
    speech[41] = 0.6  # the dip between the two words
    _, words = decode_arrays(labels, probs, speech, **{**KW, "start_offset": -0.03, "end_offset": 0.05})
    assert [w.digit for w in words] == [1, 2]
    assert words[0].end == pytest.approx(0.01 + 40.5 * 0.02 + 0.05)
    assert words[1].start == pytest.approx(0.01 + 40.5 * 0.02 - 0.03)


def test_decoder_chunked_equals_whole_and_drops_speech_without_digits():
    rng = random.Random(0)
    layout, t = [], 5
    for _ in range(30):
        a, b = t, t + rng.randint(10, 40)
        layout.append((rng.randrange(10), a, b, rng.randint(a + 3, b + 2)))
        t = b + rng.randint(6, 30)
    labels, probs, speech = _track(t + 20, layout)
    speech[t + 5 : t + 15] = 0.9  # a noise burst: speech but no spike
    whole = decode_arrays(labels, probs, speech, **KW)[1]
    dec = StreamingCTCDecoder(**KW)
    words, i = [], 0
    while i < len(labels):
        k = rng.randint(1, 17)
        words += dec.push(labels[i : i + k], probs[i : i + k], speech[i : i + k])[1]
        i += k
    words += dec.finish()
    assert [(w.digit, w.start, w.end) for w in words] == [(w.digit, w.start, w.end) for w in whole]
    assert [w.digit for w in whole] == [d for d, *_ in layout]


def test_repeated_digit_needs_a_blank_between_spikes():
    labels = np.array([0, 4, 4, 4, 0, 4, 0, 0])
    speech = np.array([0.1, 0.9, 0.9, 0.9, 0.2, 0.9, 0.1, 0.1])
    partials, words = decode_arrays(labels, np.ones(8), speech, **{**KW, "grace": 1})
    assert [p.digit for p in partials] == [3, 3] and len(words) == 2


# ------------------------------------------------------------------------------------ scoring
def _levenshtein(a, b) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def test_digit_error_rate_is_edit_distance_over_reference_length():
    assert digit_error_rate([[1, 2, 3, 4]], [[1, 3, 4, 5]])["der"] == pytest.approx(0.5)
    rng = random.Random(1)
    refs = [[rng.randrange(10) for _ in range(rng.randint(1, 30))] for _ in range(40)]
    hyps = [[d if rng.random() > 0.2 else rng.randrange(10) for d in r if rng.random() > 0.1]
            + [rng.randrange(10)] * rng.randint(0, 2) for r in refs]
    for r, h in zip(refs, hyps):
        c = edit_counts(r, h)
        assert c["sub"] + c["del"] + c["ins"] == _levenshtein(r, h)
    pooled = digit_error_rate(refs, hyps)
    assert pooled["der"] == pytest.approx(sum(map(_levenshtein, refs, hyps)) / sum(map(len, refs)))
    assert digit_error_rate([[1, 2]], [[]])["der"] == 1.0 and digit_error_rate([[]], [[5]])["ins"] == 1


def test_timing_errors_use_only_aligned_correct_digits():
    ref = [{"digit": d, "start": i, "end": i + 0.5} for i, d in enumerate([4, 2, 7])]
    hyp = [{"digit": 4, "start": 0.05, "end": 0.45}, {"digit": 7, "start": 2.2, "end": 2.5}]
    ds, de = timing_errors(ref, hyp)
    assert ds.tolist() == pytest.approx([0.05, 0.2]) and de.tolist() == pytest.approx([-0.05, 0.0])
    s = timing_summary(ds, de)
    assert s["within_100ms"] == pytest.approx(0.75) and s["words_within_100ms"] == pytest.approx(0.5)
    assert s["boundary_max_ms"] == pytest.approx(200.0)


# ---------------------------------------------------------------------------------- subtitles
def test_srt_times_and_round_trip():
    assert srt_time(3725.0456) == "01:02:05,046" and srt_time(-1) == "00:00:00,000"
    words = [{"digit": d, "start": s, "end": e} for d, s, e in [(1, 0.1234, 0.5), (9, 61.0, 61.0), (0, 3599.9995, 3600.4)]]
    text = to_srt(words)
    cues = parse_srt(text)
    assert [c["text"] for c in cues] == ["1", "9", "0"] and [c["index"] for c in cues] == [1, 2, 3]
    for c, w in zip(cues, words):
        assert abs(c["start"] - w["start"]) <= 0.0005 + 1e-9 and c["end"] > c["start"]
    assert cues[2]["start"] == 3600.0 and "01:00:00,000 --> 01:00:00,400" in text
    assert to_text(words) == "1 9 0\n"


@pytest.mark.parametrize("digits", list(itertools.islice(itertools.permutations(range(4)), 3)))
def test_srt_cues_are_in_time_order(digits):
    words = [{"digit": d, "start": 10.0 - i, "end": 10.4 - i} for i, d in enumerate(digits)]
    starts = [c["start"] for c in parse_srt(to_srt(words))]
    assert starts == sorted(starts)


def test_clips_are_levelled_before_their_random_gain():
    loud, quiet = _tone_clips(2)
    quiet = Clip(quiet.digit, "quiet", 0, quiet.audio * 0.01)  # 40 dB quieter, like FSDD's theo vs jackson
    spec = StreamSpec(seconds=20.0, noise="none", clip_gain_db=0.0, peak_min=0.9, peak_max=0.9)
    s = make_stream([loud, quiet], spec, 2)
    levels = {}
    for w in s.words:
        seg = s.audio[int(w.start * SAMPLE_RATE) : int(w.end * SAMPLE_RATE)].astype(np.float64)
        levels.setdefault(w.digit, []).append(10 * np.log10((seg**2).mean()))
    assert set(levels) == {0, 1}
    assert abs(np.mean(levels[0]) - np.mean(levels[1])) < 0.5
    raw = make_stream([loud, quiet], StreamSpec(**{**spec.__dict__, "clip_level_db": 0.0}), 2)
    seg = [raw.audio[int(w.start * SAMPLE_RATE) : int(w.end * SAMPLE_RATE)] for w in raw.words]
    rms = {w.digit: float(np.sqrt((x.astype(np.float64) ** 2).mean())) for w, x in zip(raw.words, seg)}
    assert 20 * np.log10(rms[0] / rms[1]) == pytest.approx(40.0, abs=0.5)
