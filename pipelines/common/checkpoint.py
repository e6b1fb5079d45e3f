"""Pipeline checkpoints: ``model.safetensors`` + ``config.json`` + model card, written atomically and
verified (sha256) on load; names resolve through :mod:`longstream.pipelines.hub`."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from longstream.backbones.lm import replace_dir, sha256_file
from torch import nn

from .config import config_to_dict
from .distributed import unwrap
from .errors import UserError
from .paths import REPO_ROOT, check_out_dir

CHECKPOINT_FORMAT = "longstream-checkpoint/1"


def code_version() -> str:
    """``<package version>+g<git sha>[.dirty]`` when in a git checkout, else the package version."""
    try:
        from importlib.metadata import version

        v = version("longstream")
    except Exception:
        v = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        if sha:
            v += f"+g{sha}"
    except Exception:
        pass
    return v


def _default_card(meta: dict[str, Any]) -> str:
    m = meta.get("metrics") or {}
    rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in m.items())
    data = meta.get("data") or {}
    bb = meta.get("backbone")
    if isinstance(bb, dict):
        bb = " ".join(f"{k}={bb[k]}" for k in ("pattern", "d_model", "n_layers", "d_intermediate") if k in bb)
    return f"""# {meta.get('name') or meta['pipeline']}

longstream `{meta['pipeline']}` pipeline checkpoint.

- task: {meta.get('task', '')}
- preset: `{meta.get('preset')}`
- backbone: `{bb}`
- data: {data.get('name', 'n/a')} (sha256 `{data.get('sha256', 'n/a')}`)
- code version: `{meta.get('code_version')}`
- created: {meta.get('created')}

## Metrics

| metric | value |
|---|---|
{rows}

## Use

```bash
longstream {meta['pipeline']} evaluate --checkpoint <this directory or name> --json
```

Files: `model.safetensors` (weights), `config.json` (config, metrics, sha256 of the weights).
"""


def save_pretrained(
    model: nn.Module,
    config: Any,
    out_dir: str | os.PathLike,
    *,
    pipeline: str,
    preset: str | None = None,
    backbone: Any = None,
    task: str = "",
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    name: str | None = None,
    card: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` + ``README.md`` into ``out_dir``, atomically.

    Files are written to a temp dir beside ``out_dir`` and swapped in by rename, so a
    crash never leaves a half-written checkpoint. Other files already in ``out_dir``
    (e.g. ``metrics.jsonl``) are kept. ``config`` is a dataclass (or dict); ``data`` is
    ``{"name": ..., "sha256": ...}`` describing the training data. The sha256 and size of
    ``model.safetensors`` are recorded in ``config.json["files"]`` and checked on load.
    """
    from safetensors.torch import save_file

    out = check_out_dir(out_dir, strict=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    m = unwrap(model)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in m.state_dict().items()}
    # safetensors refuses shared storage: keep the first name of each tied tensor
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    tied: dict[str, str] = {}
    for k in list(sd):
        t = sd[k]
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            tied[k] = seen[key]
            del sd[k]
        else:
            seen[key] = k
    sd = {k: v.clone() for k, v in sd.items()}
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt", "pipeline": pipeline})
        meta: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "pipeline": pipeline,
            "name": name or (f"{pipeline}/{out.name}"),
            "task": task,
            "preset": preset,
            "backbone": config_to_dict(backbone),
            "config": config_to_dict(config),
            "metrics": metrics or {},
            "data": data or {},
            "code_version": code_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "tied_weights": tied,
            "files": {
                "model.safetensors": {
                    "sha256": sha256_file(tmp / "model.safetensors"),
                    "size": (tmp / "model.safetensors").stat().st_size,
                }
            },
        }
        if extra:
            meta.update(extra)
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
        (tmp / "README.md").write_text(card if card is not None else _default_card(meta))
        _publish_perms(tmp)
        if out.exists():  # keep extra files (logs) that live beside the checkpoint
            for p in out.iterdir():
                if not (tmp / p.name).exists() and not p.name.startswith("."):
                    os.replace(p, tmp / p.name)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _publish_perms(d: Path) -> None:
    """mkdtemp/mkstemp make 0700/0600 entries; a published checkpoint is world-readable."""
    d.chmod(0o755)
    for p in d.iterdir():
        if p.is_file():
            p.chmod(0o644)


