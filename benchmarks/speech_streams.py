"""Long-stream connected-digit recognition benchmark -> ``benchmarks/results/speech_streams.{json,md}``.

One run, pinned to one thread, for the shipped ``speech/mamba-ctc-digits`` (or ``--checkpoint``):

1. **Digit error rate** on 10-minute test streams (``--seeds``; FSDD test takes 0-4 only,
   ``streams.StreamSpec`` defaults: pauses 0.1-1.0 s, white / pink noise at 10-30 dB SNR,
   +-6 dB clip gains), decoded by ``transcribe`` (files read in blocks, 200 ms chunks,
   carried state); word-time errors of the correct digits against the generated ground truth.
2. **Real-time factor** (decode seconds / audio seconds, one thread; wall clock and the
   process's CPU time, which a shared machine inflates less) of that streaming decode,
   at 200 ms and 1 s chunks, against the **baseline measured in the same run**: one offline
   forward over the whole file (the same model, all features in memory), timed interleaved.
3. **Partial-result latency**: for every digit, the delay from the end of the word (ground
   truth) until its partial result is printed, when audio arrives in real time in 200 ms
   chunks: ``chunk end - word end + that chunk's compute time``; median and 90th percentile.
   Also the delay until the word's times are final.
4. **Peak memory** (peak RSS of a fresh process, ``VmHWM``) for 1-minute and 10-minute files,
   streaming vs offline, each in its own subprocess; the growth above the process's RSS
   once the model is loaded is reported too.

Usage::

    python benchmarks/speech_streams.py                 # 3 x 10 min streams (~5 min on one thread)
    python benchmarks/speech_streams.py --seeds 2 --minutes 2   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import cpu_name, interleaved  # noqa: E402

_MEM_SCRIPT = r"""
import json, sys, torch
torch.set_num_threads(1)
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
mode, path, ckpt = sys.argv[1:4]
from longstream.pipelines.speech.ctc_model import ctc_from_pretrained
from longstream.pipelines.speech.transcribe import transcribe_file
m = ctc_from_pretrained(ckpt)
base = rss('VmRSS')
if mode == 'stream':
    r = transcribe_file(m, path, chunk_ms=200.0)
    n = r['n_words']
else:  # offline baseline: the whole file's features and one forward
    import soundfile as sf
    x, sr = sf.read(path, dtype='float32')
    with torch.no_grad():
        logits, vad, _ = m(torch.from_numpy(x)[None])
    n = int(logits.shape[1])
