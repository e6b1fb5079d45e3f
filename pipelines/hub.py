"""Checkpoint hub: named pretrained models, resolution and verified, resumable downloads.

Registry (where names come from), two sources merged, shipped first:

1. **Shipped checkpoints**: every ``checkpoints/<domain>/<name>/config.json`` in the
   repository is the model ``<domain>/<name>`` (read from :data:`~.common.paths.CHECKPOINTS_DIR`,
   which an installed wheel holds as ``longstream/checkpoints``). Its ``config.json`` records the sha256
   of ``model.safetensors`` (written by :func:`longstream.pipelines.common.save_pretrained`), so a
   pipeline registers a shipped model just by saving it there. Nothing else to edit.
2. **Remote-only models**: ``checkpoints/registry.json`` (and any file named by
   ``$LONGSTREAM_HUB_REGISTRY``) maps ``<domain>/<name>`` to
   ``{"task", "metrics", "urls": [base URL, ...], "files": {file: {"sha256", "size"}}}``;
   ``longstream hub register DIR --url BASE`` writes such an entry from a local dir.
   A file is fetched from ``<base>/<file>`` (the base usually ends in ``<domain>/<name>``).

Resolution of ``name_or_dir`` (:func:`resolve`): an existing directory -> the shipped
``checkpoints/<domain>/<name>`` -> the cache ``$LONGSTREAM_HOME/checkpoints/<domain>/<name>``
(default ``$XDG_CACHE_HOME/longstream`` or ``~/.cache/longstream``) -> download.

Downloads: each file goes to ``<cache>/downloads/<domain>/<name>/<file>.part``, resumed
with an HTTP ``Range`` request after a cut connection, checked for size and sha256
(a mismatch deletes the part file and fetches once more, then fails with a clear
message), and the finished files are moved into place by renaming a temp dir, so the
cache never holds a half-written model (:func:`longstream.backbones.io.atomic_dir`).
``LONGSTREAM_OFFLINE=1`` never opens a socket.

Kinds: every entry has a ``kind`` read from its ``config.json`` (:func:`checkpoint_kind`):
``pipeline`` (written by ``pipelines.common.save_pretrained``), ``lm``
(``LanguageModel.save_pretrained``) or ``backbone`` (``SequenceBackbone.save_pretrained``).
All share one manifest schema (:mod:`longstream.backbones.io`), so ``verify`` checks them
alike. Checkpoints found only in the cache (``<cache>/checkpoints/<domain>/<name>``) are
listed too.
Names are validated (``[a-z0-9][a-z0-9._-]*`` per part, no ``..``) and every resolved
cache path is checked to stay inside the cache.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longstream.backbones.io import atomic_dir, atomic_write_text, check_file, sha256_file

# leaf modules only: common/checkpoint imports this module, so never `from .common import ...`
from .common.errors import UserError
from .common.paths import CHECKPOINTS_DIR
from .common.progress import progress

__all__ = [
    "HubEntry",
    "Hub",
    "checkpoint_kind",
    "default_hub",
    "resolve",
    "list_models",
    "cache_root",
    "is_offline",
    "validate_name",
]

#: ``config.json`` ``model_type`` -> hub kind (a pipeline checkpoint has a ``pipeline`` key instead)
MODEL_TYPE_KINDS = {"longstream_lm": "lm", "longstream_backbone": "backbone"}

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_CKPT_FILES = ("model.safetensors", "config.json", "README.md")


def is_offline() -> bool:
    return os.environ.get("LONGSTREAM_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cache_root() -> Path:
    """``$LONGSTREAM_HOME`` or the platform cache dir (``$XDG_CACHE_HOME``/``~/.cache``)/longstream."""
    env = os.environ.get("LONGSTREAM_HOME")
    if env:
        return Path(env).expanduser()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "longstream"


def validate_name(name: str, domain: str | None = None) -> tuple[str, str]:
    """Split ``<domain>/<name>`` (or ``<name>`` with ``domain``) and refuse anything path-like."""
    parts = name.strip().split("/")
    if len(parts) == 1 and domain:
        parts = [domain, parts[0]]
    if len(parts) != 2 or not all(_PART.match(p) and ".." not in p for p in parts):
        raise UserError(
            f"bad model name {name!r}: use <domain>/<name> with letters, digits, '.', '_', '-' "
            "(see `longstream hub list`), or pass an existing checkpoint directory"
        )
    if domain and parts[0] != domain:
        raise UserError(f"model {name!r} belongs to domain {parts[0]!r}, not {domain!r}")
    return parts[0], parts[1]


def checkpoint_kind(meta: dict[str, Any]) -> str:
    """``pipeline`` / ``lm`` / ``backbone`` for a checkpoint's ``config.json``, else ``unknown``."""
    if "pipeline" in meta:
        return "pipeline"
    return MODEL_TYPE_KINDS.get(str(meta.get("model_type")), "unknown")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


