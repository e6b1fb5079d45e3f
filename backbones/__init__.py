"""Sequence backbones: mixers (Mamba, Mamba-2, attention, S4D, Hyena, ...) and stacks.

Public API: :class:`Backbone`, :func:`create_backbone`, :func:`list_backbones`,
:class:`BackboneConfig`, :class:`SequenceBackbone` (a pattern-built stack),
:class:`LanguageModel` (embedding + backbone + tied head, ``generate``), the mixers
:class:`Attention` ("A"), :class:`BidirectionalAttention` ("Abi"), :class:`GatedMLP`
("G") and the :class:`Bidirectional` wrapper.

Example::

    import torch
    from longstream.backbones import LanguageModel, create_backbone

    bb = create_backbone("test_hybrid")             # "M,A": Mamba + attention, d_model 16
    x = torch.randn(2, 100, bb.d_model)             # (b, l, d)
    y, state = bb(x[:, :60])                        # chunked prefill ...
    y2, state = bb(x[:, 60:], state)                # ... equals one full forward
    y_t, state = bb.step(x[:, -1], state)           # O(1)-per-token streaming

    lm = LanguageModel(vocab_size=256, backbone="test_mamba")
    out = lm.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=8)   # greedy
    lm.save_pretrained("ckpt/")                     # model.safetensors + config.json
    lm = LanguageModel.from_pretrained("ckpt/")     # sha256 verified

Causal attention is mixer "A" (KV cache, ``window=W`` for a bounded cache);
bidirectional attention is "Abi". ``BackboneConfig(bidirectional=True)`` wraps every
causal token mixer of a stack in :class:`Bidirectional`.
"""

from .attention import Attention, BidirectionalAttention
from .base import Backbone, RMSNorm, State, detach_state, state_nbytes, state_to
from .bidirectional import Bidirectional, reverse_within_length
from .block import Block
from .config import BackboneConfig
from .io import CheckpointError, CheckpointNotFoundError, load_weights_dir, save_weights_dir
from .lm import LanguageModel, load_checkpoint, save_checkpoint
from .mlp import GatedMLP
from .registry import (
    backbone_config,
    get_mixer,
    list_backbones,
    list_mixers,
    register_backbone,
    register_mixer,
)
from .stack import SequenceBackbone, create_backbone, layer_symbols, parse_pattern

__all__ = [
    "Attention",
    "Backbone",
    "BackboneConfig",
    "Bidirectional",
    "BidirectionalAttention",
    "Block",
    "CheckpointError",
    "CheckpointNotFoundError",
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
    "load_weights_dir",
    "parse_pattern",
    "register_backbone",
    "register_mixer",
    "reverse_within_length",
    "save_checkpoint",
    "save_weights_dir",
    "state_nbytes",
    "state_to",
]
