"""Streaming CTC recognition: chunked == full, block resampling, ``transcribe`` / ``stream`` CLI.

Default tests use a tiny random model; the shipped ``speech/mamba-ctc-digits`` checks
(digit error rate, SRT times against generated ground truth) run on a 60 s stream here and on
10-minute streams under ``-m slow``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from longstream.pipelines.speech import cli
from longstream.pipelines.speech.config import ctc_tiny
from longstream.pipelines.speech.ctc_model import build_ctc_model
from longstream.pipelines.speech.recognizer import BlockResampler, StreamingRecognizer
from longstream.pipelines.speech.scoring import digit_error_rate, timing_errors
from longstream.pipelines.speech.streams import SAMPLE_RATE, StreamSpec, load_clips, make_stream, write_stream
from longstream.pipelines.speech.subtitles import parse_srt

SHIPPED = "speech/mamba-ctc-digits"


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    m = build_ctc_model(ctc_tiny())
    with torch.no_grad():
        m.feat_mean.fill_(-6.0)
        m.feat_std.fill_(3.0)
    return m.eval()


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_model, tmp_path_factory):
    return str(tiny_model.save_pretrained(tmp_path_factory.mktemp("ctc") / "tiny-ctc"))


@pytest.fixture(scope="module")
def stream_wav(tmp_path_factory):
    clips = load_clips("test", speakers=["jackson"])
    s = make_stream(clips, StreamSpec(seconds=6.0), 5)
    return write_stream(s, tmp_path_factory.mktemp("wav") / "digits.wav")[0], s


def test_chunked_streaming_equals_one_full_forward(tiny_model):
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(int(3.3 * SAMPLE_RATE))).astype(np.float32)
    with torch.no_grad():
        full_ctc, full_vad, _ = tiny_model(torch.from_numpy(wave)[None])
    rec = StreamingRecognizer(tiny_model)
    outs, i = [], 0
    while i < len(wave):
        k = int(rng.integers(1, 2500))  # odd sizes: less than one frame, several tokens
        outs.append(rec.feed_logits(wave[i : i + k]))
        i += k
    ctc = torch.cat([o[0] for o in outs])
    vad = torch.cat([o[1] for o in outs])
    assert ctc.shape == full_ctc[0].shape == (tiny_model.n_tokens(len(wave)), 11)
    torch.testing.assert_close(ctc, full_ctc[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vad, full_vad[0], atol=1e-4, rtol=1e-4)
    assert rec.carry.shape[0] < tiny_model.stack and rec.framer.buf.shape[-1] < 400  # bounded carry


def test_token_times_match_the_frame_layout(tiny_model):
    m = tiny_model  # 25 ms window, 10 ms hop, 2 frames per token
    assert m.token_sec == pytest.approx(0.02)
    assert m.token_avail(0) == pytest.approx((80 + 200) / 8000) and m.token_center(0) == pytest.approx(140 / 8000)
    assert m.n_tokens(200 + 80 * 3) == 2


@pytest.mark.parametrize("orig", [48000, 44100, 16000])
def test_block_resampler_equals_resampling_the_whole_signal(orig):
    import torchaudio.functional as AF

    rng = np.random.default_rng(1)
    x = rng.standard_normal(int(1.3 * orig)).astype(np.float32) * 0.1
    whole = AF.resample(torch.from_numpy(x), orig, SAMPLE_RATE).numpy()
    rs, parts, i = BlockResampler(orig), [], 0
    while i < len(x):
        k = int(rng.integers(100, 5000))
        parts.append(rs.push(x[i : i + k]))
        i += k
    parts.append(rs.flush())
    got = np.concatenate(parts)
    assert len(got) == len(whole)
    np.testing.assert_allclose(got, whole, atol=2e-5)


def _run(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_transcribe_writes_json_srt_txt(tiny_ckpt, stream_wav, tmp_path, capsys):
    wav, _ = stream_wav
    out = tmp_path / "t.json"
    rc, stdout, _ = _run(["transcribe", str(wav), "--checkpoint", tiny_ckpt, "--out", str(out), "--quiet"], capsys)
    assert rc == 0
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["audio_seconds"] == pytest.approx(6.0, abs=0.01) and res["sample_rate"] == 8000
    assert json.loads(out.read_text())["text"] == res["text"]
    cues = parse_srt(out.with_suffix(".srt").read_text()) if res["words"] else []
    assert len(cues) == len(res["words"])
    assert out.with_suffix(".txt").read_text().strip() == res["text"]


def test_stream_prints_partials_and_ends_with_json(tiny_ckpt, stream_wav, capsys):
    wav, _ = stream_wav
    rc, stdout, _ = _run(["stream", str(wav), "--checkpoint", tiny_ckpt, "--chunk-ms", "100", "--quiet"], capsys)
    assert rc == 0
    lines = stdout.strip().splitlines()
    res = json.loads(lines[-1])
    assert res["partials"] == sum(ln.startswith("partial") for ln in lines) and res["chunk_ms"] == 100


def test_transcribe_resampled_file_gives_the_same_transcript(tiny_ckpt, stream_wav, tmp_path, capsys):
    import torchaudio.functional as AF

    wav, s = stream_wav
    up = AF.resample(torch.from_numpy(s.audio), 8000, 16000).numpy()
    p16 = tmp_path / "digits16k.wav"
    sf.write(str(p16), np.stack([up, up], 1), 16000, subtype="FLOAT")  # stereo 16 kHz
    r8 = json.loads(_run(["transcribe", str(wav), "--checkpoint", tiny_ckpt, "--quiet"], capsys)[1].splitlines()[-1])
    r16 = json.loads(_run(["transcribe", str(p16), "--checkpoint", tiny_ckpt, "--quiet"], capsys)[1].splitlines()[-1])
    assert r16["sample_rate"] == 16000 and r16["audio_seconds"] == pytest.approx(r8["audio_seconds"], abs=1e-3)


@pytest.mark.parametrize("case", ["missing", "empty", "not_audio", "nan", "huge", "chunk"])
def test_transcribe_bad_input_is_one_error_and_writes_nothing(case, tiny_ckpt, tmp_path, capsys):
    f = tmp_path / f"{case}.wav"
    extra = []
    if case == "empty":
        f.write_bytes(b"")
    elif case == "not_audio":
        f.write_text("hello, not a wav\n")
    elif case in ("nan", "huge"):
        x = np.zeros(8000)
        x[4000] = math.nan if case == "nan" else 1e308
        sf.write(str(f), x, 8000, subtype="DOUBLE")
    elif case == "chunk":
        sf.write(str(f), np.zeros(800), 8000)
        extra = ["--chunk-ms", "nan"]
    out = tmp_path / "res.json"
    rc, stdout, stderr = _run(["transcribe", str(f), "--checkpoint", tiny_ckpt, "--out", str(out), *extra], capsys)
    assert rc == 2, stderr
    errs = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errs) == 1 and "Traceback" not in stderr
    assert (f.name in errs[0]) or case == "chunk"
    if case in ("nan", "huge"):
        assert "0.500 s" in errs[0]
    assert not out.exists() and not out.with_suffix(".srt").exists() and not out.with_suffix(".txt").exists()


def test_classifier_checkpoint_is_refused_by_transcribe(tmp_path, capsys):
    from longstream.pipelines.speech.config import tiny
    from longstream.pipelines.speech.model import build_model

    ck = build_model(tiny()).save_pretrained(tmp_path / "clf")
    f = tmp_path / "x.wav"
    sf.write(str(f), np.zeros(800), 8000)
    rc, _, stderr = _run(["transcribe", str(f), "--checkpoint", str(ck)], capsys)
    assert rc == 2 and "mamba-ctc-digits" in stderr


# ------------------------------------------------------------------ the shipped checkpoint
def _shipped():
    from longstream.pipelines.common import CHECKPOINTS_DIR

    if not (Path(CHECKPOINTS_DIR) / SHIPPED / "config.json").exists():
        pytest.skip(f"{SHIPPED} is not shipped in this checkout")
    return SHIPPED


def _check_srt_against_truth(seconds: float, seed: int, tmp_path, capsys, max_der: float):
    name = _shipped()
    s = make_stream(load_clips("test"), StreamSpec(seconds=seconds), seed)
    wav, _ = write_stream(s, tmp_path / "long.wav")
    out = tmp_path / "long.json"
    rc, _, err = _run(["transcribe", str(wav), "--checkpoint", name, "--out", str(out), "--quiet"], capsys)
    assert rc == 0, err
    cues = parse_srt(out.with_suffix(".srt").read_text())
    hyp = [{"digit": int(c["text"]), "start": c["start"], "end": c["end"]} for c in cues]
    der = digit_error_rate([s.digits], [[h["digit"] for h in hyp]])["der"]
    assert der <= max_der
    ds, de = timing_errors([{"digit": w.digit, "start": w.start, "end": w.end} for w in s.words], hyp)
    both = np.abs(np.concatenate([ds, de]))
    assert len(ds) >= 0.95 * len(s.words)
    assert (both <= 0.1).mean() >= 0.95, f"{(both <= 0.1).mean():.3f} of word boundaries within 100 ms"
    return der, both


def test_shipped_checkpoint_srt_times_on_a_one_minute_stream(tmp_path, capsys):
    _check_srt_against_truth(60.0, 2024, tmp_path, capsys, max_der=0.05)


@pytest.mark.slow
def test_shipped_checkpoint_on_a_ten_minute_stream(tmp_path, capsys):
    _check_srt_against_truth(600.0, 4242, tmp_path, capsys, max_der=0.03)


# ------------------------------------------------------------------ the long-form demo panel
def test_demo_panel_handlers(tiny_model, stream_wav, monkeypatch):
    from longstream.pipelines.common import UserError
    from longstream.pipelines.speech import transcript_demo as td

    monkeypatch.setattr(td.CTC_MODELS, "get", lambda name: tiny_model)
    wav, s = stream_wav
    text, fig, srt = td.transcribe_upload(None, str(wav))  # no file in the box: the recording
    assert "digits in 6.0 s" in text and Path(srt).exists() and fig is not None
    with pytest.raises(UserError, match="no audio"):
        td.transcribe_upload(None, None)
    # streaming microphone: int16 chunks at 16 kHz; the engine's state lives in the returned dict
    import torchaudio.functional as AF

    up = (AF.resample(torch.from_numpy(s.audio), 8000, 16000).numpy() * 32767).astype(np.int16)
    state: dict = {}
    for i in range(0, len(up), 4000):
        msg, state = td.stream_chunk((16000, up[i : i + 4000]), state)
    assert msg.startswith("6.0 s heard") or msg.startswith("5.9 s heard")
    assert state["rec"].samples == pytest.approx(6.0 * SAMPLE_RATE, abs=200)


@pytest.mark.slow  # ~15 s on a loaded 2-core box: a tiny training run, calibration and three evaluations
def test_calibrate_rewrites_offsets_and_metrics_that_evaluate_reproduces(tmp_path, capsys):
    from longstream.pipelines.common import read_checkpoint_config
    from longstream.pipelines.speech.evaluate import evaluate

    rc, _, err = _run(["train", "--preset", "ctc-tiny", "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert rc == 0, err
    rc, stdout, err = _run(["calibrate", "--checkpoint", str(tmp_path / "run"), "--quiet"], capsys)
    assert rc == 0, err
    meta = read_checkpoint_config(tmp_path / "run")
    cal = meta["calibration"]
    assert meta["config"]["model"]["start_offset"] == cal["start_offset"]
    got = evaluate(str(tmp_path / "run"))
    for k in ("der", "accuracy", "loss", "within_100ms"):
        assert got[k] == pytest.approx(meta["metrics"][k], abs=1e-6)
    rc, _, err = _run(["calibrate", "--checkpoint", str(tmp_path / "nope")], capsys)
    assert rc == 2 and "not a checkpoint directory" in err
