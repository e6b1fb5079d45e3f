"""``longstream speech transcribe FILE`` and ``longstream speech stream FILE``.

Both read the file in blocks (``soundfile.blocks``; never the whole file), mix to mono,
resample to 8 kHz block by block when needed (``recognizer.BlockResampler``) and feed
``--chunk-ms`` chunks to one :class:`~.recognizer.StreamingRecognizer`, so memory stays
constant in the audio length.

- ``transcribe`` (1 s chunks by default: the transcript does not depend on the chunk size, only
  the overhead does) writes nothing until the whole file is decoded, then ``--out FILE.json``
  (words with ``start`` / ``end`` / ``confidence``) plus ``FILE.srt`` (one cue per digit)
  and ``FILE.txt`` beside it, each replaced atomically; the checks of ``--out`` run
  before any audio is read. Without ``--out`` the JSON result is printed only.
- ``stream`` prints every partial result as it appears (``partial <time> s: <digits so far>``)
  and every finalized word (``word <digit> <start>-<end> s``); ``--realtime`` paces the
  feeding at the audio's own speed, as a microphone would.
The last stdout line is the JSON result (the CLI convention).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from longstream.encoders.audio import MAX_ABS_SAMPLE  # beyond it a float file holds garbage, not loud speech
from longstream.pipelines.common import UserError, progress, resolve_out, write_out

from .ctc import WordTime
from .recognizer import BlockResampler, StreamingRecognizer
from .streams import SAMPLE_RATE
from .subtitles import to_json, to_srt, to_text

DEFAULT_CTC_CHECKPOINT = "speech/mamba-ctc-digits"


def open_info(path: Path):
    """``soundfile.info`` of ``path``, or one ``UserError`` naming the file and the fix."""
    import soundfile as sf

    if not path.exists():
        raise UserError(f"audio file {path} does not exist; give the path of a WAV/FLAC/OGG file")
    if not path.is_file():
        raise UserError(f"audio file {path} is not a regular file; give the path of a WAV/FLAC/OGG file")
    if path.stat().st_size == 0:
        raise UserError(f"audio file {path} is empty (0 bytes); give a recording")
    try:
        return sf.info(str(path))
    except Exception as e:  # libsndfile's own message says what is wrong with the file
        msg = " ".join(str(e).split())[:160]
        raise UserError(f"audio file {path} is not readable audio ({msg}); give a WAV, FLAC or OGG file") from None


def read_blocks(path: str | Path, chunk_ms: float = 200.0) -> tuple[Iterator[np.ndarray], dict[str, Any]]:
    """8 kHz mono chunks of ``path`` (lazy) and the file's info. Bad samples are a ``UserError``
    naming the time; only one block is in memory at a time."""
    import soundfile as sf

    path = Path(path)
    info = open_info(path)
    if info.frames == 0 or info.samplerate <= 0:
        raise UserError(f"audio file {path} holds no audio samples; give a recording")
    sr = int(info.samplerate)
    block = max(1, int(round(sr * chunk_ms / 1000)))
    meta = {"sample_rate": sr, "channels": int(info.channels), "seconds": info.frames / sr}

    def gen() -> Iterator[np.ndarray]:
        rs = BlockResampler(sr, SAMPLE_RATE) if sr != SAMPLE_RATE else None
        seen = 0
        for data in sf.blocks(str(path), blocksize=block, dtype="float64", always_2d=True):
            bad = ~np.isfinite(data) | (np.abs(data) > MAX_ABS_SAMPLE)
            if bad.any():
                t, c = (int(i) for i in np.argwhere(bad)[0])
                raise UserError(f"audio file {path}: sample {seen + t} (at {(seen + t) / sr:.3f} s, channel {c}) is "
                                f"{data[t, c]!r}, not audio in [-1, 1]; fix or re-export the recording")
            seen += len(data)
            x = data.mean(1).astype(np.float32)
            yield rs.push(x) if rs is not None else x
        if rs is not None:
            yield rs.flush()

    return gen(), meta


def word_json(w: WordTime) -> dict[str, Any]:
    return {"digit": w.digit, "text": str(w.digit), "start": round(w.start, 3), "end": round(w.end, 3),
            "confidence": round(float(w.confidence), 4)}


def transcribe_file(model, path: str | Path, *, chunk_ms: float = 1000.0, on_chunk=None) -> dict[str, Any]:
    """Decode a whole file in streaming mode; ``on_chunk(ChunkResult)`` sees every chunk's result."""
    chunks, meta = read_blocks(path, chunk_ms)
    rec = StreamingRecognizer(model, source=f"audio file {path}")
    words: list[WordTime] = []
    t0, c0 = time.perf_counter(), time.process_time()
    bar = progress(total=int(meta["seconds"] * 1000), desc="transcribe", unit="ms")
    for c in chunks:
        r = rec.feed(c)
        words += r.words
        bar.update(len(c) * 1000 // SAMPLE_RATE)
        if on_chunk:
            on_chunk(r)
    r = rec.finish()
    words += r.words
    if on_chunk:
        on_chunk(r)
    bar.close()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    audio_s = rec.samples / SAMPLE_RATE
    return {"file": str(path), "audio_seconds": round(audio_s, 3), "sample_rate": meta["sample_rate"],
            "text": " ".join(str(w.digit) for w in words), "n_words": len(words),
            "words": [word_json(w) for w in words], "elapsed_seconds": round(elapsed, 3),
            "real_time_factor": round(elapsed / audio_s, 5) if audio_s > 0 else 0.0,
            "cpu_seconds": round(cpu, 3), "real_time_factor_cpu": round(cpu / audio_s, 5) if audio_s > 0 else 0.0}


def _load(checkpoint: str):
    from .ctc_model import ctc_from_pretrained

    return ctc_from_pretrained(checkpoint)


def _chunk_ms(value: float) -> float:
    if not np.isfinite(value) or not 10 <= value <= 10_000:
        raise UserError(f"--chunk-ms {value:g} is out of range; use 10 to 10000 ms (e.g. 200)")
    return float(value)


def add_transcribe_args(p: argparse.ArgumentParser, chunk_ms: float = 1000.0) -> None:
    p.add_argument("file", metavar="FILE", help="audio file (WAV, FLAC, OGG; any sample rate, mixed to mono)")
    p.add_argument("--checkpoint", default=DEFAULT_CTC_CHECKPOINT, help="CTC checkpoint dir or hub name")
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="write the JSON transcript here, and FILE.srt / FILE.txt beside it")
    p.add_argument("--chunk-ms", type=float, default=chunk_ms,
                   help=f"audio fed per step, ms (default {chunk_ms:g}; the result does not depend on it)")


