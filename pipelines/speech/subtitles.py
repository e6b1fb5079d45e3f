"""Transcript writers: JSON (words with start / end / confidence), SRT and plain text.

SRT layout: one cue per digit (``N``, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, the digit), in
time order, so a player highlights each digit while it is spoken and the cue times are the
word times of the JSON (rounded to the millisecond). Plain text: the digits separated by
spaces, one line. Times are never negative and a cue always ends after it starts (a 1 ms
cue at worst).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from longstream.pipelines.common import dumps_strict

_SRT_TIME = re.compile(r"(\d+):(\d{2}):(\d{2}),(\d{3})")


def srt_time(seconds: float) -> str:
    """``3725.0456 -> "01:02:05,046"`` (milliseconds rounded, clamped at 0)."""
    ms = max(0, int(round(seconds * 1000)))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def parse_srt_time(text: str) -> float:
    m = _SRT_TIME.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not an SRT time: {text!r}")
    h, mi, s, ms = (int(g) for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


def to_srt(words: Sequence[dict[str, Any]]) -> str:
    """One cue per word; ``words`` are dicts with ``digit`` (or ``text``), ``start``, ``end``."""
    cues = []
    for i, w in enumerate(sorted(words, key=lambda w: w["start"]), 1):
        start_ms = max(0, int(round(w["start"] * 1000)))
        end_ms = max(start_ms + 1, int(round(w["end"] * 1000)))
        label = w.get("text", str(w.get("digit", "")))
        cues.append(f"{i}\n{srt_time(start_ms / 1000)} --> {srt_time(end_ms / 1000)}\n{label}\n")
    return "\n".join(cues)


def parse_srt(text: str) -> list[dict[str, Any]]:
    """Cues of an SRT file -> ``[{"index", "start", "end", "text"}]`` (for tests and round trips)."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if len(lines) < 2:
            continue
        a, b = (p.strip() for p in lines[1].split("-->"))
        out.append({"index": int(lines[0]), "start": parse_srt_time(a), "end": parse_srt_time(b),
                    "text": "\n".join(lines[2:])})
    return out


def to_text(words: Sequence[dict[str, Any]]) -> str:
    return " ".join(str(w.get("text", w.get("digit"))) for w in words) + "\n"


def to_json(result: dict[str, Any]) -> str:
    return dumps_strict(result, indent=1) + "\n"
