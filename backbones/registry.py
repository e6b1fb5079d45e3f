"""Registries: mixer classes by layer-pattern symbol, and backbone presets by name.

A *mixer* is a :class:`~longstream.backbones.base.Backbone` built as ``cls(d_model, **kwargs)``.
It is registered under a short symbol used in layer patterns (``"M"`` Mamba,
``"M2"`` Mamba-2, ``"A"`` attention, ...). A *preset* is a function returning a
:class:`~longstream.backbones.config.BackboneConfig`;
:func:`longstream.backbones.stack.create_backbone` builds the stack it describes (it lives
there so that imports run one way: ``stack`` -> ``registry``, never back).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .config import BackboneConfig

_MIXERS: dict[str, type] = {}
_PRESETS: dict[str, Callable[[], BackboneConfig]] = {}


def register_mixer(symbol: str) -> Callable[[type], type]:
    """Class decorator: make a mixer available in layer patterns under ``symbol``."""

    def deco(cls: type) -> type:
        if symbol in _MIXERS and _MIXERS[symbol] is not cls:
            raise ValueError(f"mixer symbol {symbol!r} already registered to {_MIXERS[symbol].__name__}")
        _MIXERS[symbol] = cls
        cls.symbol = symbol  # type: ignore[attr-defined]
        return cls

    return deco


def get_mixer(symbol: str) -> type:
    _ensure_loaded()
    if symbol not in _MIXERS:
        raise KeyError(f"unknown mixer {symbol!r}; known: {', '.join(sorted(_MIXERS))}")
    return _MIXERS[symbol]


def list_mixers() -> dict[str, type]:
    _ensure_loaded()
    return dict(sorted(_MIXERS.items()))


def register_backbone(fn: Callable[[], BackboneConfig]) -> Callable[[], BackboneConfig]:
    """Function decorator: register a preset under the function's name."""
    if fn.__name__ in _PRESETS:
        raise ValueError(f"backbone preset {fn.__name__!r} already registered")
    _PRESETS[fn.__name__] = fn
    return fn


def list_backbones(prefix: str = "") -> list[str]:
    """Names of every registered backbone preset (``test_*`` are tiny test variants)."""
    _ensure_loaded()
    return sorted(n for n in _PRESETS if n.startswith(prefix))


def backbone_config(name: str, **overrides: Any) -> BackboneConfig:
    """The config of preset ``name`` with top-level field ``overrides`` applied.

    ``mixer_kwargs`` overrides are merged per symbol, not replaced.
    """
    _ensure_loaded()
    if name not in _PRESETS:
        raise KeyError(f"unknown backbone {name!r}; run `longstream list` or see list_backbones()")
    cfg = _PRESETS[name]()
    fields = {f.name for f in dataclasses.fields(cfg)}
    bad = set(overrides) - fields
    if bad:
        raise TypeError(f"unknown backbone option(s) {sorted(bad)}; valid: {sorted(fields)}")
    mk = overrides.pop("mixer_kwargs", None)
    cfg = dataclasses.replace(cfg, **overrides)
    if mk:
        merged = {k: dict(v) for k, v in cfg.mixer_kwargs.items()}
        for sym, kw in mk.items():
            merged.setdefault(sym, {}).update(kw)
        cfg = dataclasses.replace(cfg, mixer_kwargs=merged)
    return cfg


_LOADED = False

#: The modules that register mixers and presets. Every one must import: a file that is
#: missing or broken is an error here, never a silently smaller registry.
MIXER_MODULES = ("mamba", "mamba2", "attention", "mlp", "s4d", "hyena", "longconv", "caduceus", "bimamba", "presets")


def _ensure_loaded() -> None:
    """Import the modules that register mixers and presets (once)."""
    global _LOADED
    if _LOADED:
        return
    import importlib

    for mod in MIXER_MODULES:
        importlib.import_module(f".{mod}", __package__)
    _LOADED = True
