"""``--model.norm speaker``: each clip normalised by its speaker's log-mel profile, and the
baseline's per-speaker feature standardisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longstream.pipelines.common import UserError, masked_mean
from longstream.pipelines.speech import config as C
from longstream.pipelines.speech import data as D
from longstream.pipelines.speech import model as M
from longstream.pipelines.speech.baselines import speaker_standardize


def _model():
    cfg = C.tiny()
    cfg.model.norm = "speaker"
    torch.manual_seed(0)
    return M.build_model(cfg).eval()


def _voice(n: int, f0: float, tilt: float, seed: int) -> torch.Tensor:
    """A synthetic 'speaker': a harmonic tone at f0 plus noise low-passed by ``tilt``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 8000
    tone = sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 6))
    noise = torch.randn(n, generator=g)
    for i in range(1, n):  # one-pole low-pass: the speaker's spectral tilt
        noise[i] = noise[i] + tilt * noise[i - 1]
    return 0.3 * (tone + 0.3 * noise / noise.std())


@pytest.fixture(scope="module")
def clips():
    waves = [_voice(n, 120.0, 0.9, i) for i, n in enumerate((2400, 3000, 2000))]
    waves += [_voice(n, 220.0, -0.5, 10 + i) * 3.0 for i, n in enumerate((2600, 1800))]
    return waves, ["low"] * 3 + ["high"] * 2


def test_each_speakers_frames_come_out_standardised(clips):
    model = _model()
    waves, spk = clips
    prof = model.speaker_profiles(waves, spk)
    assert prof.shape == (5, 2, model.cfg.model.n_mels)
    assert torch.equal(prof[0], prof[2]) and torch.equal(prof[3], prof[4])
    assert (prof[0] - prof[3]).abs().max() > 0.5  # two different voices
    x, lengths = D.collate(waves)
    with torch.no_grad():
        feats, frames = model.features(x, lengths, profile=prof)
    for who in ("low", "high"):
        rows = torch.cat([feats[i, : int(frames[i])] for i, s in enumerate(spk) if s == who])  # (frames, m)
        assert rows.mean(0).abs().max() < 1e-3
        assert (rows.std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_loudness_does_not_change_the_features(clips):
    model = _model()
    waves, spk = clips
    prof = model.speaker_profiles(waves, spk)[:1]
    with torch.no_grad():
        a, _ = model.features(10.0 * waves[0][None], profile=prof)  # loud enough that log-mel's
        b, _ = model.features(40.0 * waves[0][None], profile=prof)  # 1e-6 floor plays no part
    assert (a - b).abs().max() < 1e-3 and a.abs().max() > 0.5


def test_a_clip_without_a_profile_is_its_own_speaker(clips):
    model = _model()
    w = clips[0][0]
    own = model.speaker_profiles([w], None)
    with torch.no_grad():
        a, _ = model.features(w[None])
        b, _ = model.features(w[None], profile=own)
        la = model(w[None])
        lb = M.predict_proba(model, [w])
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(torch.softmax(la, -1), lb, atol=1e-6)


def test_a_profile_needs_audio():
    with pytest.raises(UserError, match="at least 2 frames"):
        _model().speaker_profile([torch.zeros(100)])


def test_baseline_standardises_per_speaker():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(5, 3, (40, 4)), rng.normal(-2, 0.5, (30, 4))])
    spk = ["a"] * 40 + ["b"] * 30
    z = speaker_standardize(x, spk)
    for i in (slice(0, 40), slice(40, 70)):
        assert np.abs(z[i].mean(0)).max() < 1e-9 and np.abs(z[i].std(0) - 1).max() < 1e-5
    assert np.abs(masked_mean(torch.tensor(z)[None]).numpy()).max() < 1e-9  # pooled: centred too
