"""Weights on disk: the one place that writes and reads longstream checkpoints and state files.

Everything that puts tensors (or any file a later run depends on) on disk goes through
this module, so there is one way to be atomic, one manifest schema and one verification:

- :func:`sha256_file` — hex sha256 of a file, read in chunks.
- :func:`atomic_file` / :func:`atomic_write` / :func:`atomic_write_bytes` /
  :func:`atomic_write_text` — write a file through a temp file in the same folder,
  fsync, rename; on error the temp file is removed and the old file is untouched.
- :func:`replace_dir` / :func:`atomic_dir` — build a directory beside its target and
  swap it in (old renamed aside, new renamed in, old removed last), so the target is at
  every moment either the complete old version or the complete new one.
- :func:`save_weights_dir` / :func:`load_weights_dir` — a checkpoint directory:
  ``model.safetensors`` + ``config.json`` (+ ``README.md`` card, + extra files).

Manifest schema (``config.json``, the only one; :func:`migrate_manifest` upgrades the
older ``config["sha256"] = {file: hex}`` form in place)::

    config["files"][filename] = {"sha256": <hex>, "size": <bytes>}   # weights + extra files
    config["tied_weights"] = {alias: source}   # tensors sharing storage, stored once

Every file in ``files`` is checked (present, size, sha256) before anything is read. The
model card (``README.md``) is deliberately not in the manifest, so editing a card never
makes a checkpoint unloadable. Published files are world-readable (0644, dirs 0755).

Single-file tensor states (streaming memory state, :func:`save_tensor_file`) keep their
JSON description in the safetensors header instead of a ``config.json`` beside them: such
a state is one file a user passes around (``--state s.safetensors``), and a sidecar
manifest would be a second file to lose. Its integrity record lives in the same header
(``longstream_sha256``: the sha256 of the other metadata and of every tensor's name,
dtype, shape and bytes), is written atomically through :func:`atomic_file` and is
verified by :func:`load_tensor_file`.

Errors: :class:`CheckpointError` (a ``ValueError``) for a corrupt or foreign file, with a
message naming the file and the fix; :class:`CheckpointNotFoundError` (also a
``FileNotFoundError``) for a missing directory or file. Library code raises these;
``longstream.pipelines`` turns them into ``UserError`` (CLI exit status 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "CheckpointNotFoundError",
    "NonFiniteValueError",
    "atomic_dir",
    "atomic_file",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_file",
    "load_tensor_file",
    "load_weights_dir",
    "migrate_manifest",
    "publish_perms",
    "read_config",
    "replace_dir",
    "save_tensor_file",
    "save_weights_dir",
    "sha256_file",
    "verify_weights_dir",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
_DIGEST_KEY = "longstream_sha256"


class CheckpointError(ValueError):
    """A checkpoint or state file exists but is corrupt, incomplete or not of the expected kind."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint directory or one of its files does not exist."""


class NonFiniteValueError(CheckpointError):
    """A checkpoint's recorded metrics would hold NaN / Infinity: nothing is written.

    ``values`` names them (``"metrics.mse nan, ..."``)."""

    def __init__(self, message: str, values: str) -> None:
        super().__init__(message)
        self.values = values


