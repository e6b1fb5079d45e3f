"""Regenerate the example recordings of the speech demo with the eSpeak NG synthesiser.

The examples are synthetic speech (no FSDD clip is copied into the repository): "seven" as a
22.05 kHz 16-bit WAV and "three" as FLAC, so ``predict`` on them also exercises resampling and
a second format. Needs ``espeak-ng`` on PATH (Debian/Ubuntu: ``apt-get install espeak-ng``).

    python demos/speech/make_examples.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf

HERE = Path(__file__).resolve().parent
EXAMPLES = {"seven.wav": ("seven", "PCM_16"), "three.flac": ("three", "PCM_16")}


def main() -> int:
    exe = shutil.which("espeak-ng")
    if exe is None:
        print("espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for name, (word, subtype) in EXAMPLES.items():
            raw = Path(tmp) / "raw.wav"
            subprocess.run([exe, "-v", "en-us", "-s", "140", "-w", str(raw), word], check=True)
            data, sr = sf.read(str(raw), dtype="float32")
            sf.write(str(HERE / name), data, sr, subtype=subtype)
            print(f"wrote {HERE / name} ({len(data) / sr:.2f} s at {sr} Hz)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
