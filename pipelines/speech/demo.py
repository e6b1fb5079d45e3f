"""Gradio tab of the speech pipeline: record or upload a spoken digit, see what was heard.

- **Recognise**: an uploaded file (WAV / FLAC / OGG / MP3, any rate, stereo mixed down) or,
  when the file box is empty, a microphone recording -> the digit with its probabilities and a waveform plot that marks the
  voiced region where the digit was heard (``speech/mamba-digits`` by default, or the raw
  waveform S4D model).
- **Live**: a streaming microphone; every chunk re-scores the last ``LIVE_WINDOW_S`` seconds
  and shows the current digit (per-user audio buffer in ``gr.State``).
- **Long-form panel**: ``transcript_demo.build_panel(upload, audio)`` (the long-stream CTC
  recogniser of this pipeline) adds its transcript / timeline panel under the same inputs, inside
  the tab's ``gr.Blocks``, with the ``gr.File`` box and the ``gr.Audio`` (microphone / upload)
  component; ``common.file_path`` turns either value into a path.

``build_demo()`` builds the tab; nothing runs on import, gradio / matplotlib are imported lazily.
"""

from __future__ import annotations

from typing import Any

from longstream.pipelines.common import ModelCache, UserError, connect, file_path

DEMO_TITLE = "Speech (spoken digits)"
DEMO_BAD_INPUT = {"elem_id": "speech-file", "file": ("notaudio.wav", "this is text, not audio\n"),
                  "expect": "notaudio.wav"}