def _nonfinite(v: Any, prefix: str = "") -> list[str]:
    if isinstance(v, float) and not math.isfinite(v):
        return [f"{prefix} {v}"]
    if isinstance(v, Mapping):
        return [x for k, w in v.items() for x in _nonfinite(w, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(v, (list, tuple)):
        return [x for i, w in enumerate(v) for x in _nonfinite(w, f"{prefix}[{i}]")]
    return []


# ---------------------------------------------------------------------- files
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_path(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it to ``path``.

    For writers that take a file name (``safetensors.torch.save_file``). On any error the
    temp file is removed and an existing ``path`` is left as it was. The finished file
    gets permission bits ``mode`` (world-readable by default).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_path(tmp)
        tmp.chmod(mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, perms: int = 0o644) -> Iterator[IO[Any]]:
    """``with atomic_write(p) as f: f.write(...)``: the file appears complete or not at all."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_file(path, mode=perms) as tmp:
        kw = {"encoding": "utf-8"} if mode == "w" else {}
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------- directories
def replace_dir(tmp: str | os.PathLike, directory: str | os.PathLike) -> None:
    """Put the finished directory ``tmp`` at ``directory`` by rename, replacing any old one.

    The old directory is renamed aside first and removed last, so ``directory`` is at every
    moment either the complete old version or the complete new one.
    """
    tmp, directory = Path(tmp), Path(directory)
    if not directory.exists():
        os.replace(tmp, directory)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
    os.rmdir(old)
    os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        os.replace(old, directory)  # put the old version back
        raise
    shutil.rmtree(old, ignore_errors=True)


def publish_perms(d: str | os.PathLike) -> None:
    """Make a directory and the files in it world-readable (mkdtemp/mkstemp make 0700/0600)."""
    d = Path(d)
    d.chmod(0o755)
    for p in d.iterdir():
        if p.is_file():
            p.chmod(0o644)


@contextlib.contextmanager
def atomic_dir(directory: str | os.PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty temp directory beside ``directory``; on success swap it into place.

    ``keep_existing`` moves files of an existing ``directory`` that the new version does
    not write (logs such as ``metrics.jsonl``; hidden files excepted) into the new one
    before the swap. On error the temp directory is removed and ``directory`` is untouched.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        yield tmp
        for p in tmp.iterdir():
            if p.is_file():
                _fsync_path(p)
        publish_perms(tmp)
        if keep_existing and directory.is_dir():
            for p in directory.iterdir():
                if not (tmp / p.name).exists() and not p.name.startswith("."):
                    os.replace(p, tmp / p.name)
        replace_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------- tensors
def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys (in place, same length).

    ``safetensors`` writes ``__metadata__`` from a hash map, so its key order (and the
    file's sha256) varies from save to save; sorted, identical tensors and metadata
    give identical bytes."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        header = json.loads(raw)
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > n:  # cannot happen for a header safetensors wrote (same content, compact)
            raise CheckpointError(f"{path}: cannot canonicalise the safetensors header")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))  # safetensors pads its header with spaces


def _dedupe_tied(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """CPU, contiguous tensors with each shared tensor kept once, and ``{alias: source}``.

    Two entries are *tied* when they are the same view of the same storage (same data
    pointer, offset, shape, strides and dtype): the first name is kept, later ones become
    aliases. Other tensors that happen to share storage (slices) are copied, since
    safetensors refuses shared storage.
    """
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    out: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    for k, t in state_dict.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"state_dict entry {k!r} is a {type(t).__name__}, not a tensor")
        t = t.detach()
        ptr = t.untyped_storage().data_ptr()
        key = (t.device, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            tied[k] = seen[key]
            continue
        if t.numel():
            seen[key] = k
        t = t.to("cpu").contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in storages:
            t = t.clone()
        if t.numel():
            storages.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out, tied


def _file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def save_weights_dir(
    directory: str | os.PathLike,
    state_dict: Mapping[str, Tensor],
    config: Mapping[str, Any],
    *,
    card: str | None = None,
    extra_files: Mapping[str, str | bytes] | None = None,
    keep_existing: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    ``directory`` gets ``model.safetensors`` (``state_dict``, tied tensors stored once),
    ``config.json`` (``config`` plus the manifest ``files`` and ``tied_weights``, see the
    module docstring), ``README.md`` when ``card`` is given, and every ``extra_files``
    entry (name -> text or bytes; these are in the manifest). ``keep_existing`` keeps
    files an older version of ``directory`` holds that this one does not write.
    ``metadata`` goes into the safetensors header, whose keys are sorted, so the same
    tensors and metadata always give the same bytes (and sha256). A NaN / infinite value
    in ``config["metrics"]`` (the recorded results) is a :class:`NonFiniteValueError`:
    nothing is written and an existing ``directory`` is untouched. (Other config values may
    be infinite on purpose, e.g. Mamba-2's ``dt_limit``.)
    """
    bad = _nonfinite({"metrics": config.get("metrics")}) if config.get("metrics") is not None else []
    if bad:
        shown = ", ".join(bad[:4]) + (f", ... ({len(bad) - 4} more)" if len(bad) > 4 else "")
        raise NonFiniteValueError(
            f"refusing to save {directory}: its config.json would record non-finite values ({shown}); nothing was written",
            shown,
        )
    tensors, tied = _dedupe_tied(state_dict)
    names = [WEIGHTS_NAME, CONFIG_NAME, CARD_NAME]
    for name in extra_files or {}:
        if name in names or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"extra file name {name!r} is reserved or not a plain file name")
    from safetensors.torch import save_file

    with atomic_dir(directory, keep_existing=keep_existing) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", **(metadata or {})})
        _canonical_header(tmp / WEIGHTS_NAME)
        files = {WEIGHTS_NAME: _file_record(tmp / WEIGHTS_NAME)}
        for name, body in (extra_files or {}).items():
            (tmp / name).write_bytes(body.encode("utf-8") if isinstance(body, str) else body)
            files[name] = _file_record(tmp / name)
        meta = {k: v for k, v in config.items() if k not in ("files", "tied_weights", "sha256")}
        meta["tied_weights"] = tied
        meta["files"] = files
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        if card is not None:
            (tmp / CARD_NAME).write_text(card)
    return Path(directory)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory (a :class:`CheckpointError` if unreadable)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointNotFoundError(
            f"checkpoint directory {directory} does not exist; save one with save_pretrained() or check the path"
        )
    p = directory / CONFIG_NAME
    if not p.is_file():
        raise CheckpointNotFoundError(f"checkpoint file {p} is missing; re-save or re-download the checkpoint")
    try:
        config = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p} is not valid JSON ({e}); re-save or re-download the checkpoint") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{p} does not hold a JSON object; re-save or re-download the checkpoint")
    return config


