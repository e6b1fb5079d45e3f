"""Speech pipeline: FSDD splits, the classifier's padding invariance, predict / evaluate through
the CLI (exit codes, one-line errors), the MFCC baseline and the demo handler. Tiny models;
real FSDD clips from ``$LONGSTREAM_DATA``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from longstream.pipelines.common import UserError
from longstream.pipelines.speech import config as C
from longstream.pipelines.speech import data as D
from longstream.pipelines.speech import evaluate as E
from longstream.pipelines.speech import model as M
from longstream.pipelines.speech.cli import main as cli_main


@pytest.fixture(scope="module")
def clips():
    return D.list_clips()


def test_standard_split_is_takes_0_to_4(clips):
    cfg = C.DataConfig()
    test, train = D.split_clips(clips, cfg, "test"), D.split_clips(clips, cfg, "train")
    assert len(clips) == 3000 and len(test) == 300 and len(train) == 2700
    assert {c.take for c in test} == set(range(5)) and min(c.take for c in train) == 5
    assert {(c.speaker, c.digit) for c in test} == {(s, d) for s in D.SPEAKERS for d in range(10)}
    assert not {c.path for c in test} & {c.path for c in train}


@pytest.mark.parametrize("speaker", D.SPEAKERS)
def test_leave_one_speaker_out(clips, speaker):
    cfg = C.DataConfig(split=f"loso:{speaker}")
    test, train = D.split_clips(clips, cfg, "test"), D.split_clips(clips, cfg, "train")
    assert len(test) == 500 and len(train) == 2500
    assert {c.speaker for c in test} == {speaker} and speaker not in {c.speaker for c in train}


def test_bad_split_and_folder_are_user_errors(clips, tmp_path):
    with pytest.raises(UserError, match="unknown speaker 'bob'; known: george"):
        D.split_clips(clips, C.DataConfig(split="loso:bob"), "test")
    with pytest.raises(UserError, match="use 'standard' or 'loso:<speaker>'"):
        D.split_clips(clips, C.DataConfig(split="random"), "test")
    with pytest.raises(UserError, match="holds no files named like 7_jackson_0.wav"):
        D.list_clips(tmp_path)


@pytest.mark.parametrize("preset,norm", [("tiny", "utterance"), ("tiny", "cmvn"), ("tiny", "global"),
                                         ("tiny", "speaker"), ("tiny-raw", "utterance")])
def test_padded_batch_equals_one_clip_at_a_time(preset, norm):
    cfg = C.PRESETS[preset]()
    cfg.model.norm = norm
    torch.manual_seed(0)
    model = M.build_model(cfg).eval()
    waves = [0.1 * torch.randn(n) for n in (2400, 800, 1700)]
    x, lengths = D.collate(waves)
    with torch.no_grad():
        batched = model(x, lengths)
        single = torch.cat([model(w[None]) for w in waves])
    assert torch.allclose(batched, single, atol=1e-5)


def test_augmentation_is_a_function_of_the_generator():
    aug = C.AugmentConfig()
    w = torch.sin(torch.arange(4000) * 0.05) * 0.3
    a = D.augment_wave(w, aug, 8000, torch.Generator().manual_seed(3), 16000)
    b = D.augment_wave(w, aug, 8000, torch.Generator().manual_seed(3), 16000)
    c = D.augment_wave(w, aug, 8000, torch.Generator().manual_seed(4), 16000)
    assert torch.equal(a, b) and not (a.shape == c.shape and torch.equal(a, c))
    assert float(a.abs().max()) <= 1.0
    fast = D._speed(w, 1.25, 8000)
    assert len(fast) == 3200  # 25% faster = 4/5 of the samples


def test_predict_on_examples_and_out_file(tiny_checkpoint, tmp_path, capsys):
    ckpt = str(tiny_checkpoint("speech"))
    res = E.predict(ckpt, E.EXAMPLE_INPUTS)
    assert [r["input"] for r in res] == E.EXAMPLE_INPUTS
    for r in res:
        assert 0 <= r["digit"] <= 9 and abs(sum(r["probs"]) - 1) < 1e-3 and len(r["top"]) == 3
        assert r["top"][0]["digit"] == r["digit"] and r["top"][0]["p"] >= r["top"][1]["p"]
        assert 0.5 < r["seconds"] < 2.0  # 22.05 kHz synthetic speech, resampled to 8 kHz
    out = tmp_path / "pred.json"
    assert cli_main(["predict", "--checkpoint", ckpt, E.EXAMPLE_INPUTS[0], "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())[0]["digit"] == res[0]["digit"]


@pytest.mark.parametrize("case,expect", [
    ("empty", "the file is empty"), ("text", "not a readable audio file"), ("silent", "the audio is silent"),
    ("nan", "not a finite number"), ("short", "too short for one frame"), ("missing", "is not an existing audio file"),
])
def test_predict_bad_files_exit_2_with_one_line(tiny_checkpoint, tmp_path, capsys, case, expect):
    p = tmp_path / f"{case}.wav"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("hello, I am not audio\n")
    elif case == "silent":
        sf.write(str(p), np.zeros(4000), 8000)
    elif case == "nan":
        x = np.full(4000, 0.1)
        x[10] = np.nan
        sf.write(str(p), x, 8000, subtype="DOUBLE")
    elif case == "short":
        sf.write(str(p), np.full(50, 0.2), 8000)  # 6 ms
    out = tmp_path / "out.json"
    capsys.readouterr()
    rc = cli_main(["predict", "--checkpoint", str(tiny_checkpoint("speech")), str(p), "--out", str(out), "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and expect in err[0], err
    assert p.name in err[0] and not out.exists()


def test_evaluate_reports_the_stable_keys_per_speaker(tiny_checkpoint, capsys):
    ckpt = str(tiny_checkpoint("speech"))
    capsys.readouterr()
    assert cli_main(["evaluate", "--checkpoint", ckpt, "--json", "--quiet"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(E.METRIC_KEYS) <= set(m) and m["n"] == 40 and m["split"] == "standard"
    assert set(m["accuracy_by_speaker"]) == set(D.SPEAKERS)
    conf = np.array(m["confusion"])
    assert conf.shape == (10, 10) and conf.sum() == 40 and abs(np.trace(conf) / 40 - m["accuracy"]) < 1e-9


def test_evaluate_with_a_missing_data_folder_is_a_user_error(tiny_checkpoint, tmp_path, capsys):
    rc = cli_main(["evaluate", "--checkpoint", str(tiny_checkpoint("speech")), "--data", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0]


def test_mfcc_baseline_separates_two_digits(clips):
    cfg = C.DataConfig()
    pick = [c for c in clips if c.digit in (0, 1) and c.speaker in ("jackson", "george")]
    train = [c for c in pick if c.take >= 40]
    test = [c for c in pick if c.take < 5]
    load = lambda cs: ([D.read_audio(c.path, 8000) for c in cs], torch.tensor([c.digit for c in cs]))  # noqa: E731
    from longstream.pipelines.speech.baselines import fit_score, mfcc_stats

    assert mfcc_stats(load(test[:2])[0]).shape == (2, 81)
    res = fit_score(load(train), load(test), cfg.sample_rate)
    assert res["n"] == 20 and res["accuracy"] >= 0.9


def test_demo_handler_returns_digit_and_plot(tiny_checkpoint):
    pytest.importorskip("gradio")
    from longstream.pipelines.speech import demo

    text, probs, fig = demo.recognise(E.EXAMPLE_INPUTS[0], None, str(tiny_checkpoint("speech")))
    assert text.startswith("Heard digit ") and "seven.wav" in text
    assert set(probs) == {str(i) for i in range(10)} and abs(sum(probs.values()) - 1) < 1e-3
    assert fig.axes[0].get_xlabel() == "time (s)"
    with pytest.raises(UserError, match="no audio"):
        demo.recognise(None, None, str(tiny_checkpoint("speech")))
    assert "three.flac" in demo.recognise(None, E.EXAMPLE_INPUTS[1], str(tiny_checkpoint("speech")))[0]
    chunk = (16000, (np.sin(np.arange(16000) * 0.1) * 8000).astype(np.int16))
    msg, buf = demo.live(chunk, {}, str(tiny_checkpoint("speech")))
    assert msg.startswith("now hearing: ") and len(buf["wave"]) == 8000  # 1 s at 16 kHz -> 8 kHz
    msg, buf = demo.live(chunk, buf, str(tiny_checkpoint("speech")))
    assert len(buf["wave"]) == int(demo.LIVE_WINDOW_S * 8000)  # the buffer keeps only the last window
    assert demo.live(None, buf)[0].startswith("waiting")


def test_trim_silence_keeps_the_voiced_part():
    sr = 8000
    tone = 0.3 * torch.sin(torch.arange(2400) * 0.3)
    w = torch.cat([torch.zeros(4000), tone, 1e-4 * torch.randn(3000)])
    a, b = D.voiced_region(w, sr)
    assert (a, b) == (4000, 6400)
    t = D.trim_silence(w, sr, margin_ms=20)
    assert len(t) == 2400 + 2 * 160 and torch.equal(t[160:2560], tone)


def test_shipped_model_recognises_the_synthetic_examples():
    """The shipped log-mel Mamba hears the eSpeak NG "seven" and "three" (an unseen, synthetic speaker)."""
    res = E.predict(E.DEFAULT_CHECKPOINT, E.EXAMPLE_INPUTS)
    assert [r["digit"] for r in res] == [7, 3]
    assert min(r["confidence"] for r in res) > 0.8
