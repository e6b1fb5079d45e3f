"""Sequence backbones: mixers (Mamba, Mamba-2, attention, S4D, Hyena, ...) and stacks.

Public API: :class:`Backbone`, :func:`create_backbone`, :func:`list_backbones`,
:class:`BackboneConfig`, :class:`SequenceBackbone` (a pattern-built stack),
:class:`LanguageModel` (embedding + backbone + tied head, ``generate``), the mixers
:class:`Attention` ("A"), :class:`BidirectionalAttention` ("Abi"), :class:`GatedMLP`
("G") and the :class:`Bidirectional` wrapper.
"""

from .attention import Attention, BidirectionalAttention
from .base import Backbone, RMSNorm, State, detach_state, state_nbytes, state_to
from .bidirectional import Bidirectional, reverse_within_length
from .block import Block
from .config import BackboneConfig
from .lm import CheckpointError, LanguageModel, load_checkpoint, save_checkpoint
from .mlp import GatedMLP
from .registry import (
    backbone_config,
    create_backbone,
    get_mixer,
    list_backbones,
    list_mixers,
    register_backbone,
    register_mixer,
)
from .stack import SequenceBackbone, layer_symbols, parse_pattern

__all__ = [
    "Attention",
    "Backbone",
    "BackboneConfig",
    "Bidirectional",
    "BidirectionalAttention",
    "Block",
    "CheckpointError",
    "GatedMLP",
    "LanguageModel",
    "RMSNorm",
    "SequenceBackbone",
    "State",
    "backbone_config",
    "create_backbone",
    "detach_state",
    "get_mixer",
    "layer_symbols",
    "list_backbones",
    "list_mixers",
    "load_checkpoint",
    "parse_pattern",
    "register_backbone",
    "register_mixer",
    "reverse_within_length",
    "save_checkpoint",
    "state_nbytes",
    "state_to",
]
