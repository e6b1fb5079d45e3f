"""Dataclass configs: to/from plain dicts, typed dotted overrides (``--backbone.d_model 256``), and
building a backbone from a config section with user mistakes turned into :class:`UserError`."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

from torch import nn

from .errors import UserError


class ConfigError(UserError):
    """A config value that cannot be used (wrong type, bad backbone pattern, ...).

    The message says what is wrong without saying where the value came from; the caller
    that knows (a ``--section.field`` override, a checkpoint's ``config.json``, a ``--data``
    JSON file) adds that and the fix (see ``checkpoint.checkpoint_errors``). ``detail`` is
    the message without a fix aimed at one source (e.g. without "check the --backbone.*
    options"), for callers that add their own.
    """

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail if detail is not None else message


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


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _check_type(v: Any, tp: Any, where: str) -> None:
    """Raise :class:`ConfigError` if the JSON value ``v`` cannot be a ``tp`` (one level into lists)."""
    if tp is Any or tp is None or isinstance(tp, (str, typing.TypeVar)):
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(v, a, where)
            except ConfigError as e:
                errs.append(e)
        raise errs[0] if errs else ConfigError(f"{where} must not be null")
    if origin is typing.Literal:
        if v not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {v!r}")
        return
    want = origin or tp
    ok: bool
    if want is bool:
        ok = isinstance(v, bool)
    elif want is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif want is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if ok and not math.isfinite(v):
            raise ConfigError(f"{where} must be a finite number, got {v!r}")
    elif want is str:
        ok = isinstance(v, str)
    elif want in (list, tuple, Sequence):
        ok = isinstance(v, (list, tuple))
        if ok and args and args[0] in (int, float, str, bool):
            for i, x in enumerate(v):
                _check_type(x, args[0], f"{where}[{i}]")
    elif want is dict:
        ok = isinstance(v, dict)
    else:
        return  # a type this check does not know: the dataclass takes it as is
    if not ok:
        raise ConfigError(f"{where} must be of type {_type_name(tp)}, got {type(v).__name__} {v!r}")


def config_from_dict(cls: type, d: dict[str, Any], *, strict: bool = False, check_types: bool = True,
                     where: str = "") -> Any:
    """Rebuild dataclass ``cls`` (nested dataclasses included) from :func:`config_to_dict` output.

    Unknown keys are ignored unless ``strict`` (then :class:`UserError`), so old checkpoints
    load after a field is removed; missing keys take the dataclass defaults. With
    ``check_types`` (the default) every value must fit its field's annotation (an int for
    ``int``, a number for ``float``, a list for ``list[...]``, ...; finite floats only):
    otherwise a :class:`ConfigError` names the field (``where`` prefixes its dotted name).
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping of {cls.__name__} fields, "
                          f"got {type(d).__name__} {d!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if strict and unknown:
        raise ConfigError(f"unknown {where + ' ' if where else ''}{cls.__name__} option(s) {sorted(unknown)}; "
                          f"valid: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        key = f"{where}.{f.name}" if where else f.name
        sub = _dataclass_type(hints.get(f.name))
        if sub is not None and (isinstance(v, dict) or check_types and v is not None):
            v = config_from_dict(sub, v, strict=strict, check_types=check_types, where=key)
        else:
            if check_types:
                _check_type(v, hints.get(f.name, Any), key)
            if isinstance(v, list) and typing.get_origin(hints.get(f.name)) is tuple:
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


def _json_loads(value: str, key: str) -> Any:
    """``json.loads`` that refuses ``NaN`` / ``Infinity`` (no non-finite value enters a config)."""

    def no_constant(c: str) -> Any:
        raise UserError(f"--{key} must hold finite numbers only, got {c} in {value!r}")

    return json.loads(value, parse_constant=no_constant)


def _coerce(value: str, tp: Any, key: str) -> Any:
    """Convert the string ``value`` to type ``tp`` (bool/int/float/str/Optional/list/dict/Literal)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is None:
        try:
            return _json_loads(value, key)
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
            v = float(value)
            if not math.isfinite(v):
                raise UserError(f"--{key} must be a finite number, got {value!r}")
            return int(v) if tp is int and "e" in value.lower() else tp(value)
        except (ValueError, OverflowError):
            raise UserError(f"--{key} expects {tp.__name__}, got {value!r}") from None
    if tp is str:
        return value
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        try:
            v = _json_loads(value, key)
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
        raise ConfigError(f"bad backbone configuration: {msg} (check the --backbone.* options)",
                          detail=f"bad backbone configuration: {msg}") from e


#: The shared rules for the common fields of a config's ``train`` section, by field name:
#: ``(lowest allowed, whether the bound itself is allowed)``. A field a pipeline does not
#: have is skipped; ``lr_sweep`` entries follow ``lr``.
TRAIN_FIELD_RULES: dict[str, tuple[float, bool]] = {
    "lr": (0.0, False),
    "steps": (1, True),
    "epochs": (1, True),
    "batch_size": (1, True),
    "eval_batch_size": (1, True),
    "log_every": (1, True),
    "weight_decay": (0.0, True),
    "warmup_steps": (0, True),
    "grad_clip": (0.0, True),
    "min_lr_ratio": (0.0, True),
    "linear_lr_mult": (0.0, False),
    "eval_every": (0, True),
    "save_every": (0, True),
    "patience": (0, True),
    "sweep_steps": (1, True),
    "threads": (0, True),
}


def _non_finite(obj: Any, where: str) -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return where
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items: Any = ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))
    elif isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        return None
    for k, v in items:
        bad = _non_finite(v, f"{where}.{k}" if where else str(k))
        if bad:
            return bad
    return None


def validate_config(cfg: Any) -> Any:
    """Check a config before anything is trained or written; returns it unchanged.

    Every float anywhere in ``cfg`` must be finite, and the common fields of ``cfg.train``
    must satisfy :data:`TRAIN_FIELD_RULES` (``lr > 0``, ``steps`` / ``epochs`` /
    ``batch_size >= 1``, ``weight_decay`` / ``warmup_steps`` / ``grad_clip >= 0``,
    ``min_lr_ratio`` in [0, 1], ...). A violation is a :class:`UserError` naming the
    ``--train.<field>`` option, the value and the allowed range.
    """
    bad = _non_finite(cfg, "")
    if bad:
        raise UserError(f"--{bad} must be a finite number; give a real value")
    tc = getattr(cfg, "train", None)
    if tc is None or not dataclasses.is_dataclass(tc):
        return cfg
    for name, (lo, inclusive) in TRAIN_FIELD_RULES.items():
        if not hasattr(tc, name):
            continue
        v = getattr(tc, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if v < lo or (v == lo and not inclusive):
            need = f">= {lo:g}" if inclusive else f"> {lo:g}"
            raise UserError(f"--train.{name} must be {need}, got {v!r}; pass e.g. --train.{name} "
                            f"{_example(name, getattr(type(tc)(), name, None) if _defaults_ok(tc) else None, lo)}")
    if hasattr(tc, "min_lr_ratio") and isinstance(tc.min_lr_ratio, (int, float)) and tc.min_lr_ratio > 1:
        raise UserError(f"--train.min_lr_ratio must be in [0, 1], got {tc.min_lr_ratio!r}")
    for i, lr in enumerate(getattr(tc, "lr_sweep", None) or []):
        if not isinstance(lr, (int, float)) or not lr > 0:
            raise UserError(f"--train.lr_sweep[{i}] must be a learning rate > 0, got {lr!r}")
    return cfg


def _defaults_ok(tc: Any) -> bool:
    try:
        type(tc)()
        return True
    except TypeError:
        return False


def _example(name: str, default: Any, lo: float) -> str:
    """A valid value to suggest: the dataclass default when it is valid, else the bound."""
    if isinstance(default, (int, float)) and not isinstance(default, bool) and default > lo:
        return f"{default:g}"
    return f"{lo:g}" if TRAIN_FIELD_RULES[name][1] else f"{lo + 1e-3:g}"