print(json.dumps({'mode': mode, 'peak_rss_mb': rss('VmHWM'), 'loaded_rss_mb': base, 'n': n}))
"""


def peak_memory(mode: str, wav: Path, ckpt: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, mode, str(wav), ckpt], capture_output=True, text=True,
                         env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["growth_mb"] = round(r["peak_rss_mb"] - r["loaded_rss_mb"], 1)
    return r


def latency(model, stream, chunk_ms: float = 200.0) -> dict:
    """Partial / final latencies of one stream fed in real-time chunks (see module docstring)."""
    from longstream.pipelines.speech.recognizer import StreamingRecognizer, chunks_of
    from longstream.pipelines.speech.scoring import aligned_pairs

    sr = stream.sample_rate
    rec = StreamingRecognizer(model)
    partials, finals = [], []
    for c in chunks_of(stream.audio, int(sr * chunk_ms / 1000)):
        t0 = time.perf_counter()
        r = rec.feed(c)
        dt = time.perf_counter() - t0
        partials += [(p.digit, r.audio_seconds + dt) for p in r.partials]
        finals += [(w.digit, r.audio_seconds + dt) for w in r.words]
    finals += [(w.digit, rec.samples / sr) for w in rec.finish().words]
    out = {}
    for name, events in (("partial", partials), ("final", finals)):
        pairs = aligned_pairs(stream.digits, [d for d, _ in events])
        lat = np.array([events[j][1] - stream.words[i].end for i, j in pairs])
        out[f"{name}_latency_ms_median"] = round(float(np.median(lat)) * 1000, 1)
        out[f"{name}_latency_ms_p90"] = round(float(np.percentile(lat, 90)) * 1000, 1)
        out[f"{name}_latency_n"] = int(lat.size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="speech/mamba-ctc-digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "speech_streams"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from longstream.pipelines.speech.ctc_model import ctc_from_pretrained
    from longstream.pipelines.speech.scoring import digit_error_rate, timing_errors, timing_summary
    from longstream.pipelines.speech.streams import StreamSpec, load_clips, make_stream, write_stream
    from longstream.pipelines.speech.transcribe import transcribe_file

    model = ctc_from_pretrained(args.checkpoint)
    clips = load_clips("test")
    seconds = args.minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="speech_streams_"))
    report: dict = {"checkpoint": args.checkpoint, "cpu": cpu_name(), "threads": 1,
                    "loadavg_start": os.getloadavg()[0], "stream_seconds": seconds, "streams": []}
    refs, hyps, ds, de, rtf200, rtf1000, rtf_off, cpu200, cpu1000, cpu_off = ([] for _ in range(10))
    lat = None
    for k in range(args.seeds):
        seed = 20_000 + k
        s = make_stream(clips, StreamSpec(seconds=seconds), seed)
        wav, _ = write_stream(s, tmp / f"test_{seed}.wav")
        x = torch.from_numpy(s.audio)[None]

        res: dict = {}

        def offline(x=x, res=res) -> None:
            c0 = time.process_time()
            with torch.no_grad():
                model(x)
            res["offline_cpu"] = time.process_time() - c0

        def stream200(wav=wav, res=res) -> None:
            res["r"] = transcribe_file(model, wav, chunk_ms=200.0)

        def stream1s(wav=wav, res=res) -> None:
            res["r1"] = transcribe_file(model, wav, chunk_ms=1000.0)

        t = interleaved({"stream_200ms": stream200, "stream_1s": stream1s, "offline_forward": offline}, repeats=1)
        r = res["r"]
        assert r["text"] == res["r1"]["text"], "the transcript must not depend on the chunk size"
        rtf200.append(t["stream_200ms"]["time_s"] / s.seconds)
        rtf1000.append(t["stream_1s"]["time_s"] / s.seconds)
        rtf_off.append(t["offline_forward"]["time_s"] / s.seconds)
        cpu200.append(r["real_time_factor_cpu"])
        cpu1000.append(res["r1"]["real_time_factor_cpu"])
        cpu_off.append(res["offline_cpu"] / s.seconds)
        hyp = [w["digit"] for w in r["words"]]
        der = digit_error_rate([s.digits], [hyp])
        a, b = timing_errors([asdict(w) for w in s.words], r["words"])
        refs.append(s.digits)
        hyps.append(hyp)
        ds.append(a)
        de.append(b)
        report["streams"].append({"seed": seed, "noise": s.info["noise"], "snr_db": s.info["snr_db"],
                                  "n_words": len(s.words), **der, **timing_summary(a, b),
                                  "rtf_stream_200ms": round(rtf200[-1], 5), "rtf_offline": round(rtf_off[-1], 5)})
        if k == 0:
            lat = latency(model, s)
        print(json.dumps(report["streams"][-1]), flush=True)
    report["der"] = digit_error_rate(refs, hyps)
    report["timing"] = timing_summary(np.concatenate(ds), np.concatenate(de))
    report["rtf"] = {"stream_200ms_median": round(float(np.median(rtf200)), 5),
                     "stream_1s_median": round(float(np.median(rtf1000)), 5),
                     "offline_forward_median": round(float(np.median(rtf_off)), 5),
                     "cpu_stream_200ms_median": round(float(np.median(cpu200)), 5),
                     "cpu_stream_1s_median": round(float(np.median(cpu1000)), 5),
                     "cpu_offline_forward_median": round(float(np.median(cpu_off)), 5)}
    report["latency"] = lat
    # peak memory, 1 minute vs the long stream, each in a fresh process
    mem = {}
    short = make_stream(clips, StreamSpec(seconds=60.0), 20_999)
    wav1, _ = write_stream(short, tmp / "one_minute.wav")
    wavn = tmp / "test_20000.wav"
    for mode in ("stream", "offline"):
        mem[mode] = {"1min": peak_memory(mode, wav1, args.checkpoint), "long": peak_memory(mode, wavn, args.checkpoint)}
        mem[mode]["peak_ratio_long_vs_1min"] = round(mem[mode]["long"]["peak_rss_mb"] / mem[mode]["1min"]["peak_rss_mb"], 3)
    report["memory"] = mem
    report["loadavg_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    d, t, rtf, lat, mem = r["der"], r["timing"], r["rtf"], r["latency"], r["memory"]
    mins = r["stream_seconds"] / 60
    lines = [
        f"# Long-stream digit recognition ({r['checkpoint']})", "",
        f"{len(r['streams'])} test streams of {mins:g} min (FSDD test takes 0-4, pauses 0.1-1.0 s, white/pink noise "
        f"10-30 dB SNR), one thread on {r['cpu']}, load average {r['loadavg_start']:.1f} -> {r['loadavg_end']:.1f} "
        "(a shared machine: timings are upper bounds).", "",
        "| metric | value |", "|---|---|",
        f"| digit error rate (pooled, {d['n_ref']} digits) | {d['der'] * 100:.2f}% (sub {d['sub']}, del {d['del']}, ins {d['ins']}) |",
        f"| word boundaries within 100 ms | {t['within_100ms'] * 100:.1f}% (start MAE {t['start_mae_ms']:.0f} ms, end MAE {t['end_mae_ms']:.0f} ms, max {t['boundary_max_ms']:.0f} ms) |",
        f"| real-time factor, streaming 200 ms chunks (wall / CPU time) | {rtf['stream_200ms_median']:.4f} / {rtf['cpu_stream_200ms_median']:.4f} |",
        f"| real-time factor, streaming 1 s chunks, `transcribe` default (wall / CPU) | {rtf['stream_1s_median']:.4f} / {rtf['cpu_stream_1s_median']:.4f} |",
        f"| real-time factor, offline whole-file forward, baseline (wall / CPU) | {rtf['offline_forward_median']:.4f} / {rtf['cpu_offline_forward_median']:.4f} |",
        f"| partial-result latency after word end, median / p90 | {lat['partial_latency_ms_median']:.0f} / {lat['partial_latency_ms_p90']:.0f} ms |",
        f"| final word-time latency after word end, median / p90 | {lat['final_latency_ms_median']:.0f} / {lat['final_latency_ms_p90']:.0f} ms |",
    ]
    for mode in ("stream", "offline"):
        m = mem[mode]
        lines.append(f"| peak RSS, {mode}: 1 min / {mins:g} min | {m['1min']['peak_rss_mb']:.0f} / {m['long']['peak_rss_mb']:.0f} MB "
                     f"(x{m['peak_ratio_long_vs_1min']:.2f}; growth above loaded model {m['1min']['growth_mb']:.0f} / {m['long']['growth_mb']:.0f} MB) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
