"""Streaming memory modules and the one segment runner (see ``memory/base.py``)."""

from .base import GatedCrossAttention, MemoryState, MemoryStateError, StreamMemory
from .registry import create_memory, get_memory_class, list_memories
from .stream import StreamRunner, StreamState

__all__ = [
    "GatedCrossAttention",
    "MemoryState",
    "MemoryStateError",
    "StreamMemory",
    "StreamRunner",
    "StreamState",
    "create_memory",
    "get_memory_class",
    "list_memories",
]