AUDIO_TYPES = [".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".m4a"]
CHECKPOINTS = ("speech/mamba-digits", "speech/s4d-raw-digits")
MAX_SECONDS = 30.0  # the page's limit per recording (the CLI allows longer files)
LIVE_WINDOW_S = 1.5


def _load(checkpoint: str):
    from .model import from_pretrained

    return from_pretrained(checkpoint)


MODELS = ModelCache(_load, maxsize=2)  # loaded once per checkpoint name, not on every click


def _available() -> list[str]:
    from longstream.pipelines.hub import list_models

    names = {e.name for e in list_models("speech")}
    return [c for c in CHECKPOINTS if c in names] or list(CHECKPOINTS[:1])


def waveform_figure(wave, sr: int, digit: int, p: float, region: tuple[float, float]):
    """Waveform with the voiced region shaded and labelled with the heard digit."""
    import numpy as np
    from matplotlib.figure import Figure

    t = np.arange(len(wave)) / sr
    fig = Figure(figsize=(9, 2.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(t, wave.numpy(), lw=0.6, color="tab:blue")
    ax.axvspan(region[0], region[1], color="tab:orange", alpha=0.25)
    ax.text((region[0] + region[1]) / 2, 0.9, f"heard: {digit}  (p={p:.2f})", ha="center", va="top",
            transform=ax.get_xaxis_transform(), fontsize=11, weight="bold")
    ax.set_xlim(0, max(t[-1] if len(t) else 0.0, 1e-3))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("amplitude")
    fig.tight_layout()
    return fig


def recognise(upload: Any, recording: Any = None, checkpoint: str | None = None) -> tuple[str, dict[str, float], Any]:
    """``(summary, {digit: p}, waveform figure)`` for the uploaded file, else the microphone recording."""
    from pathlib import Path

    from .data import read_audio_sr, voiced_region
    from .evaluate import classify

    audio = file_path(upload) or file_path(recording)
    if not audio:
        raise UserError("no audio: upload a file or record one with the microphone")
    from longstream.encoders.audio import resample

    name = Path(audio).name
    wave, sr_in = read_audio_sr(audio, None, max_seconds=MAX_SECONDS)  # a bad file is reported before any model loads
    model = MODELS.get(checkpoint or CHECKPOINTS[0])
    sr = model.cfg.data.sample_rate
    wave = resample(wave, sr_in, sr)
    r = classify(model, [wave], [name])[0]
    a, b = voiced_region(wave, sr)
    region = (a / sr, b / sr)
    top = ", ".join(f"{t['digit']} ({t['p']:.2f})" for t in r["top"])
    text = (f"Heard digit {r['digit']} (p={r['confidence']:.3f}) in {name}, {r['seconds']:.2f} s; "
            f"voiced {region[0]:.2f}-{region[1]:.2f} s\ntop 3: {top}\nmodel: {checkpoint or CHECKPOINTS[0]}")
    return text, {str(i): float(v) for i, v in enumerate(r["probs"])}, waveform_figure(wave, sr, r["digit"],
                                                                                        r["confidence"], region)


def live(chunk: Any, buffer: dict | None, checkpoint: str | None = None) -> tuple[str, dict]:
    """A streaming microphone chunk ``(sr, int16 / float array)`` -> the digit of the last window."""
    import numpy as np
    import torch

    from .evaluate import classify

    buffer = dict(buffer or {})
    if chunk is None:
        return "waiting for audio…", buffer
    sr_in, data = chunk
    x = np.asarray(data, dtype=np.float64)
    if np.issubdtype(np.asarray(data).dtype, np.integer):
        x = x / 32768.0
    if x.ndim == 2:
        x = x.mean(1)
    model = MODELS.get(checkpoint or CHECKPOINTS[0])
    sr = model.cfg.data.sample_rate
    from longstream.encoders.audio import resample

    w = resample(torch.from_numpy(x).float(), int(sr_in), sr)
    prev = buffer.get("wave")
    wave = torch.cat([torch.as_tensor(prev), w]) if prev is not None else w
    wave = wave[-int(LIVE_WINDOW_S * sr):]
    buffer["wave"] = wave.tolist()
    if float(wave.abs().max()) < 1e-3 or model.num_frames(len(wave)) < 1:
        return "listening… (silence)", buffer
    r = classify(model, [wave], ["microphone"])[0]
    return f"now hearing: {r['digit']} (p={r['confidence']:.2f})", buffer


def _long_form_panel():
    """The long-form recogniser's panel builder (``transcript_demo.build_panel``)."""
    from .transcript_demo import build_panel

    return build_panel


def build_demo(checkpoint: str | None = None):
    """The speech tab as a ``gr.Blocks`` (not launched)."""
    import gradio as gr

    from .evaluate import EXAMPLE_INPUTS

    models = _available()
    with gr.Blocks(title=DEMO_TITLE) as demo:
        gr.Markdown(
            "### Spoken digits: record or upload a digit (0-9)\n"
            "Log-mel + Mamba (`speech/mamba-digits`) or raw-waveform S4D (`speech/s4d-raw-digits`), trained on "
            "the Free Spoken Digit Dataset (6 speakers, 8 kHz). Any rate / format is resampled to 8 kHz mono."
        )
        with gr.Row():
            audio = gr.Audio(value=EXAMPLE_INPUTS[0], sources=["microphone", "upload"], type="filepath",
                             label="record or upload (the example: synthetic 'seven')", elem_id="speech-audio")
            upload = gr.File(file_types=AUDIO_TYPES, label="or an audio file (WAV, FLAC, OGG, MP3; used first)",
                             elem_id="speech-file")
            model = gr.Dropdown(models, value=checkpoint or models[0], label="model", elem_id="speech-model")
        btn = gr.Button("Recognise", variant="primary", elem_id="speech-run")
        out = gr.Textbox(label="result", lines=3, elem_id="speech-output")
        with gr.Row():
            probs = gr.Label(label="digit probabilities", num_top_classes=5)
            plot = gr.Plot(label="waveform: where the digit was heard")
        connect(btn.click, recognise, [upload, audio, model], [out, probs, plot], api_name="speech_recognise")
        gr.Examples([[p] for p in EXAMPLE_INPUTS], [audio], label="examples (synthetic speech)")
        with gr.Accordion("live microphone (streaming)", open=False):
            mic = gr.Audio(sources=["microphone"], streaming=True, label="speak digits", elem_id="speech-live-mic")
            live_out = gr.Textbox(label="current digit (last 1.5 s)", elem_id="speech-live-output")
            buf = gr.State({})
            connect(mic.stream, live, [mic, buf, model], [live_out, buf], api_name="speech_live",
                    stream_every=0.5, time_limit=120)
        panel = _long_form_panel()
        if panel is not None:
            panel(upload, audio)
    return demo