def add_stream_args(p: argparse.ArgumentParser) -> None:
    add_transcribe_args(p, chunk_ms=200.0)
    p.add_argument("--realtime", action="store_true", help="feed at the audio's own pace (like a microphone)")


def transcribe_command(args: argparse.Namespace) -> dict[str, Any]:
    chunk = _chunk_ms(args.chunk_ms)
    outs = resolve_out(args.out, extra_suffixes=(".srt", ".txt")) if args.out else None  # before any work
    result = transcribe_file(_load(args.checkpoint), args.file, chunk_ms=chunk)
    if outs:
        result["outputs"] = [str(p) for p in outs]
        write_out(outs[1], to_srt(result["words"]))
        write_out(outs[2], to_text(result["words"]))
        write_out(outs[0], to_json(result))
    return result


def stream_command(args: argparse.Namespace) -> dict[str, Any]:
    chunk = _chunk_ms(args.chunk_ms)
    outs = resolve_out(args.out, extra_suffixes=(".srt", ".txt")) if args.out else None
    model = _load(args.checkpoint)
    hyp: list[str] = []
    latencies: list[float] = []
    start = time.perf_counter()

    def on_chunk(r) -> None:
        if args.realtime:  # wait until this much audio would have been spoken
            time.sleep(max(0.0, r.audio_seconds - (time.perf_counter() - start)))
        now = r.audio_seconds
        for p in r.partials:
            hyp.append(str(p.digit))
            latencies.append(now - p.time)
            print(f"partial {now:8.2f} s: {' '.join(hyp[-20:])}", flush=True)
        for w in r.words:
            print(f"word    {w.digit}  {w.start:8.3f}-{w.end:8.3f} s  conf {w.confidence:.2f}", flush=True)

    result = transcribe_file(model, args.file, chunk_ms=chunk, on_chunk=on_chunk)
    result["chunk_ms"] = chunk
    result["partials"] = len(latencies)
    # audio time from a spike token's completion to the end of the chunk that delivered it
    result["partial_delay_ms_mean"] = round(float(np.mean(latencies)) * 1000, 1) if latencies else 0.0
    if outs:
        result["outputs"] = [str(p) for p in outs]
        write_out(outs[1], to_srt(result["words"]))
        write_out(outs[2], to_text(result["words"]))
        write_out(outs[0], to_json(result))
    return result


def predict_ctc(model, inputs: list[str], out_file: Path | None = None) -> list[dict[str, Any]]:
    """``predict`` with a CTC checkpoint: the transcript of each file (``text`` + timed ``words``)."""
    results = []
    for spec in inputs:
        r = transcribe_file(model, spec)
        results.append({"input": spec, "text": r["text"], "words": r["words"], "audio_seconds": r["audio_seconds"]})
    if out_file is not None:
        write_out(out_file, to_json(results))
    return results
