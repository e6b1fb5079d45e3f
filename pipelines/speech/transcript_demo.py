"""Long-form panel of the speech tab: connected digits with times (``speech/mamba-ctc-digits``).

Added under the tab's inputs by ``demo.py`` (``build_panel(upload, audio)``):

- **Transcribe**: the file in the tab's file box (else the recording) goes through the same streaming engine as
  ``longstream speech transcribe`` -> the digits with start / end times, a timeline plot
  (waveform envelope with one shaded span per heard digit) and the SRT file to download.
- **Example**: builds a 30 s stream of FSDD test takes (seeded, ``streams.make_stream``) from the
  local data root and puts it in the file box; its ground truth is shown for comparison.
- **Streaming**: a streaming microphone; each chunk is fed to a per-user
  :class:`~.recognizer.StreamingRecognizer` kept in ``gr.State`` and the partial digits appear
  as they are recognised.

gradio and matplotlib are imported inside the functions; nothing runs on import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from longstream.pipelines.common import ModelCache, UserError, connect, file_path

CTC_CHECKPOINT = "speech/mamba-ctc-digits"
PAGE_MAX_SECONDS = 900.0  # the page's limit per file (the CLI has none)


def _load(name: str):
    from .ctc_model import ctc_from_pretrained

    return ctc_from_pretrained(name)


CTC_MODELS = ModelCache(_load, maxsize=1)


def timeline_figure(path: str, words: list[dict[str, Any]]):
    """Waveform envelope (10 ms min / max) with each recognised digit's span shaded and labelled."""
    import soundfile as sf
    from matplotlib.figure import Figure

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(1)
    hop = max(1, sr // 100)
    n = len(x) // hop
    env = x[: n * hop].reshape(n, hop) if n else x[None]
    t = np.arange(len(env)) * hop / sr
    width = min(24.0, max(9.0, len(x) / sr / 5))
    fig = Figure(figsize=(width, 2.8), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.fill_between(t, env.min(1), env.max(1), color="tab:blue", lw=0, alpha=0.7)
    for w in words:
        ax.axvspan(w["start"], w["end"], color="tab:orange", alpha=0.15 + 0.3 * w["confidence"])
        ax.text((w["start"] + w["end"]) / 2, 0.95, str(w["digit"]), ha="center", va="top", fontsize=10,
                weight="bold", transform=ax.get_xaxis_transform())
    ax.set_xlim(0, max(len(x) / sr, 1e-3))
    ax.set_xlabel("time (s)")
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def transcribe_upload(upload: Any, recording: Any = None) -> tuple[str, Any, str]:
    """``(transcript text, timeline figure, SRT file path)`` of the uploaded file, else the recording."""
    import tempfile

    from .subtitles import to_srt
    from .transcribe import open_info, transcribe_file

    audio = file_path(upload) or file_path(recording)
    if not audio:
        raise UserError("no audio: upload a file, record one, or load the example stream")
    info = open_info(Path(audio))
    if info.samplerate and info.frames / info.samplerate > PAGE_MAX_SECONDS:
        raise UserError(f"audio file {audio} is {info.frames / info.samplerate:.0f} s long; the page takes up to "
                        f"{PAGE_MAX_SECONDS:.0f} s (use `longstream speech transcribe` for longer files)",
                        ui_message=f"{Path(audio).name} is longer than the page's {PAGE_MAX_SECONDS:.0f} s limit")
    r = transcribe_file(CTC_MODELS.get(CTC_CHECKPOINT), audio)
    words = r["words"]
    srt = Path(tempfile.mkdtemp(prefix="ls_srt_")) / (Path(audio).stem + ".srt")
    srt.write_text(to_srt(words))
    lines = [f"{len(words)} digits in {r['audio_seconds']:.1f} s (decoded in {r['elapsed_seconds']:.2f} s, "
             f"real-time factor {r['real_time_factor']:.3f}): {r['text']}"]
    lines += [f"{w['digit']}  {w['start']:7.2f} - {w['end']:7.2f} s  (confidence {w['confidence']:.2f})" for w in words[:200]]
    if len(words) > 200:
        lines.append(f"... {len(words) - 200} more in the SRT file")
    return "\n".join(lines), timeline_figure(audio, words), str(srt)


def example_stream() -> tuple[str, str]:
    """A 30 s stream of FSDD test takes in a temp WAV, and its ground-truth digits."""
    import tempfile

    from .streams import StreamSpec, load_clips, make_stream, write_stream

    s = make_stream(load_clips("test"), StreamSpec(seconds=30.0), seed=7)
    wav, _ = write_stream(s, Path(tempfile.mkdtemp(prefix="ls_stream_")) / "fsdd_test_stream_seed7.wav")
    truth = " ".join(str(d) for d in s.digits)
    return str(wav), f"ground truth of the example ({s.info['noise']} noise, {s.info['snr_db']:.1f} dB SNR): {truth}"


def stream_chunk(chunk: Any, state: dict | None) -> tuple[str, dict]:
    """One streaming-microphone chunk ``(sr, samples)`` -> the running transcript."""
    from .recognizer import BlockResampler, StreamingRecognizer

    state = state if isinstance(state, dict) else {}
    if chunk is None:
        return state.get("text", "waiting for audio…"), state
    sr, data = chunk
    x = np.asarray(data)
    x = x.astype(np.float32) / 32768.0 if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(1)
    if not np.isfinite(x).all():
        raise UserError("the microphone sent non-finite samples; try recording again")
    if state.get("sr") != int(sr):  # a new recording (or a new rate): fresh engine
        state = {"sr": int(sr), "rec": StreamingRecognizer(CTC_MODELS.get(CTC_CHECKPOINT)),
                 "rs": BlockResampler(int(sr)), "digits": [], "words": []}
    r = state["rec"].feed(state["rs"].push(x))
    state["digits"] += [str(p.digit) for p in r.partials]
    state["words"] += [f"{w.digit}@{w.start:.2f}s" for w in r.words]
    state["text"] = (f"{r.audio_seconds:.1f} s heard: {' '.join(state['digits']) or '(nothing yet)'}\n"
                     f"final word times: {' '.join(state['words'][-30:])}")
    return state["text"], state


def build_panel(upload, audio) -> None:
    """Add the long-form panel to the enclosing ``gr.Blocks`` (the tab's ``gr.File`` box and ``gr.Audio``)."""
    import gradio as gr

    with gr.Accordion("long form: connected digits with times (CTC, streaming engine)", open=True):
        gr.Markdown("`speech/mamba-ctc-digits`: a causal Mamba reads the audio in 200 ms chunks and emits each digit "
                    "with its start / end time (trained on streams of FSDD digits with pauses and noise).")
        with gr.Row():
            run = gr.Button("Transcribe digits with times", variant="primary", elem_id="speech-ctc-run")
            ex = gr.Button("Load a 30 s example stream (FSDD test takes)", elem_id="speech-ctc-example")
        truth = gr.Markdown()
        text = gr.Textbox(label="transcript (digit, start - end)", lines=6, elem_id="speech-ctc-output")
        plot = gr.Plot(label="timeline: where each digit was heard")
        srt = gr.File(label="SRT subtitles (one cue per digit)")
        connect(run.click, transcribe_upload, [upload, audio], [text, plot, srt], api_name="speech_transcribe")
        connect(ex.click, example_stream, [], [upload, truth], api_name="speech_ctc_example")
        with gr.Accordion("streaming microphone: partial results as you speak", open=False):
            mic = gr.Audio(sources=["microphone"], streaming=True, label="speak digits", elem_id="speech-ctc-mic")
            live = gr.Textbox(label="running transcript", lines=2, elem_id="speech-ctc-live")
            st = gr.State({})
            connect(mic.stream, stream_chunk, [mic, st], [live, st], api_name="speech_ctc_stream",
                    stream_every=0.25, time_limit=600)
