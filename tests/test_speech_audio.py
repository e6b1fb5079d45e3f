"""encoders/audio.py: file loading (formats, rates, mix-down, errors), log-mel / raw framing and
their chunked streaming, SpecAugment. Real FSDD clips from ``$LONGSTREAM_DATA`` where needed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from longstream.encoders.audio import (
    MAX_ABS_SAMPLE,
    AudioError,
    LogMel,
    RawWaveStem,
    SpecAugment,
    load_audio,
    num_frames,
)


def _tone(sr: int, seconds: float, f: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * math.pi * f * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype,ext", [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"),
                                             ("OGG", "VORBIS", "ogg"), ("WAV", "FLOAT", "wav")])
def test_formats_decode_to_the_same_tone(tmp_path, fmt, subtype, ext):
    x = _tone(8000, 0.5)
    p = tmp_path / f"tone.{ext}"
    sf.write(str(p), x, 8000, format=fmt, subtype=subtype)
    w, sr = load_audio(p)
    assert sr == 8000 and w.dtype == torch.float32 and w.shape == (4000,)
    tol = 0.05 if subtype == "VORBIS" else 1e-3  # lossy codec
    assert float((w - torch.from_numpy(x)).abs().max()) < tol


def test_stereo_is_mixed_down_and_rates_are_resampled(tmp_path):
    left, right = _tone(16000, 0.5, 300.0, 0.4), _tone(16000, 0.5, 300.0, 0.2)
    p = tmp_path / "st.wav"
    sf.write(str(p), np.stack([left, right], 1), 16000, subtype="FLOAT")
    w, sr = load_audio(p)
    assert sr == 16000 and torch.allclose(w, torch.from_numpy((left + right) / 2), atol=1e-6)
    w8, sr8 = load_audio(p, 8000)
    assert sr8 == 8000 and abs(len(w8) - 4000) <= 1
    # a 300 Hz tone keeps its amplitude (0.3) through band-limited resampling (middle, away from edges)
    assert abs(float(w8[1000:3000].abs().max()) - 0.3) < 0.01


def test_fsdd_clip_loads(data_root):
    p = data_root / "speech/fsdd/recordings/7_jackson_0.wav"
    w, sr = load_audio(p)
    info = sf.info(str(p))
    assert sr == 8000 and len(w) == info.frames and 0.05 < float(w.abs().max()) <= 1.0


@pytest.mark.parametrize("case,kind", [("empty", "empty"), ("garbage", "corrupt"), ("silent", "silent"),
                                       ("long", "too_long"), ("inf", "non_finite"), ("huge", "non_finite"),
                                       ("header_only", "empty"), ("missing", "missing")])
def test_bad_files_raise_audio_error(tmp_path, case, kind):
    p = tmp_path / f"{case}.wav"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "garbage":
        p.write_bytes(b"RIFF not really a wave file" * 10)
    elif case == "silent":
        sf.write(str(p), np.zeros(8000), 8000)
    elif case == "long":
        sf.write(str(p), _tone(8000, 3.0), 8000)
    elif case in ("inf", "huge"):
        x = _tone(8000, 0.2).astype(np.float64)
        x[100] = np.inf if case == "inf" else 1e30
        sf.write(str(p), x, 8000, subtype="DOUBLE")
    elif case == "header_only":
        sf.write(str(p), np.zeros(0), 8000)
    with pytest.raises(AudioError) as info:
        load_audio(p, max_seconds=2.0)
    assert info.value.kind == kind
    if case in ("inf", "huge"):
        assert "sample 100" in str(info.value)
    assert MAX_ABS_SAMPLE >= 1.0


def test_logmel_frames_match_torchaudio_and_the_framing_rule():
    import torchaudio.transforms as AT

    lm = LogMel(8000, n_mels=40, win_ms=25, hop_ms=10)
    assert (lm.win, lm.hop) == (200, 80)
    x = torch.randn(2, 4000) * 0.1
    f, n = lm(x, torch.tensor([4000, 1000]))
    assert f.shape == (2, 1 + (4000 - 200) // 80, 40)
    assert n.tolist() == [48, 11] and num_frames(199, 200, 80) == 0 and num_frames(200, 200, 80) == 1
    ref = AT.MelSpectrogram(8000, n_fft=200, hop_length=80, f_min=20.0, n_mels=40, center=False,
                            norm="slaney", mel_scale="slaney")(x)
    assert torch.allclose(f, torch.log(ref + 1e-6).transpose(1, 2), atol=1e-5)
    # frame t is samples [t*hop, t*hop+win): sample 1000 is in frames 11 (880..1079) and 12 (960..1159) only
    y = x.clone()
    y[0, 1000] += 1.0
    g, _ = lm(y)
    changed = ((g - f).abs().amax(-1)[0] > 1e-6).nonzero().flatten().tolist()
    assert changed == [11, 12]


@pytest.mark.parametrize("front", ["logmel", "raw"])
def test_chunked_stream_equals_whole_signal(front):
    torch.manual_seed(1)
    fe = LogMel(8000) if front == "logmel" else RawWaveStem(8, kernel=64, stride=32)
    x = torch.randn(2, 5003) * 0.2
    with torch.no_grad():
        whole = fe(x)[0]
    st = fe.stream_state((2,))
    parts, i, g = [], 0, torch.Generator().manual_seed(0)
    sizes = []
    while i < x.shape[1]:
        k = int(torch.randint(1, 400, (1,), generator=g))
        parts.append(fe.stream(x[:, i : i + k], st))
        sizes.append(st.buf.shape[-1])
        i += k
    streamed = torch.cat(parts, 1)
    assert streamed.shape == whole.shape
    assert float((streamed - whole).abs().max()) < 1e-4
    win = fe.n_fft if front == "logmel" else fe.kernel
    assert max(sizes) < win + 400  # constant memory: the buffer never holds the stream


def test_specaugment_masks_only_in_training_and_within_the_clip():
    sa = SpecAugment(freq_mask=4, time_mask=5, n_freq_masks=1, n_time_masks=2)
    x = torch.randn(4, 50, 20) + 10.0  # no value is 0 before masking
    sa.eval()
    assert torch.equal(sa(x), x)
    sa.train()
    frames = torch.tensor([50, 30, 10, 1])
    y = sa(x, frames)
    masked = y == 0
    assert masked.any()
    time_masked = masked.all(-1)  # (b, l) frames masked across every bin
    for b, n in enumerate(frames.tolist()):
        assert not time_masked[b, n:].any(), "a time mask reached past the clip's valid frames"
        assert int(time_masked[b].sum()) <= 2 * min(5, int(0.2 * n))
    freq_masked = masked.all(1)  # (b, m)
    assert int(freq_masked.sum(1).max()) <= 4


def test_logmel_warp_moves_a_formant_by_the_factor():
    """VTLP: a tone at 1 kHz, warped by 1.2, peaks in the band nearest 1.2 kHz; factor 1 is the identity."""
    lm = LogMel(8000, n_mels=40)
    t = torch.arange(8000) / 8000.0
    feats, _ = lm(torch.sin(2 * math.pi * 1000.0 * t)[None])
    c = lm.band_centers()
    assert torch.allclose(lm.warp(feats, torch.ones(1)), feats, atol=1e-5)
    peak = lambda f: int(f[0].mean(0).argmax())  # noqa: E731
    assert abs(float(c[peak(feats)]) - 1000.0) < 80.0
    warped = lm.warp(feats, torch.tensor([1.2]))
    assert int((c - 1200.0).abs().argmin()) == peak(warped)


def test_tta_off_is_the_plain_forward_and_on_averages_probabilities():
    from longstream.pipelines.speech.config import tiny
    from longstream.pipelines.speech.model import build_model, example_batch

    cfg = tiny()
    model = build_model(cfg).eval()
    batch = example_batch(cfg)
    with torch.no_grad():
        plain = model(**batch)
        assert torch.equal(plain, model.logits(**batch))
        cfg.model.tta_warp, cfg.model.tta_n = 0.1, 3
        assert model.tta_factors() == pytest.approx([0.9, 1.0, 1.1])
        probs = torch.stack([torch.softmax(model.logits(**batch, warp=a), -1) for a in (0.9, 1.0, 1.1)]).mean(0)
        assert torch.allclose(model(**batch).exp(), probs, atol=1e-6)
        assert not torch.allclose(model(**batch), torch.log_softmax(plain, -1), atol=1e-4)


def test_cepstral_front_end_lifters_away_fast_ripple_across_bands():
    """``model.n_ceps``: the tokens see the first n_ceps DCT coefficients of the normalised
    log-mel, so a smooth spectral envelope passes and a fast ripple across the bands (pitch
    harmonics) is removed; a bad n_ceps is a UserError."""
    from longstream.pipelines import common
    from longstream.pipelines.speech.config import tiny
    from longstream.pipelines.speech.model import build_model, example_batch

    cfg = tiny()
    cfg.model.n_ceps = 4
    model = build_model(cfg).eval()
    m = cfg.model.n_mels
    assert model.dct.shape == (m, 4) and model.proj.in_features == 4
    bands = torch.arange(m, dtype=torch.float32) + 0.5
    envelope = torch.cos(math.pi * bands * 1 / m) + 0.5 * torch.cos(math.pi * bands * 3 / m)
    ripple = 0.8 * torch.cos(math.pi * bands * 11 / m)  # quefrency 11 > n_ceps
    assert torch.allclose((envelope + ripple) @ model.dct, envelope @ model.dct, atol=1e-5)
    assert (envelope @ model.dct).abs().max() > 1.0  # the envelope itself survives
    with torch.no_grad():
        out = model(**example_batch(cfg))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    cfg.model.n_ceps = m + 1
    with pytest.raises(common.UserError, match="n_ceps"):
        build_model(cfg)


def test_conv_stem_tokens_do_not_depend_on_the_padding_of_a_batch():
    """``model.conv_channels``: the 3x3 conv stem re-masks padded frames before each
    convolution, so a clip's logits in a padded batch equal its logits alone; it gives one
    token per frame; it cannot be combined with ``n_ceps``."""
    from longstream.encoders.audio import SpecConvStem
    from longstream.pipelines import common
    from longstream.pipelines.speech.config import tiny
    from longstream.pipelines.speech.data import collate
    from longstream.pipelines.speech.model import build_model

    cfg = tiny()
    cfg.model.conv_channels = 8
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    waves = [0.1 * torch.randn(3000, generator=g), 0.1 * torch.randn(5200, generator=g)]
    with torch.no_grad():
        batched = model(*collate(waves))
        alone = torch.cat([model(w[None]) for w in waves])
    assert torch.allclose(batched, alone, atol=1e-5)
    assert SpecConvStem(15, 8, channels=4)(torch.randn(2, 5, 15), torch.ones(2, 5, dtype=torch.bool)).shape == (2, 5, 8)
    cfg.model.conv_channels, cfg.model.n_ceps = 8, 4
    with pytest.raises(common.UserError, match="conv_channels"):
        build_model(cfg)
