"""The memory registry: ``create_memory(name, **kw)`` and ``list_memories()``.

Each entry maps a short name to a :class:`~longstream.memory.base.StreamMemory` subclass, built as
``cls(d_model, **kw)``. Memories that wrap a backbone (``carried_state``,
``memory_tokens``) take it as ``backbone=``.
"""

from __future__ import annotations

from typing import Any

from .base import StreamMemory

_MEMORIES: dict[str, str] = {
    "carried_state": "longstream.memory.carried_state:CarriedStateMemory",
    "memory_tokens": "longstream.memory.memory_tokens:MemoryTokens",
    "compressive_bank": "longstream.memory.compressive_bank:CompressiveBank",
    "sink_window": "longstream.memory.sink_window:SinkWindow",
    "retrieval": "longstream.memory.retrieval:BlockRetrieval",
}


def list_memories() -> list[str]:
    """Names accepted by :func:`create_memory`."""
    return sorted(_MEMORIES)


def get_memory_class(name: str) -> type[StreamMemory]:
    """The class registered under ``name``."""
    import importlib

    if name not in _MEMORIES:
        raise KeyError(f"unknown memory {name!r}; known: {', '.join(list_memories())}")
    mod, cls = _MEMORIES[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def create_memory(name: str, d_model: int | None = None, **kw: Any) -> StreamMemory:
    """Build memory ``name``; ``d_model`` defaults to the wrapped backbone's width."""
    cls = get_memory_class(name)
    if d_model is None:
        bb = kw.get("backbone")
        if bb is None or not hasattr(bb, "d_model"):
            raise TypeError(f"create_memory({name!r}) needs d_model= (or a backbone= with .d_model)")
        d_model = int(bb.d_model)
    try:
        return cls(d_model, **kw)
    except TypeError as e:
        raise TypeError(f"bad option for memory {name!r}: {e}") from e