def check_file(path: str | os.PathLike, record: Mapping[str, Any]) -> str | None:
    """``None`` if ``path`` matches its manifest ``record`` (size, sha256), else the problem."""
    path = Path(path)
    if not path.is_file():
        return f"{path}: missing"
    size = record.get("size")
    if size is not None and path.stat().st_size != size:
        return f"{path}: size {path.stat().st_size} != {size} recorded in config.json (truncated or replaced?)"
    want = record.get("sha256")
    if want:
        try:
            got = sha256_file(path)
        except OSError as e:
            return f"{path}: unreadable ({e})"
        if got != want:
            return f"{path}: corrupt: sha256 {got[:16]}... does not match {want[:16]}... recorded in config.json"
    return None


def _trust_hint(directory: Path) -> str:
    return ("re-download or re-save the checkpoint; or, if you trust these files as they are, record their "
            f"hashes with `python -c \"from longstream.backbones.io import migrate_manifest; "
            f"migrate_manifest('{directory}', trust_files=True)\"`")


def _manifest(directory: Path, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    files = config.get("files")
    if not files and "sha256" in config:
        raise CheckpointError(
            f"{directory / CONFIG_NAME} has an old-style manifest ('sha256'); upgrade it in place with "
            f"`python -c \"from longstream.backbones.io import migrate_manifest; migrate_manifest('{directory}')\"`"
        )
    if not isinstance(files, dict) or WEIGHTS_NAME not in files:
        raise CheckpointError(f"checkpoint {directory}: config.json records no sha256 for {WEIGHTS_NAME} "
                              f"(config['files']), so it cannot be verified; {_trust_hint(directory)}")
    unhashed = sorted(n for n, r in files.items() if not (isinstance(r, dict) and isinstance(r.get("sha256"), str)
                                                          and len(r["sha256"]) == 64))
    if unhashed:
        raise CheckpointError(f"checkpoint {directory}: config.json records no sha256 for {', '.join(unhashed)} "
                              f"(config['files']), so it cannot be verified; {_trust_hint(directory)}")
    return files


def verify_weights_dir(directory: str | os.PathLike) -> list[str]:
    """Every problem with a checkpoint directory (empty list: complete and intact)."""
    directory = Path(directory)
    try:
        files = _manifest(directory, read_config(directory))
    except CheckpointError as e:
        return [str(e)]
    return [p for name, rec in files.items() if (p := check_file(directory / name, rec))]


def load_weights_dir(
    directory: str | os.PathLike, *, verify: bool = True, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read ``(config, state_dict)`` from a directory written by :func:`save_weights_dir`.

    With ``verify`` every file of the manifest is checked (size and sha256) first; a
    mismatch, a missing or an unreadable file is one :class:`CheckpointError` naming the
    file and the fix. Tied tensors (``config["tied_weights"]``) are restored as the same
    tensor object under every name.
    """
    directory = Path(directory)
    config = read_config(directory)
    files = _manifest(directory, config)
    wpath = directory / WEIGHTS_NAME
    if not wpath.is_file():
        raise CheckpointNotFoundError(f"checkpoint file {wpath} is missing; re-save or re-download the checkpoint")
    if verify:
        for name, rec in files.items():
            problem = check_file(directory / name, rec)
            if problem:
                raise CheckpointError(f"{problem}; re-save or re-download the checkpoint")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        sd = load_file(str(wpath), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{wpath} could not be read as safetensors ({e}); re-download it") from None
    for alias, src in (config.get("tied_weights") or {}).items():
        if src not in sd:
            raise CheckpointError(
                f"{directory / CONFIG_NAME} ties {alias!r} to {src!r}, which {wpath.name} does not hold; "
                "re-save or re-download the checkpoint"
            )
        sd[alias] = sd[src]
    return config, sd


def migrate_manifest(directory: str | os.PathLike, *, trust_files: bool = False) -> bool:
    """Upgrade an old ``config["sha256"]`` manifest to ``config["files"]`` in place.

    Only ``config.json`` is rewritten (atomically); the recorded hashes are checked against
    the files first, so a corrupt checkpoint is never blessed. With ``trust_files`` a
    checkpoint that records no hashes at all (or lacks some) gets the hashes of the files
    as they are now: an explicit statement that you trust them (loading refuses such a
    checkpoint until then). Returns whether anything changed.
    """
    directory = Path(directory)
    config = read_config(directory)
    old = config.get("sha256")
    files = dict(config.get("files") or {}) if isinstance(config.get("files"), dict) else {}
    changed = False
    if isinstance(old, dict):
        for name, want in old.items():
            p = directory / name
            problem = check_file(p, {"sha256": want})
            if problem:
                raise CheckpointError(f"cannot migrate {directory}: {problem}")
            files[name] = {"sha256": want, "size": p.stat().st_size}
        changed = True
    if trust_files:
        names = set(files) | ({WEIGHTS_NAME} if (directory / WEIGHTS_NAME).is_file() else set())
        for name in sorted(names):
            rec = files.get(name)
            if isinstance(rec, dict) and isinstance(rec.get("sha256"), str) and len(rec["sha256"]) == 64:
                continue
            if not (directory / name).is_file():
                raise CheckpointNotFoundError(f"cannot migrate {directory}: {directory / name} is missing")
            files[name] = _file_record(directory / name)
            changed = True
    if not changed:
        return False
    new = {k: v for k, v in config.items() if k != "sha256"}
    new.setdefault("tied_weights", {})
    new["files"] = files
    atomic_write_text(directory / CONFIG_NAME, json.dumps(new, indent=2) + "\n")
    return True


# ---------------------------------------------------------------------- single-file states
def _tensors_digest(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    h = hashlib.sha256(json.dumps(dict(metadata), sort_keys=True).encode())
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(json.dumps([k, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensor_file(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> Path:
    """Write one safetensors file atomically with ``metadata`` and an integrity digest in its header."""
    from safetensors.torch import save_file

    if _DIGEST_KEY in metadata:
        raise ValueError(f"metadata key {_DIGEST_KEY!r} is reserved")
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {**metadata, _DIGEST_KEY: _tensors_digest(flat, metadata)}
    with atomic_file(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)
    return Path(path)


def load_tensor_file(
    path: str | os.PathLike, *, verify: bool = True, device: str | torch.device = "cpu", what: str = "state file"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read ``(tensors, metadata)`` written by :func:`save_tensor_file`, checking its digest."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointNotFoundError(f"{what} {str(p)!r} does not exist; check the path")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - a corrupt file of any kind
        raise CheckpointError(f"cannot read {what} {str(p)!r} ({e}); it is not a safetensors file or is corrupt") from None
    want = meta.pop(_DIGEST_KEY, None)
    if verify:
        if want is None:
            raise CheckpointError(f"{what} {str(p)!r} has no integrity record ({_DIGEST_KEY}); re-save it")
        if _tensors_digest(tensors, meta) != want:
            raise CheckpointError(f"{what} {str(p)!r} is corrupt: its contents do not match its sha256; re-save it")
    return {k: v.to(device) for k, v in tensors.items()}, meta