def read_checkpoint_config(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a checkpoint dir, with a clear error if missing or malformed."""
    p = Path(ckpt_dir) / "config.json"
    if not p.exists():
        raise UserError(f"{ckpt_dir} is not a longstream checkpoint (no config.json)")
    try:
        meta = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is corrupt ({e}); re-download it with `longstream hub download`") from e
    if not isinstance(meta, dict) or "pipeline" not in meta:
        raise UserError(f"{p} is not a longstream checkpoint config (no 'pipeline' key)")
    return meta


LEGACY_WEIGHTS = ("pytorch_model.bin", "model.pt")


def _load_legacy(path: Path, meta: dict[str, Any], verify: bool) -> dict[str, torch.Tensor]:
    """A legacy pickle checkpoint, loaded only with ``weights_only=True`` (no code execution)."""
    rec = (meta.get("files") or {}).get(path.name) or {}
    if verify and rec.get("sha256") and sha256_file(path) != rec["sha256"]:
        raise UserError(f"{path} is corrupt: sha256 does not match config.json; re-download it")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} cannot be loaded safely ({type(e).__name__}: {e}); only plain tensor "
                        "state dicts are accepted (weights_only=True)") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} is not a state dict of tensors")
    return sd


def load_weights(model: torch.nn.Module, state_dict: dict[str, Any], source: Any, meta: dict[str, Any] | None = None):
    """Load ``state_dict`` into ``model``; a missing or unexpected key is one UserError naming ``source``.

    Returns the model in eval mode.
    """
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        made_by = f"; it was made by code version {meta.get('code_version')}" if meta else ""
        raise UserError(
            f"checkpoint {source} does not match the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}){made_by}; re-download or retrain it"
        )
    return model.eval()


def load_pretrained(
    name_or_dir: str | os.PathLike, *, pipeline: str | None = None, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """Resolve a checkpoint (path, shipped name, cache or download) and read it.

    Returns ``(state_dict, config_json, checkpoint_dir)``. ``name_or_dir`` is a directory,
    ``<domain>/<name>``, or ``<name>`` when ``pipeline`` is given. Verifies the weights'
    sha256 against ``config.json`` and that the checkpoint belongs to ``pipeline``.
    A pipeline's ``from_pretrained`` builds its model from ``config_json["config"]`` and
    calls ``model.load_state_dict(state_dict)``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from longstream.pipelines.hub import resolve

    d = resolve(str(name_or_dir), domain=pipeline)
    meta = read_checkpoint_config(d)
    if pipeline is not None and meta.get("pipeline") != pipeline:
        raise UserError(
            f"checkpoint {name_or_dir} belongs to pipeline {meta.get('pipeline')!r}, not {pipeline!r}; "
            f"use `longstream {meta.get('pipeline')} ...`"
        )
    wpath = d / "model.safetensors"
    if not wpath.exists():
        legacy = next((d / n for n in LEGACY_WEIGHTS if (d / n).exists()), None)
        if legacy is None:
            raise UserError(f"{d} has no model.safetensors; re-download it with `longstream hub download`")
        return _load_legacy(legacy, meta, verify), meta, d
    rec = (meta.get("files") or {}).get("model.safetensors") or {}
    if verify and rec.get("sha256"):
        got = sha256_file(wpath)
        if got != rec["sha256"]:
            raise UserError(
                f"{wpath} is corrupt: sha256 {got[:12]}... does not match config.json ({rec['sha256'][:12]}...); "
                "re-download it (`longstream hub download NAME --force`) or retrain"
            )
    try:
        sd = load_file(str(wpath))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{wpath} cannot be read ({e}); re-download it") from e
    for k, src in (meta.get("tied_weights") or {}).items():
        if src in sd:
            sd[k] = sd[src]
    return sd, meta, d
