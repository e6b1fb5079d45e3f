"""Size limit: no source file in the library, pipelines or apps over 600 lines (DESIGN.md,
issue 10). A file that grows past it is split into modules named for what they hold."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("backbones", "memory", "encoders", "pipelines", "apps")
MAX_LINES = 600


def source_files() -> list[Path]:
    return sorted(p for f in FOLDERS for p in (REPO / f).rglob("*.py"))


def test_source_files_are_found():
    files = source_files()
    assert len(files) > 50, f"only {len(files)} source files found under {FOLDERS}: the scan is broken"
    assert REPO / "backbones" / "mamba.py" in files


def test_no_source_file_over_the_limit():
    over = {}
    for p in source_files():
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            over[str(p.relative_to(REPO))] = n
    assert not over, f"source files over {MAX_LINES} lines (split them by topic): " + ", ".join(
        f"{k} ({v})" for k, v in sorted(over.items(), key=lambda kv: -kv[1])
    )
