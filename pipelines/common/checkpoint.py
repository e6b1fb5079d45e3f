"""Pipeline checkpoints: ``model.safetensors`` + ``config.json`` + model card.

Written and read by :mod:`longstream.backbones.io` (atomic directory swap, one manifest
schema, sha256 verified on load); its ``CheckpointError`` becomes :class:`UserError` here.
Names resolve through :mod:`longstream.pipelines.hub`, which imports only leaf modules of
this package (never this one), so the imports run one way: checkpoint -> hub -> errors/paths."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longstream.backbones.io import CheckpointError, load_weights_dir, read_config, save_weights_dir

from .config import ConfigError, config_to_dict
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

Files: `model.safetensors` (weights), `config.json` (config, metrics, sha256 manifest of the weights).
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

    Written by :func:`longstream.backbones.io.save_weights_dir`: a temp dir beside
    ``out_dir`` swapped in by rename, so a crash never leaves a half-written checkpoint. Other files already in ``out_dir``
    (e.g. ``metrics.jsonl``) are kept. ``config`` is a dataclass (or dict); ``data`` is
    ``{"name": ..., "sha256": ...}`` describing the training data. The sha256 and size of
    ``model.safetensors`` are recorded in ``config.json["files"]`` and checked on load.
    """
    out = check_out_dir(out_dir, strict=False)
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
    }
    if extra:
        meta.update(extra)
    card_text = card if card is not None else _default_card(meta)
    save_weights_dir(out, unwrap(model).state_dict(), meta, card=card_text, keep_existing=True,
                     metadata={"pipeline": pipeline})
    return out


def read_checkpoint_config(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a pipeline checkpoint dir, with a clear error if missing or malformed."""
    if not (Path(ckpt_dir) / "config.json").exists():
        raise UserError(f"{ckpt_dir} is not a longstream checkpoint (no config.json)")
    try:
        meta = read_config(ckpt_dir)
    except CheckpointError as e:
        raise UserError(f"{e} (corrupt checkpoint; re-download it with `longstream hub download NAME --force`)") from e
    if "pipeline" not in meta:
        kind = meta.get("model_type")
        hint = f" (it is a {kind!r} checkpoint)" if kind else ""
        raise UserError(f"{Path(ckpt_dir) / 'config.json'} is not a longstream pipeline checkpoint config "
                        f"(no 'pipeline' key){hint}")
    return meta


#: The fix every broken-checkpoint message ends with.
CHECKPOINT_FIX = "re-download it (`longstream hub download NAME --force`) or retrain it"


def _checkpoint_error(source: Any, problem: str) -> UserError:
    return UserError(f"checkpoint {source}: {problem}; {CHECKPOINT_FIX}")


@contextlib.contextmanager
def checkpoint_errors(source: Any) -> Iterator[None]:
    r"""Turn a broken ``config.json`` into one :class:`UserError` naming the checkpoint ``source``.

    Wrap the code that rebuilds a model from a loaded checkpoint (``config_from_dict``,
    ``build_model``, ``load_weights``) in it: a value of the wrong type, an unknown layer
    pattern, model kind or backbone name, a width that does not match the weights -- anything
    an edited ``config.json`` can cause (``ConfigError``, ``ValueError``, ``KeyError``,
    ``TypeError``, ``AttributeError``) -- becomes "checkpoint DIR: <what is wrong>;
    re-download it or retrain it". Other :class:`UserError`\ s pass through unchanged.
    """
    try:
        yield
    except ConfigError as e:
        raise _checkpoint_error(source, f"config.json: {e.detail}") from e
    except UserError:
        raise
    except KeyError as e:
        msg = e.args[0] if e.args else e
        raise _checkpoint_error(source, f"config.json is not usable ({msg})") from e
    except (ValueError, TypeError, AttributeError) as e:
        raise _checkpoint_error(source, f"config.json is not usable ({type(e).__name__}: {e})") from e


def load_weights(model: torch.nn.Module, state_dict: dict[str, Any], source: Any, meta: dict[str, Any] | None = None):
    """Load ``state_dict`` into ``model``; a missing or unexpected key, or a tensor whose shape
    differs from the model's (an edited ``d_model``), is one UserError naming ``source``.

    Returns the model in eval mode.
    """
    made_by = f" (made by code version {meta.get('code_version')})" if meta and meta.get("code_version") else ""
    own = model.state_dict()
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k, got, want = wrong[0]
        more = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        raise _checkpoint_error(source, f"the weights{made_by} do not match its config.json: {k} has shape "
                                f"{list(got)} in model.safetensors but the config builds {list(want)}{more} "
                                "(was config.json edited?)")
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {source} does not match the model (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); its weights{made_by} come from other code; {CHECKPOINT_FIX}")
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
    # lazy: hub imports this package's leaf modules (errors, paths, progress), and importing
    # hub first runs this package's __init__; the file-level graph stays one way (checkpoint -> hub)
    from longstream.pipelines.hub import resolve

    d = resolve(str(name_or_dir), domain=pipeline)
    meta = read_checkpoint_config(d)
    if pipeline is not None and meta.get("pipeline") != pipeline:
        raise UserError(
            f"checkpoint {name_or_dir} belongs to pipeline {meta.get('pipeline')!r}, not {pipeline!r}; "
            f"use `longstream {meta.get('pipeline')} ...`"
        )
    try:
        meta, sd = load_weights_dir(d, verify=verify)
    except CheckpointError as e:
        raise UserError(f"{e} (`longstream hub download NAME --force` re-fetches a named model; or retrain)") from e
    return sd, meta, d
