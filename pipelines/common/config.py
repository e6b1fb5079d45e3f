"""Dataclass configs: to/from plain dicts, typed dotted overrides (``--backbone.d_model 256``), and
building a backbone from a config section with user mistakes turned into :class:`UserError`."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from typing import Any

from torch import nn

from .errors import UserError


def config_to_dict(cfg: Any) -> Any:
    """A dataclass config (nested) as plain JSON-able dicts."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    return cfg


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolved forward refs: fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X`` or ``X | None``), else None."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def config_from_dict(cls: type, d: dict[str, Any], *, strict: bool = False) -> Any:
    """Rebuild dataclass ``cls`` (nested dataclasses included) from :func:`config_to_dict` output.

    Unknown keys are ignored unless ``strict`` (then :class:`UserError`), so old checkpoints
    load after a field is removed; missing keys take the dataclass defaults.
    """
    if not isinstance(d, dict):
        raise UserError(f"expected a mapping for {cls.__name__}, got {type(d).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if strict and unknown:
        raise UserError(f"unknown {cls.__name__} option(s) {sorted(unknown)}; valid: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        sub = _dataclass_type(hints.get(f.name))
        if sub is not None and isinstance(v, dict):
            v = config_from_dict(sub, v, strict=strict)
        elif isinstance(v, list) and typing.get_origin(hints.get(f.name)) is tuple:
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def parse_dotted_args(tokens: Sequence[str]) -> dict[str, str]:
    """``["--a.b", "1", "--c=x"]`` -> ``{"a.b": "1", "c": "x"}``. Raises UserError on junk."""
    out: dict[str, str] = {}
    i = 0
    toks = list(tokens)
    while i < len(toks):
        t = toks[i]
        if not t.startswith("--") or len(t) <= 2:
            raise UserError(f"unexpected argument {t!r}; overrides look like --section.field VALUE")
        key = t[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(toks):
                raise UserError(f"override --{key} needs a value (e.g. --{key} 256)")
            val = toks[i + 1]
            i += 2
        out[key.replace("-", "_")] = val
    return out


def _coerce(value: str, tp: Any, key: str) -> Any:
    """Convert the string ``value`` to type ``tp`` (bool/int/float/str/Optional/list/dict/Literal)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is None:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError as e:
                errs.append(str(e))
        raise UserError(errs[0] if errs else f"bad value {value!r} for --{key}")
    if origin is typing.Literal:
        for a in args:
            if str(a) == value:
                return a
        raise UserError(f"--{key} must be one of {list(args)}, got {value!r}")
    if tp is bool:
        v = value.strip().lower()
        if v in ("1", "true", "yes", "y", "on"):
            return True
        if v in ("0", "false", "no", "n", "off"):
            return False
        raise UserError(f"--{key} expects true/false, got {value!r}")
    if tp in (int, float):
        try:
            return tp(float(value)) if tp is int and "e" in value.lower() else tp(value)
        except ValueError:
            raise UserError(f"--{key} expects {tp.__name__}, got {value!r}") from None
    if tp is str:
        return value
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            if origin in (list, tuple) or tp in (list, tuple):
                v = [s for s in value.split(",") if s != ""]
                if args:
                    v = [_coerce(s, args[0], key) for s in v]
            else:
                raise UserError(f"--{key} expects JSON, e.g. '{{\"k\": 1}}', got {value!r}") from None
        return tuple(v) if (origin is tuple or tp is tuple) else v
    return value


def apply_overrides(cfg: Any, overrides: dict[str, str] | Sequence[str]) -> Any:
    """Return a copy of dataclass ``cfg`` with dotted string overrides applied, typed.

    ``overrides`` is ``{"backbone.d_model": "256"}`` or the raw CLI tokens
    ``["--backbone.d_model", "256"]``. Unknown keys raise :class:`UserError` listing the
    valid ones. A dict-valued field takes ``--field.key value`` (JSON-decoded value).
    """
    if not isinstance(overrides, dict):
        overrides = parse_dotted_args(overrides)
    for key, raw in overrides.items():
        cfg = _set_dotted(cfg, key.split("."), raw, key)
    return cfg


def _set_dotted(obj: Any, parts: list[str], raw: str, full: str) -> Any:
    head, rest = parts[0], parts[1:]
    if dataclasses.is_dataclass(obj):
        names = [f.name for f in dataclasses.fields(obj)]
        if head not in names:
            prefix = full[: len(full) - len(".".join(parts))]
            valid = ", ".join(prefix + n for n in names)
            raise UserError(f"unknown option --{full}; valid here: {valid}")
        cur = getattr(obj, head)
        if rest:
            new = _set_dotted(cur, rest, raw, full)
        else:
            if dataclasses.is_dataclass(cur):
                raise UserError(f"--{full} is a section; set one of its fields, e.g. --{full}.<field>")
            new = _coerce(raw, _hints(type(obj)).get(head, Any), full)
        return dataclasses.replace(obj, **{head: new})
    if isinstance(obj, dict):
        new = dict(obj)
        if rest:
            new[head] = _set_dotted(obj.get(head, {}), rest, raw, full)
        else:
            new[head] = _coerce(raw, Any, full)
        return new
    raise UserError(f"cannot set --{full}: {type(obj).__name__} has no fields")


def build_backbone(spec: Any, **overrides: Any) -> nn.Module:
    """``longstream.backbones.create_backbone`` with configuration mistakes turned into :class:`UserError`.

    ``spec`` is a preset name or a ``BackboneConfig`` (e.g. ``cfg.backbone``). A bad
    pattern, unknown preset or unknown mixer option is something the user typed
    (``--backbone.pattern Q``), so it exits 2 with the message instead of a traceback.
    """
    from longstream.backbones import create_backbone

    try:
        return create_backbone(spec, **overrides)
    except (ValueError, KeyError, TypeError) as e:
        msg = e.args[0] if e.args else str(e)
        raise UserError(f"bad backbone configuration: {msg} (check the --backbone.* options)") from e
