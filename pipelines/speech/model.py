"""Spoken-digit classifier: audio front end -> registry backbone -> masked pooled head.

``frontend="logmel"``: :class:`~longstream.encoders.audio.LogMel` frames (10 ms hop),
normalised (per-clip mean subtraction — cepstral mean normalisation, which removes the
channel / speaker level —, per-clip mean and variance (``cmvn``), global train statistics, or
per speaker (``speaker``: each clip levelled, then standardised by its speaker's profile,
:meth:`DigitClassifier.speaker_profile`); then scaled by the train std kept in buffers), SpecAugment in training, optionally the first
``model.n_ceps`` DCT coefficients (cepstral liftering: the spectral envelope without pitch
harmonics), a ``Linear(n_mels or n_ceps, d)`` per frame.
``frontend="raw"``: :class:`~longstream.encoders.audio.RawWaveStem` (one token per
``raw_stride`` samples). Then ``common.build_backbone(cfg.backbone)`` (Mamba, S4D, ...;
``--backbone.*`` overrides) and ``common.SequenceClassifier`` (masked pooling, so a padded
batch gives the same logits as one clip at a time).

Axis legend: b batch, t samples, l frames, m mel bins, d model width, c classes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from longstream.encoders.audio import LogMel, RawWaveStem, SpecAugment, SpecConvStem
from longstream.pipelines import common

from . import DOMAIN
from .config import (
    FRONTENDS,
    Config,
    CTCConfig,  # long-stream CTC recogniser: dispatched on below
)
from .ctc_model import build_ctc_model, ctc_example_batch, is_ctc_checkpoint, load_ctc

NORMS = ("utterance", "cmvn", "global", "speaker")


class DigitClassifier(nn.Module):
    """``wave (B, T)`` + ``lengths (B,)`` (samples) -> ``(B, n_classes)`` logits."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        mc, d = cfg.model, cfg.backbone.d_model
        if mc.frontend not in FRONTENDS:
            raise common.UserError(f"--model.frontend {mc.frontend!r}: use one of {', '.join(FRONTENDS)}")
        if mc.norm not in NORMS:
            raise common.UserError(f"--model.norm {mc.norm!r}: use one of {', '.join(NORMS)}")
        if mc.frontend == "logmel":
            self.logmel = LogMel(cfg.data.sample_rate, n_mels=mc.n_mels, win_ms=mc.win_ms, hop_ms=mc.hop_ms,
                                 f_min=mc.f_min)
            a = cfg.augment
            self.specaug = SpecAugment(a.freq_mask, a.time_mask, a.n_freq_masks, a.n_time_masks)
            self.register_buffer("feat_mean", torch.zeros(mc.n_mels))  # train statistics (set_feature_stats)
            self.register_buffer("feat_std", torch.ones(mc.n_mels))
            if not 0 <= mc.n_ceps <= mc.n_mels:
                raise common.UserError(f"--model.n_ceps {mc.n_ceps}: use 0 (off) to --model.n_mels ({mc.n_mels})")
            if mc.n_ceps:  # orthonormal DCT-II, (m, n_ceps): log-mel -> low cepstral coefficients
                import torchaudio.functional as AF

                self.register_buffer("dct", AF.create_dct(mc.n_ceps, mc.n_mels, "ortho"), persistent=False)
            if mc.conv_channels < 0:
                raise common.UserError(f"--model.conv_channels {mc.conv_channels}: use 0 (off) or a positive width")
            if mc.conv_channels and mc.n_ceps:
                raise common.UserError("--model.conv_channels and --model.n_ceps: the conv stem reads mel bands; set one")
            if mc.conv_channels:
                self.conv = SpecConvStem(mc.n_mels, d, mc.conv_channels)
            else:
                self.proj = nn.Linear(mc.n_ceps or mc.n_mels, d)
        else:
            self.stem = RawWaveStem(d, kernel=mc.raw_kernel, stride=mc.raw_stride)
        self.backbone = common.build_backbone(cfg.backbone)  # bad --backbone.* -> UserError
        self.head = common.SequenceClassifier(d, mc.n_classes, pool=mc.pool, hidden=mc.hidden, dropout=mc.dropout)

    # ---- front end -------------------------------------------------------------------
    def features(self, wave: Tensor, lengths: Tensor | None = None,
                 warp: Tensor | None = None, profile: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Normalised log-mel ``(B, L, m)`` and frame counts ``(B,)`` (log-mel front end only);
        ``warp (B,)``: each clip's spectrum first warped by that factor (:meth:`LogMel.warp`);
        ``profile (B, 2, m)``: with ``norm=speaker``, each clip's speaker profile
        (:meth:`speaker_profile`; default: the clip's own)."""
        feats, frames = self.logmel(wave, lengths)
        if warp is not None:
            feats = self.logmel.warp(feats, warp)
        mask = common.lengths_to_mask(frames.to(feats.device), feats.shape[1])
        if self.cfg.model.norm == "global":
            return (feats - self.feat_mean) / self.feat_std, frames
        if self.cfg.model.norm == "speaker":
            feats = feats - _level(feats, mask)  # the clip's loudness
            if profile is None:  # a clip alone is its own speaker
                profile = _profile(feats, mask)
            profile = profile.to(feats)
            return (feats - profile[:, None, 0]) / profile[:, None, 1], frames  # feat_std stays 1
        center = common.masked_mean(feats, mask)[:, None]  # (b, 1, m) per-clip mean
        feats = feats - center
        if self.cfg.model.norm == "cmvn":  # and per-clip std of every band
            var = common.masked_mean(feats.pow(2), mask)[:, None]
            feats = feats / var.clamp_min(1e-4).sqrt()
        return feats / self.feat_std, frames

    def encode(self, wave: Tensor, lengths: Tensor | None = None,
               warp: float | None = None, profile: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Tokens ``(B, L, d)`` for the backbone and their valid mask ``(B, L)``.

        ``warp``: the spectra are warped by this factor (test-time warping); in training with
        ``augment.vtlp > 0`` each clip draws its own factor in ``[1 - vtlp, 1 + vtlp]``."""
        if wave.dim() == 1:
            wave = wave[None]
        if lengths is None:
            lengths = torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long)
        if self.cfg.model.frontend == "logmel":
            b, v = wave.shape[0], self.cfg.augment.vtlp
            alpha = None
            if warp is not None and warp != 1.0:
                alpha = torch.full((b,), float(warp))
            elif self.training and v > 0:
                alpha = 1.0 + v * (2 * torch.rand(b) - 1)
            feats, frames = self.features(wave, lengths, alpha, profile)
            mask = common.lengths_to_mask(frames.to(feats.device), feats.shape[1])
            feats = self.specaug(feats, frames).masked_fill(~mask[..., None], 0.0)
            if self.cfg.model.conv_channels:
                return self.conv(feats, mask), mask
            if self.cfg.model.n_ceps:
                feats = feats @ self.dct  # (b, l, n_ceps)
            return self.proj(feats), mask
        tokens, frames = self.stem(wave, lengths)
        return tokens, common.lengths_to_mask(frames.to(tokens.device), tokens.shape[1])

    def num_frames(self, n_samples: int | Tensor) -> int | Tensor:
        fe = self.logmel if self.cfg.model.frontend == "logmel" else self.stem
        return fe.num_frames(n_samples)

    def tta_factors(self) -> list[float]:
        """Warp factors averaged over in eval (``model.tta_warp``; ``[1.0]`` when off)."""
        mc = self.cfg.model
        if mc.frontend != "logmel" or mc.tta_warp <= 0 or mc.tta_n < 2:
            return [1.0]
        return torch.linspace(1 - mc.tta_warp, 1 + mc.tta_warp, mc.tta_n).tolist()

    def logits(self, wave: Tensor, lengths: Tensor | None = None, warp: float | None = None,
               profile: Tensor | None = None) -> Tensor:
        h, mask = self.encode(wave, lengths, warp, profile)  # (b, l, d)
        h, _ = self.backbone(h, mask=mask)  # (b, l, d)
        return self.head(h, mask)  # (b, c)

    def forward(self, wave: Tensor, lengths: Tensor | None = None, profile: Tensor | None = None) -> Tensor:
        """Class logits ``(B, c)``; in eval with ``model.tta_warp > 0``, the log of the class
        probabilities averaged over the warped copies (:meth:`tta_factors`). ``profile``: see
        :meth:`features` (``norm=speaker`` only)."""
        factors = [1.0] if self.training else self.tta_factors()
        if len(factors) == 1:
            return self.logits(wave, lengths, profile=profile)
        logp = torch.stack([torch.log_softmax(self.logits(wave, lengths, a, profile), -1) for a in factors])
        return torch.logsumexp(logp, 0) - math.log(len(factors))

    @torch.no_grad()
    def speaker_profile(self, waves: list[Tensor]) -> Tensor:
        """``(2, m)``: per-band mean and std of the loudness-levelled log-mel frames of one
        speaker's clips (``norm=speaker``: every clip is normalised by its speaker's profile, so
        the spectral shape that tells digits apart is kept and the voice / microphone average
        removed — speaker-level CMVN)."""
        rows = []
        for w in waves:
            f, frames = self.logmel(w[None].float())
            f = f[0, : int(frames[0])]
            rows.append(f - f.mean())
        if not rows or sum(len(r) for r in rows) < 2:
            raise common.UserError("a speaker profile needs at least 2 frames of audio; give longer clips")
        return _profile(torch.cat(rows)[None], None)[0]

    def speaker_profiles(self, waves: list[Tensor], speakers: list[str] | None) -> Tensor | None:
        """``(N, 2, m)``: each clip's speaker profile (all clips one speaker when ``speakers`` is
        None); None unless ``norm=speaker``."""
        if self.cfg.model.frontend != "logmel" or self.cfg.model.norm != "speaker":
            return None
        spk = speakers if speakers is not None else [""] * len(waves)
        prof = {s: self.speaker_profile([w for w, t in zip(waves, spk) if t == s]) for s in sorted(set(spk))}
        return torch.stack([prof[s] for s in spk])

    @torch.no_grad()
    def set_feature_stats(self, waves: list[Tensor]) -> None:
        """Per-bin mean / std of the (per-clip centred, for ``norm=utterance``) log-mel of ``waves``."""
        if self.cfg.model.frontend != "logmel":
            return
        self.feat_mean.zero_()
        self.feat_std.fill_(1.0)
        if self.cfg.model.norm == "speaker":  # the speaker profiles already scale every band
            return
        rows = []
        for w in waves:
            f, _ = self.features(w[None])
            rows.append(f[0])
        allf = torch.cat(rows)  # (sum l, m)
        mean = allf.mean(0)
        self.feat_mean.copy_(mean if self.cfg.model.norm == "global" else torch.zeros_like(mean))
        self.feat_std.copy_(allf.std(0).clamp_min(1e-3))

    # ---- checkpoints -----------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path, **kw: Any) -> Path:
        fe = self.cfg.model.frontend
        return common.save_pretrained(
            self, self.cfg, out_dir, pipeline=DOMAIN, backbone=self.cfg.backbone,
            task=f"spoken-digit classification (FSDD, {fe} front end)", **kw,
        )

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> DigitClassifier:
        return from_pretrained(name_or_dir)


def build_model(cfg: Config) -> DigitClassifier:
    """The model of ``cfg`` (random weights)."""
    if isinstance(cfg, CTCConfig):  # long-stream CTC recogniser (ctc_model.py)
        return build_ctc_model(cfg)
    return DigitClassifier(cfg)


def example_batch(cfg: Config, batch_size: int = 2) -> dict[str, Tensor]:
    """A tiny forward input: 0.1 s of noise per clip (``build_model(cfg)(**example_batch(cfg))``)."""
    if isinstance(cfg, CTCConfig):
        return ctc_example_batch(cfg, batch_size)
    g = torch.Generator().manual_seed(0)
    t = cfg.data.sample_rate // 10
    return {"wave": 0.1 * torch.randn(batch_size, t, generator=g),
            "lengths": torch.tensor([t] + [t - 160] * (batch_size - 1))}


def from_pretrained(name_or_dir: str | Path) -> DigitClassifier:
    """Load a checkpoint dir or hub name (``speech/<name>`` or ``<name>``)."""
    sd, meta, path = common.load_pretrained(name_or_dir, pipeline=DOMAIN)
    if is_ctc_checkpoint(meta):  # long-stream CTC recogniser (ctc_model.py)
        return load_ctc(sd, meta, path)
    with common.checkpoint_errors(path):  # an edited config.json -> one UserError naming the dir
        cfg = common.config_from_dict(Config, meta["config"])
        return common.load_weights(build_model(cfg), sd, path, meta)


@torch.no_grad()
def predict_proba(model: DigitClassifier, waves: list[Tensor], batch_size: int = 32,
                  speakers: list[str] | None = None) -> Tensor:
    """Class probabilities ``(N, c)`` of mono waveforms at the model's sample rate.

    A ``norm=speaker`` model normalises each clip by the profile of its speaker's clips among
    ``waves`` (``speakers``: one name per clip; None: all of them one speaker)."""
    from .data import collate

    model.eval()
    profiles = model.speaker_profiles(waves, speakers)
    out = []
    for i in range(0, len(waves), batch_size):
        x, lengths = collate(waves[i : i + batch_size])
        prof = None if profiles is None else profiles[i : i + batch_size]
        out.append(torch.softmax(model(x, lengths, prof), -1))
    return torch.cat(out)


def _level(feats: Tensor, mask: Tensor) -> Tensor:
    """``(B, 1, 1)``: each clip's mean log-mel over its valid frames and all bands (its loudness)."""
    return common.masked_mean(feats, mask).mean(-1)[:, None, None]


def _profile(feats: Tensor, mask: Tensor | None) -> Tensor:
    """``(B, 2, m)``: per-band mean and std (floored) over the valid frames of ``feats (B, L, m)``."""
    mean = common.masked_mean(feats, mask)
    var = common.masked_mean((feats - mean[:, None]).pow(2), mask)
    return torch.stack([mean, var.clamp_min(1e-4).sqrt()], 1)
