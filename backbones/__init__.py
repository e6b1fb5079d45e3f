"""Sequence backbones: mixers (Mamba, Mamba-2, attention, S4D, Hyena, ...) and stacks.

Public API: :class:`Backbone`, :func:`create_backbone`, :func:`list_backbones`,
:class:`BackboneConfig`.
"""

from .base import Backbone, RMSNorm, State, detach_state, state_nbytes, state_to
from .config import BackboneConfig
from .registry import backbone_config, create_backbone, list_backbones, list_mixers, register_backbone, register_mixer

__all__ = [
    "Backbone",
    "BackboneConfig",
    "RMSNorm",
    "State",
    "backbone_config",
    "create_backbone",
    "detach_state",
    "list_backbones",
    "list_mixers",
    "register_backbone",
    "register_mixer",
    "state_nbytes",
    "state_to",
]