@dataclass
class HubEntry:
    """One named pretrained model."""

    name: str  # <domain>/<name>
    domain: str
    task: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> {sha256, size}
    shipped: Path | None = None  # the repository dir, if shipped
    preset: str | None = None
    backbone: Any = None
    kind: str = "pipeline"  # pipeline | lm | backbone (see checkpoint_kind)
    cached: Path | None = None  # the cache dir, for a checkpoint found only in the cache

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "domain": self.domain,
            "kind": self.kind,
            "task": self.task,
            "metrics": self.metrics,
            "preset": self.preset,
            "backbone": self.backbone,
            "shipped": str(self.shipped) if self.shipped else None,
            "cached": str(self.cached) if self.cached else None,
            "urls": self.urls,
            "files": self.files,
        }


class Hub:
    """A registry + cache. Tests build their own with a temp cache and registry file."""

    def __init__(
        self,
        checkpoints_dir: str | os.PathLike | None = None,
        registry_files: list[str | os.PathLike] | None = None,
        cache_dir: str | os.PathLike | None = None,
        offline: bool | None = None,
        timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        self.checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else CHECKPOINTS_DIR
        if registry_files is None:
            registry_files = [self.checkpoints_dir / "registry.json"]
            if os.environ.get("LONGSTREAM_HUB_REGISTRY"):
                registry_files += os.environ["LONGSTREAM_HUB_REGISTRY"].split(os.pathsep)
        self.registry_files = [Path(p) for p in registry_files]
        self._cache = Path(cache_dir) if cache_dir else None
        self._offline = offline
        self.timeout = timeout
        self.retries = retries

    # ---- registry
    @property
    def cache(self) -> Path:
        return self._cache if self._cache is not None else cache_root()

    @property
    def offline(self) -> bool:
        return is_offline() if self._offline is None else self._offline

    def entries(self) -> dict[str, HubEntry]:
        out: dict[str, HubEntry] = {}
        for f in self.registry_files:
            if not f.exists():
                continue
            try:
                data = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"hub registry {f} is not valid JSON ({e})") from e
            for name, rec in (data.get("models") or {}).items():
                dom, _ = validate_name(name)
                out[name] = HubEntry(
                    name=name, domain=dom, task=rec.get("task", ""), metrics=rec.get("metrics") or {},
                    urls=list(rec.get("urls") or []), files=dict(rec.get("files") or {}),
                    preset=rec.get("preset"), backbone=rec.get("backbone"), kind=rec.get("kind", "pipeline"),
                )
        for name, d, meta in self._local_dirs(self.checkpoints_dir):
            prev = out.get(name)
            files = dict(meta.get("files") or {})
            out[name] = HubEntry(
                name=name, domain=d.parent.name, task=meta.get("task", ""), metrics=meta.get("metrics") or {},
                urls=prev.urls if prev else [], files=files if files else (prev.files if prev else {}),
                shipped=d, preset=meta.get("preset"), backbone=meta.get("backbone"), kind=checkpoint_kind(meta),
            )
        for name, d, meta in self._local_dirs(self.cache / "checkpoints"):
            if name in out or name.startswith("hf/"):  # hf/ holds Hugging Face imports: listed as hf:<repo>
                continue  # a download of a registered model: the registry entry describes it
            out[name] = HubEntry(
                name=name, domain=d.parent.name, task=meta.get("task", ""), metrics=meta.get("metrics") or {},
                files=dict(meta.get("files") or {}), preset=meta.get("preset"), backbone=meta.get("backbone"),
                kind=checkpoint_kind(meta), cached=d,
            )
        out.update(self._hf_entries())
        return dict(sorted(out.items()))

    @staticmethod
    def _local_dirs(root: Path) -> list[tuple[str, Path, dict[str, Any]]]:
        """``(name, dir, config)`` of every ``root/<domain>/<name>/config.json`` that parses."""
        found = []
        if root.is_dir():
            for cfg in sorted(root.glob("*/*/config.json")):
                d = cfg.parent
                try:
                    meta = json.loads(cfg.read_text())
                    dom, nm = validate_name(f"{d.parent.name}/{d.name}")
                except (json.JSONDecodeError, UnicodeDecodeError, UserError):
                    continue
                if isinstance(meta, dict):
                    found.append((f"{dom}/{nm}", d, meta))
        return found

    def _hf_entries(self) -> dict[str, HubEntry]:
        """Imported Hugging Face checkpoints (``hf:<repo_id>[@rev]``; see hf_import.py)."""
        from .hf_import import imported

        return {r["name"]: HubEntry(name=r["name"], domain="hf", task=r["task"], metrics=r["metrics"],
                                    files=r["files"], backbone=r["source"].get("layout"), kind="hf-import",
                                    cached=Path(r["path"])) for r in imported(self.cache)}

    def entry(self, name: str, domain: str | None = None) -> HubEntry:
        if name.strip().startswith("hf:"):
            from .hf_import import parse_hf_name

            ent = self._hf_entries().get(parse_hf_name(name).name)
            if ent is None:
                raise UserError(f"{name} is not imported; run `longstream hub import {name}`")
            return ent
        dom, nm = validate_name(name, domain)
        full = f"{dom}/{nm}"
        ents = self.entries()
        if full not in ents:
            known = ", ".join(n for n in ents if n.startswith(dom + "/")) or "none"
            raise UserError(f"unknown model {full!r}; known {dom} models: {known} (see `longstream hub list`)")
        return ents[full]

    def cache_dir_for(self, name: str, domain: str | None = None) -> Path:
        if name.strip().startswith("hf:"):
            from .hf_import import import_dir

            return import_dir(self.cache, name)
        dom, nm = validate_name(name, domain)
        root = self.cache / "checkpoints"
        p = root / dom / nm
        if not _inside(p, root):
            raise UserError(f"model name {name!r} escapes the cache dir")
        return p

    # ---- resolution
    def resolve(self, name_or_dir: str, domain: str | None = None, *, download: bool = True) -> Path:
        """Directory holding the checkpoint ``name_or_dir`` (see module docstring for the order)."""
        s = str(name_or_dir)
        if s.strip().startswith("hf:"):  # a Hugging Face import (hf_import.py); offline: cache only
            from .hf_import import resolve_hf

            return resolve_hf(s, cache=self.cache, download=download, offline=True if self.offline else None)
        p = Path(s).expanduser()
        if p.is_dir():
            if not (p / "config.json").exists():
                raise UserError(f"{p} is a directory but not a checkpoint (no config.json)")
            return p
        looks_like_path = s.startswith((".", "/", "~")) or "\\" in s or s.count("/") > 1
        if looks_like_path or p.exists():
            raise UserError(f"checkpoint path {s!r} does not exist (or is not a directory)")
        dom, nm = validate_name(s, domain)
        shipped = self.checkpoints_dir / dom / nm
        if (shipped / "config.json").exists():
            return shipped
        cached = self.cache_dir_for(f"{dom}/{nm}")
        if (cached / "config.json").exists() and (cached / "model.safetensors").exists():
            return cached
        if not download:
            raise UserError(f"{dom}/{nm} is not in the cache ({cached})")
        return self.download(f"{dom}/{nm}")

    # ---- download
    def download(self, name: str, *, force: bool = False) -> Path:
        """Fetch every file of ``name`` into the cache (resumable, verified, atomic)."""
        ent = self.entry(name)
        final = self.cache_dir_for(ent.name)
        if final.exists() and not force and self._verify_dir(final, ent) == []:
            return final
        if self.offline:
            raise UserError(
                f"{ent.name} is not available locally and LONGSTREAM_OFFLINE=1 forbids downloading it; "
                f"unset LONGSTREAM_OFFLINE or copy the checkpoint dir to {final}"
            )
        if not ent.urls:
            raise UserError(f"{ent.name} has no download URL in the hub registry")
        if not all("sha256" in rec for rec in ent.files.values()) or "model.safetensors" not in ent.files:
            raise UserError(f"hub registry entry {ent.name} lacks sha256 for its files; cannot verify a download")
        parts = self.cache / "downloads" / ent.domain / ent.name.split("/", 1)[1]
        if not _inside(parts, self.cache):
            raise UserError(f"model name {name!r} escapes the cache dir")
        parts.mkdir(parents=True, exist_ok=True)
        with _download_lock(parts.parent / f".{parts.name}.lock"):  # one downloader per model at a time
            if final.exists() and not force and self._verify_dir(final, ent) == []:
                return final  # another process finished it while we waited
            parts.mkdir(parents=True, exist_ok=True)
            for fname, rec in ent.files.items():
                if not _PART.match(fname):
                    raise UserError(f"hub registry entry {ent.name} names a bad file {fname!r}")
                self._fetch_verified(ent, fname, rec, parts)
            with atomic_dir(final) as tmp:  # verified parts -> temp dir -> swapped in, world-readable
                for fname in ent.files:
                    os.replace(parts / f"{fname}.part", tmp / fname)
            shutil.rmtree(parts, ignore_errors=True)
        return final

    def _fetch_verified(self, ent: HubEntry, fname: str, rec: dict[str, Any], parts: Path) -> None:
        part = parts / f"{fname}.part"
        want, size = rec["sha256"], rec.get("size")
        errors: list[str] = []
        for attempt in range(2):  # one re-fetch from scratch after a checksum mismatch
            if part.exists() and size is not None and part.stat().st_size == size and sha256_file(part) == want:
                return
            if part.exists() and size is not None and part.stat().st_size > size:
                part.unlink()
            self._fetch_resumable(ent, fname, part, size)
            got = sha256_file(part)
            if got == want:
                return
            msg = f"{ent.name}/{fname}: sha256 {got[:12]}... != expected {want[:12]}... (attempt {attempt + 1})"
            errors.append(msg)
            print(f"warning: {msg}; discarding and re-fetching", flush=True, file=__import__("sys").stderr)
            part.unlink(missing_ok=True)
        raise UserError(
            f"download of {ent.name}/{fname} failed verification twice ({'; '.join(errors)}); "
            "the server copy or the registry checksum is wrong"
        )

    def _fetch_resumable(self, ent: HubEntry, fname: str, part: Path, size: int | None) -> None:
        last: Exception | None = None
        for url_base in ent.urls:
            url = url_base.rstrip("/") + "/" + fname
            for attempt in range(self.retries):
                have = part.stat().st_size if part.exists() else 0
                if size is not None and have == size:
                    return
                req = urllib.request.Request(url, headers={"User-Agent": "longstream-hub"})
                if have:
                    req.add_header("Range", f"bytes={have}-")
                try:
                    with urllib.request.urlopen(req, timeout=self.timeout) as r:
                        mode = "ab" if (have and r.status == 206) else "wb"
                        total = size if size is not None else None
                        start = have if mode == "ab" else 0
                        with open(part, mode) as f, progress(total=total, initial=start, desc=fname,
                                                             unit="B", unit_scale=True) as bar:
                            while True:
                                chunk = r.read(1 << 16)
                                if not chunk:
                                    break
                                f.write(chunk)
                                bar.update(len(chunk))
                    got = part.stat().st_size
                    if size is None or got == size:
                        return
                    last = OSError(f"connection closed at {got} of {size} bytes")
                except urllib.error.HTTPError as e:
                    if e.code == 416:  # range not satisfiable: part file is bad, start over
                        part.unlink(missing_ok=True)
                        last = e
                        continue
                    last = e
                    if 400 <= e.code < 500:
                        break
                except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as e:
                    last = e
                time.sleep(min(0.2 * (attempt + 1), 1.0))
        raise UserError(f"could not download {ent.name}/{fname} from {ent.urls}: {last}")

    # ---- verification
    def _verify_dir(self, d: Path, ent: HubEntry | None) -> list[str]:
        problems: list[str] = []
        cfg = d / "config.json"
        if not cfg.exists():
            return [f"{d}: config.json missing"]
        try:
            meta = json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            return [f"{cfg}: invalid JSON ({e})"]
        files = dict(meta.get("files") or {})
        if ent is not None and ent.shipped is None:
            files.update(ent.files)
        if "model.safetensors" not in files:
            old = " (old-style 'sha256' manifest: see longstream.backbones.io.migrate_manifest)" if "sha256" in meta else ""
            problems.append(f"{d}: no sha256 recorded for model.safetensors{old}")
        for fname, rec in files.items():
            problem = check_file(d / fname, rec)
            if problem:
                problems.append(problem)
        return problems

    def verify(self, name: str | None = None) -> dict[str, list[str]]:
        """``{name: [problems]}`` for every local copy (shipped or cached); empty list = OK."""
        ents = self.entries()
        names = [self.entry(name).name] if name else list(ents)
        out: dict[str, list[str]] = {}
        for n in names:
            ent = ents[n]
            if ent.shipped is not None or ent.cached is not None:
                out[n] = self._verify_dir(ent.shipped or ent.cached, ent)
            else:
                c = self.cache_dir_for(n)
                out[n] = self._verify_dir(c, ent) if c.exists() else ["not downloaded"]
        return out

    def register(self, ckpt_dir: str | os.PathLike, url: str, registry_file: str | os.PathLike | None = None,
                 name: str | None = None) -> HubEntry:
        """Add/replace a remote entry for the checkpoint in ``ckpt_dir`` served under ``url``."""
        d = Path(ckpt_dir)
        meta = json.loads((d / "config.json").read_text())
        nm = name or f"{d.parent.name}/{d.name}"
        dom, _ = validate_name(nm)
        files = {f: {"sha256": sha256_file(d / f), "size": (d / f).stat().st_size}
                 for f in _CKPT_FILES if (d / f).exists()}
        reg = Path(registry_file) if registry_file else self.registry_files[0]
        data = json.loads(reg.read_text()) if reg.exists() else {"models": {}}
        kind = checkpoint_kind(meta)
        data.setdefault("models", {})[nm] = {
            "task": meta.get("task", ""), "metrics": meta.get("metrics") or {}, "preset": meta.get("preset"),
            "kind": kind, "urls": [url], "files": files,
        }
        atomic_write_text(reg, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return HubEntry(name=nm, domain=dom, task=meta.get("task", ""), metrics=meta.get("metrics") or {},
                        urls=[url], files=files, kind=kind)


class _download_lock:  # noqa: N801 - used as a context manager
    """An exclusive advisory lock file (POSIX ``flock``; a no-op where unavailable)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = None

    def __enter__(self) -> _download_lock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a")  # noqa: SIM115
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            import fcntl

            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()


def default_hub() -> Hub:
    return Hub()


def resolve(name_or_dir: str, domain: str | None = None) -> Path:
    """Resolve with the default hub (see :meth:`Hub.resolve`)."""
    return default_hub().resolve(name_or_dir, domain)


def list_models(domain: str | None = None) -> list[HubEntry]:
    return [e for e in default_hub().entries().values() if domain is None or e.domain == domain]
