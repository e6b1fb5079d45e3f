"""User files in and out of ``predict`` / ``evaluate``: one rule for every pipeline.

In: :func:`as_file` tells a file path from a literal input (``gen:3``, ``4x@0.5``, numbers),
:func:`read_text_file` reads a user's text file with a size limit and one clear error for a
directory, a binary file or text that is not UTF-8 (never a ``UnicodeDecodeError``).

Out: :func:`resolve_out` applies the ``--out`` rule of ``pipelines/CONTRACT.md``:

- ``--out FILE`` names exactly the file written (no suffix is appended); a pipeline that
  writes more than one file derives the others from it with :func:`derived_out`
  (``f.csv`` -> ``f.png``) and reports every path it wrote in its result;
- the parent folder must exist (it is not created: a typo must not make folders);
- an existing directory where a file is expected is an error;
- an existing file is replaced atomically (:mod:`longstream.backbones.io` writers), but only
  when its name has an extension: an existing extension-less file (``/etc/passwd``) is
  never taken for a result file and is refused;
- a location that cannot be written (permissions, read-only file system) is one error,
  found by a real probe before any work is done, so nothing is half-written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from longstream.backbones.io import atomic_write_bytes

from .errors import UserError

#: Default size limit of a user's text input (predict inputs, small data files).
MAX_TEXT_BYTES = 50_000_000


def as_file(spec: str, *, what: str = "input") -> Path | None:
    """``Path(spec)`` if ``spec`` names an existing file, ``None`` if it is a literal.

    A directory is a :class:`UserError` (a predict input is a file or a literal, never a folder).
    """
    if not spec or "\0" in spec:
        return None
    try:
        p = Path(spec).expanduser()
        if p.is_dir():
            raise UserError(f"{what} {spec!r} is a directory; pass a file inside it")
        return p if p.is_file() else None
    except OSError:  # e.g. a name too long for the file system: a literal
        return None


def read_text_file(path: str | os.PathLike, *, what: str = "input", max_bytes: int = MAX_TEXT_BYTES,
                   hint: str = "") -> str:
    """The text of a user's file, decoded as UTF-8 (a BOM is dropped).

    Raises :class:`UserError` naming the file when it is missing, a directory, larger than
    ``max_bytes``, binary (NUL bytes) or not UTF-8 (with the byte offset). ``hint`` says
    what the file should contain (appended to the message).
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory; pass a file{tail}")
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist{tail}")
    size = p.stat().st_size
    if size > max_bytes:
        raise UserError(f"{what} {p} is {size / 1e6:.1f} MB, more than the {max_bytes / 1e6:g} MB limit{tail}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None
    return decode_text(raw, p, what, tail).removeprefix("\ufeff")


def decode_text(raw: bytes, p: Path, what: str, tail: str, *, partial: bool = False) -> str:
    """``raw`` as UTF-8 text; a UserError naming ``p`` for a binary file (NUL bytes) or a
    non-UTF-8 byte (with its line and offset). ``partial``: ``raw`` is a prefix of the file."""
    if b"\0" in raw[:65536]:
        raise UserError(f"{what} {p} is a binary file, not text{tail}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if partial and e.start >= len(raw) - 3 and e.reason == "unexpected end of data":
            return raw[: e.start].decode("utf-8")  # a character cut at the end of the sniffed block
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{what} {p}, line {line}: not UTF-8 text (undecodable byte at offset {e.start}); "
                        f"save it as UTF-8{tail}") from None


def check_text_file(path: str | os.PathLike, *, what: str = "input", hint: str = "", sniff: int = 1 << 20) -> Path:
    """Refuse a binary or non-UTF-8 file before a parser (``pandas.read_csv``, ...) reads it.

    Looks at the first ``sniff`` bytes only (for files too large for :func:`read_text_file`);
    the same messages as :func:`read_text_file`. Returns the path.
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        with open(p, "rb") as f:
            raw = f.read(sniff)
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}{tail}") from None
    decode_text(raw, p, what, tail, partial=len(raw) == sniff)
    return p


def derived_out(out: str | os.PathLike, suffix: str) -> Path:
    """The name of an extra output beside ``out``: its suffix replaced by ``suffix``
    (``f.csv`` -> ``f.png``), or ``suffix`` added when ``out`` has none (``f`` -> ``f.png``)."""
    p = Path(out)
    return p.with_suffix(suffix) if p.suffix else p.with_name(p.name + suffix)


def _check_one(p: Path, flag: str) -> None:
    shown = str(p)
    if p.is_dir():
        raise UserError(f"{flag} {shown} is a directory; name the file to write, e.g. {p / 'result.json'}")
    parent = p.parent
    if not parent.exists():
        raise UserError(f"{flag} {shown}: folder {parent} does not exist; create it first "
                        f"(mkdir -p {parent}) or choose another path")
    if not parent.is_dir():
        raise UserError(f"{flag} {shown}: {parent} is not a folder; choose another path")
    if p.exists() and not p.is_file():
        raise UserError(f"{flag} {shown} exists and is not a regular file; choose another path")
    if p.exists() and not p.suffix:  # e.g. /etc/passwd: not a result file of ours, never replaced
        raise UserError(f"{flag} {shown} is an existing file without an extension, so it is not replaced; "
                        f"name the result file with its format's extension (e.g. {p.name}.json) or remove it first")
    try:  # a real probe: os.access is wrong for root and for read-only mounts
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"{flag} {shown}: cannot write in {parent} ({e.strerror or e}); "
                        "choose a folder you can write to") from None
    if p.exists() and not os.access(p, os.W_OK) and os.geteuid() != 0:
        raise UserError(f"{flag} {shown} exists and is read-only; choose another path")


def resolve_out(out: str | os.PathLike, *, extra_suffixes: Sequence[str] = (), flag: str = "--out") -> list[Path]:
    """Check ``--out`` (and the extra files derived from it) before any work is done.

    Returns ``[out, *derived_out(out, s) for s in extra_suffixes]`` as absolute paths, each
    checked as described in the module docstring. Two outputs with the same name (``--out
    f.png`` when the plot is ``f.png`` too) are an error.
    """
    if str(out).strip() == "":
        raise UserError(f"{flag} is empty; name the file to write")
    main = Path(out).expanduser().absolute()
    paths = [main] + [derived_out(main, s) for s in extra_suffixes]
    if len(set(paths)) != len(paths):
        raise UserError(f"{flag} {out}: this pipeline also writes {', '.join(str(p) for p in paths[1:])} beside it, "
                        f"which would overwrite it; use another suffix for {flag}")
    for p in paths:
        _check_one(p, flag)
    return paths


def write_out(path: str | os.PathLike, data: bytes | str, *, flag: str = "--out") -> Path:
    """Write ``data`` to ``path`` atomically (an existing file is replaced whole); an OS error
    (disk full, permissions) is one :class:`UserError` naming the file."""
    p = Path(path)
    try:
        atomic_write_bytes(p, data.encode() if isinstance(data, str) else data)
    except (PermissionError, IsADirectoryError, FileNotFoundError, NotADirectoryError) as e:
        raise UserError(f"{flag} {p}: cannot write it ({e.strerror or e}); choose another path") from None
    except OSError as e:
        raise UserError(f"{flag} {p}: writing failed ({e.strerror or e}); nothing was written") from None
    return p


def read_json_spec(path: str | os.PathLike, cls: type, *, base: Any = None, what: str = "--data",
                   example: str = "") -> Any:
    """A JSON object file of ``cls`` fields -> a ``cls`` instance, with strict types.

    ``base`` (an instance of ``cls``) supplies the fields the file leaves out. The file is read
    with :func:`read_text_file`; ``NaN`` / ``Infinity``, a non-object, an unknown field or a
    value of the wrong type (``"multipliers": "abc"``) is one :class:`UserError` naming the file
    and the field; ``example`` (a JSON snippet) is shown as the fix.
    """
    import json

    from .config import ConfigError, config_from_dict, config_to_dict

    fix = f"; e.g. {example}" if example else ""
    text = read_text_file(path, what=what, max_bytes=1_000_000, hint=f"give a JSON object of {cls.__name__} fields")

    def no_constant(c: str) -> Any:
        raise UserError(f"{what} {path}: {c} is not allowed; give finite numbers{fix}")

    try:
        over = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}){fix}") from None
    if not isinstance(over, dict):
        raise UserError(f"{what} {path}: expected a JSON object of {cls.__name__} fields, got "
                        f"{type(over).__name__}{fix}")
    merged = {**(config_to_dict(base) if base is not None else {}), **over}
    try:
        return config_from_dict(cls, merged, strict=True)
    except ConfigError as e:
        raise UserError(f"{what} {path}: {e.detail}{fix}") from None
