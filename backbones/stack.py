"""A stack of pre-norm residual blocks built from a layer-pattern string.

Hybrid stacks in one line, in the manner of Jamba (Lieber et al., "Jamba: A Hybrid
Transformer-Mamba Language Model", 2024: one attention layer per seven Mamba
layers, ``"M*7,A"``) and of ``mamba_ssm``'s ``MixerModel`` (whose names — ``layers``,
``norm_f`` — this module keeps so converted checkpoints load by name).

Pattern grammar (see :class:`~longstream.backbones.config.BackboneConfig`): comma-separated items,
each a run of mixer symbols optionally followed by ``*k`` (repeat the run k times).
A run is read symbol by symbol, longest registered symbol first, so ``"MMMA"`` is
M, M, M, A and ``"M2M2A"`` is M2, M2, A. The resulting list is repeated and truncated
to ``n_layers``.

Axis legend: b batch, l length, d model width.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import Backbone, RMSNorm, State
from .bidirectional import Bidirectional
from .block import Block, residual_dtype
from .caduceus import rc_fold, rc_unfold
from .config import BackboneConfig
from .io import CheckpointError, load_weights_dir, save_weights_dir
from .mlp import GatedMLP
from .registry import backbone_config, get_mixer, list_mixers

__all__ = ["SequenceBackbone", "create_backbone", "layer_symbols", "parse_pattern"]


def parse_pattern(pattern: str, symbols: list[str] | None = None) -> list[str]:
    """Expand a layer pattern into a list of mixer symbols.

    ``parse_pattern("M*7,A") == ["M"] * 7 + ["A"]``; ``parse_pattern("M2M2A") ==
    ["M2", "M2", "A"]``. ``symbols`` defaults to every registered mixer symbol.
    Raises ``ValueError`` naming the offending part on a bad pattern.
    """
    known = sorted(symbols if symbols is not None else list_mixers(), key=len, reverse=True)
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(f"empty layer pattern {pattern!r}; example: 'M*7,A' or 'MMMA'")
    out: list[str] = []
    for item in pattern.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty item in layer pattern {pattern!r} (doubled or trailing comma?)")
        run, _, reps = item.partition("*")
        run = run.strip()
        k = 1
        if _:
            try:
                k = int(reps.strip())
            except ValueError:
                raise ValueError(
                    f"bad repeat count {reps.strip()!r} in layer pattern item {item!r}; write e.g. 'M*7'"
                ) from None
            if k < 1:
                raise ValueError(f"repeat count must be >= 1 in layer pattern item {item!r}")
        if not run:
            raise ValueError(f"missing mixer symbol before '*' in layer pattern item {item!r}")
        syms: list[str] = []
        i = 0
        while i < len(run):
            match = next((s for s in known if run.startswith(s, i)), None)
            if match is None:
                raise ValueError(
                    f"unknown mixer symbol at {run[i:]!r} in layer pattern {pattern!r}; "
                    f"known symbols: {', '.join(sorted(known))}"
                )
            syms.append(match)
            i += len(match)
        out.extend(syms * k)
    return out


def layer_symbols(cfg: BackboneConfig) -> list[str]:
    """The mixer symbol of each of the ``cfg.n_layers`` layers."""
    if cfg.n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {cfg.n_layers}")
    syms = parse_pattern(cfg.pattern)
    return [syms[i % len(syms)] for i in range(cfg.n_layers)]


class SequenceBackbone(Backbone):
    """The stack described by a :class:`BackboneConfig`: ``layers`` (Blocks) + ``norm_f``.

    State is a list with one entry per layer (the mixer's state, ``None`` for stateless
    layers). Capability flags are those shared by every layer.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_model = cfg.d_model
        self.symbols = layer_symbols(cfg)
        # rc_equivariant (Caduceus-PS, backbones/caduceus.py): layers at half width, run on both RC halves
        if cfg.rc_equivariant and cfg.d_model % 2:
            raise ValueError(f"rc_equivariant needs an even d_model (two RC halves), got {cfg.d_model}")
        width = cfg.d_model // 2 if cfg.rc_equivariant else cfg.d_model
        unknown = set(cfg.mixer_kwargs) - set(list_mixers())
        if unknown:  # kwargs for a symbol unused by this pattern are fine (pattern overrides)
            raise ValueError(f"mixer_kwargs for unknown mixer symbol(s) {sorted(unknown)}; known: {sorted(list_mixers())}")
        layers = []
        for sym in self.symbols:
            cls = get_mixer(sym)
            kw = dict(cfg.mixer_kwargs.get(sym, {}))
            # bidirectional=True wraps causal token mixers; already non-causal or position-wise
            # mixers (``token_mixing = False`` class attribute) are used as they are
            if cfg.bidirectional and getattr(cls, "is_causal", True) and getattr(cls, "token_mixing", True):
                mixer: Backbone = Bidirectional.build(cls, width, merge=cfg.bidirectional_merge, **kw)
            else:
                mixer = cls(width, **kw)
            mlp = GatedMLP(width, cfg.d_intermediate) if cfg.d_intermediate > 0 else None
            layers.append(Block(width, mixer, mlp, norm_eps=cfg.norm_eps, dropout=cfg.dropout))
        self.layers = nn.ModuleList(layers)
        self.norm_f = RMSNorm(width, eps=cfg.norm_eps) if cfg.final_norm else None
        mixers = [blk.mixer for blk in self.layers]
        rc = cfg.rc_equivariant  # the RC half sees the sequence backwards: neither causal nor streamable
        self.is_causal = not rc and all(m.is_causal for m in mixers)  # type: ignore[misc]
        self.supports_step = not rc and all(m.supports_step for m in mixers)  # type: ignore[misc]
        self.supports_state = not rc and all(m.supports_state for m in mixers)  # type: ignore[misc]
        # recompute each block in backward instead of storing its activations (long L training)
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ protocol
    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """A list of each layer's empty state."""
        if not self.supports_state:
            raise NotImplementedError(f"backbone with pattern {self.cfg.pattern!r} is not streamable")
        device = device if device is not None else next(self.parameters()).device
        return [blk.mixer.init_state(batch_size, device=device, dtype=dtype) for blk in self.layers]

    def _check_state(self, state: State) -> list[Any]:
        if state is None:
            return [None] * len(self.layers)
        if not self.supports_state:
            raise ValueError(f"backbone with pattern {self.cfg.pattern!r} is not streamable; pass state=None")
        if not isinstance(state, (list, tuple)) or len(state) != len(self.layers):
            raise ValueError(f"state must be a list of {len(self.layers)} per-layer states (see init_state)")
        return list(state)

    def forward(  # type: ignore[override]
        self, x: Tensor, state: State = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x (b, l, d) -> (y (b, l, d), list of layer states; None if not streamable)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"backbone input must be (batch, length, {self.d_model}), got {tuple(x.shape)}")
        states = self._check_state(state)
        rc_mask = None if mask is None or bool(mask.all()) else mask
        if self.cfg.rc_equivariant:  # (b, l, d) -> (2b, l, d/2): first half, RC of the second half
            x_in, (x, mask) = x, rc_fold(x, rc_mask)
        h = x.to(residual_dtype(x.dtype, self.cfg.residual_in_fp32))  # residual stream
        new_states = []
        ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for blk, st in zip(self.layers, states):
            if ckpt:
                h, st = checkpoint(blk, h, st, mask=mask, use_reentrant=False)
            else:
                h, st = blk(h, st, mask=mask)
            new_states.append(st)
        y = self.norm_f(h) if self.norm_f is not None else h
        if self.cfg.rc_equivariant:
            return rc_unfold(y, rc_mask).to(x_in.dtype), None
        return y.to(x.dtype), (new_states if self.supports_state else None)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """x_t (b, d) -> (y_t (b, d), new state), one token through every layer."""
        if not self.supports_step:
            raise NotImplementedError(f"backbone with pattern {self.cfg.pattern!r} does not support step()")
        states = self._check_state(state)
        h = x_t.to(residual_dtype(x_t.dtype, self.cfg.residual_in_fp32))
        new_states = []
        for blk, st in zip(self.layers, states):
            h, st = blk.step(h, st)
            new_states.append(st)
        y = self.norm_f(h) if self.norm_f is not None else h
        return y.to(x_t.dtype), new_states

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (sha256 manifest) atomically."""
        config = {"model_type": "longstream_backbone", "backbone": self.cfg.to_dict()}
        return save_weights_dir(directory, self.state_dict(), config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> SequenceBackbone:
        """Load a backbone written by :meth:`save_pretrained` (sha256 verified)."""
        config, tensors = load_weights_dir(directory, map_location=map_location)
        if config.get("model_type") != "longstream_backbone" or "backbone" not in config:
            raise CheckpointError(
                f"{Path(directory) / 'config.json'} has model_type {config.get('model_type')!r}, expected "
                "'longstream_backbone' (use LanguageModel.from_pretrained for a language model)"
            )
        model = cls(BackboneConfig.from_dict(config["backbone"]))
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise CheckpointError(f"weights in {directory} do not fit the backbone in its config.json: {e}") from None
        return model


def create_backbone(name: str | BackboneConfig, **overrides: Any) -> SequenceBackbone:
    """Build a backbone stack from a preset name (or a config) with field ``overrides``."""
    if isinstance(name, BackboneConfig):
        return SequenceBackbone(dataclasses.replace(name, **overrides) if overrides else name)
    return SequenceBackbone(backbone_config(name, **overrides))
