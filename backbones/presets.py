"""Registered backbone presets: published sizes, hybrids, bidirectional stacks, tiny tests.

Sizes follow the papers they name: Mamba (Gu & Dao, 2023; the state-spaces/mamba-*
checkpoints), Mamba-2 (Dao & Gu, "Transformers are SSMs", 2024; mamba2-*), Jamba
(Lieber et al., 2024; one attention layer per seven Mamba layers), the Mamba-2-Hybrid
of Waleffe et al. ("An Empirical Study of Mamba-based Language Models", 2024), Vision
Mamba (Zhu et al., 2024) and Caduceus (Schiff et al., 2024). Every preset is a function
returning a :class:`BackboneConfig`; ``create_backbone(name, **overrides)`` builds it.

Presets named ``test_*`` are tiny (d_model <= 32, 2 layers); the conformance tests
(``tests/test_backbone_conformance.py``) run every one of them, so a new mixer gets
tested by registering a ``test_<mixer>`` preset here or next to the mixer.
"""

from __future__ import annotations

from .config import BackboneConfig
from .registry import register_backbone

# mixer keyword arguments shared by several presets (mamba_ssm argument names)
_MAMBA = {"d_state": 16, "d_conv": 4, "expand": 2}
_MAMBA2 = {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 256}


def _mamba(d_model: int, n_layers: int) -> BackboneConfig:
    return BackboneConfig(d_model=d_model, n_layers=n_layers, pattern="M", mixer_kwargs={"M": dict(_MAMBA)})


def _mamba2(d_model: int, n_layers: int) -> BackboneConfig:
    return BackboneConfig(d_model=d_model, n_layers=n_layers, pattern="M2", mixer_kwargs={"M2": dict(_MAMBA2)})


# ---------------------------------------------------------------- Mamba (state-spaces/mamba-*)
@register_backbone
def mamba_130m() -> BackboneConfig:
    """state-spaces/mamba-130m: 24 layers, d_model 768."""
    return _mamba(768, 24)


@register_backbone
def mamba_370m() -> BackboneConfig:
    """state-spaces/mamba-370m: 48 layers, d_model 1024."""
    return _mamba(1024, 48)


@register_backbone
def mamba_790m() -> BackboneConfig:
    """state-spaces/mamba-790m: 48 layers, d_model 1536."""
    return _mamba(1536, 48)


@register_backbone
def mamba_1_4b() -> BackboneConfig:
    """state-spaces/mamba-1.4b: 48 layers, d_model 2048."""
    return _mamba(2048, 48)


@register_backbone
def mamba_2_8b() -> BackboneConfig:
    """state-spaces/mamba-2.8b: 64 layers, d_model 2560."""
    return _mamba(2560, 64)


# ---------------------------------------------------------------- Mamba-2 (state-spaces/mamba2-*)
@register_backbone
def mamba2_130m() -> BackboneConfig:
    """state-spaces/mamba2-130m: 24 layers, d_model 768, d_state 128, headdim 64."""
    return _mamba2(768, 24)


@register_backbone
def mamba2_370m() -> BackboneConfig:
    """state-spaces/mamba2-370m: 48 layers, d_model 1024."""
    return _mamba2(1024, 48)


@register_backbone
def mamba2_780m() -> BackboneConfig:
    """state-spaces/mamba2-780m: 48 layers, d_model 1536."""
    return _mamba2(1536, 48)


@register_backbone
def mamba2_1_3b() -> BackboneConfig:
    """state-spaces/mamba2-1.3b: 48 layers, d_model 2048."""
    return _mamba2(2048, 48)


@register_backbone
def mamba2_2_7b() -> BackboneConfig:
    """state-spaces/mamba2-2.7b: 64 layers, d_model 2560."""
    return _mamba2(2560, 64)


# ---------------------------------------------------------------- attention
@register_backbone
def transformer_small() -> BackboneConfig:
    """A LLaMA-style decoder (RoPE, SwiGLU) at GPT-2-small width: 12 layers, d_model 768."""
    return BackboneConfig(
        d_model=768, n_layers=12, pattern="A", d_intermediate=2048,
        mixer_kwargs={"A": {"n_heads": 12}},
    )


@register_backbone
def transformer_swa_small() -> BackboneConfig:
    """transformer_small with sliding-window attention (window 1024, bounded KV cache)."""
    cfg = transformer_small()
    cfg.mixer_kwargs["A"]["window"] = 1024
    return cfg


@register_backbone
def bert_small() -> BackboneConfig:
    """A bidirectional (encoder) transformer: 12 layers, d_model 768, RoPE."""
    return BackboneConfig(
        d_model=768, n_layers=12, pattern="Abi", d_intermediate=2048,
        mixer_kwargs={"Abi": {"n_heads": 12}},
    )


# ---------------------------------------------------------------- hybrids
@register_backbone
def jamba_small() -> BackboneConfig:
    """Jamba-style hybrid: "M*7,A" (one attention layer per eight), MLP after each mixer.

    Like Jamba, the attention layers use no positional encoding (the Mamba layers
    carry position) and grouped KV heads.
    """
    return BackboneConfig(
        d_model=768, n_layers=24, pattern="M*7,A", d_intermediate=2048,
        mixer_kwargs={"M": dict(_MAMBA), "A": {"n_heads": 12, "n_kv_heads": 4, "rope": False}},
    )


@register_backbone
def hybrid_mmma_small() -> BackboneConfig:
    """Three Mamba layers then one RoPE attention layer, repeated: "MMMA", 24 layers."""
    return BackboneConfig(
        d_model=768, n_layers=24, pattern="MMMA",
        mixer_kwargs={"M": dict(_MAMBA), "A": {"n_heads": 12}},
    )


@register_backbone
def mamba2_hybrid_small() -> BackboneConfig:
    """Mamba-2-Hybrid style (Waleffe et al.): "M2*3,A" with a gated MLP after each mixer."""
    return BackboneConfig(
        d_model=768, n_layers=24, pattern="M2*3,A", d_intermediate=2048,
        mixer_kwargs={"M2": dict(_MAMBA2), "A": {"n_heads": 12, "n_kv_heads": 4}},
    )


# ---------------------------------------------------------------- bidirectional
@register_backbone
def vim_tiny() -> BackboneConfig:
    """Vision Mamba Vim-Ti (hustvl/Vim-tiny-midclstok): 24 "VM" layers (bimamba v2), d_model 192."""
    return BackboneConfig(d_model=192, n_layers=24, pattern="VM", mixer_kwargs={"VM": dict(_MAMBA)})


@register_backbone
def vim_small() -> BackboneConfig:
    """Vision Mamba Vim-S (hustvl/Vim-small-midclstok): 24 "VM" layers (bimamba v2), d_model 384."""
    return BackboneConfig(d_model=384, n_layers=24, pattern="VM", mixer_kwargs={"VM": dict(_MAMBA)})


@register_backbone
def caduceus_small() -> BackboneConfig:
    """Caduceus-style DNA backbone: 16 bidirectional Mamba layers, d_model 256, merge by add."""
    cfg = _mamba(256, 16)
    cfg.bidirectional = True
    return cfg


# ---------------------------------------------------------------- tiny test presets
_T_MAMBA = {"d_state": 4, "d_conv": 4, "expand": 2}
_T_MAMBA2 = {"d_state": 8, "d_conv": 4, "expand": 2, "headdim": 8, "ngroups": 1, "chunk_size": 4}
_T_ATTN = {"n_heads": 4, "n_kv_heads": 2}


@register_backbone
def test_mamba() -> BackboneConfig:
    """Tiny Mamba stack for tests."""
    return BackboneConfig(d_model=16, n_layers=2, pattern="M", mixer_kwargs={"M": dict(_T_MAMBA)})


@register_backbone
def test_mamba2() -> BackboneConfig:
    """Tiny Mamba-2 stack for tests (chunk_size 4, so the chunked scan is exercised)."""
    return BackboneConfig(d_model=16, n_layers=2, pattern="M2", mixer_kwargs={"M2": dict(_T_MAMBA2)})


@register_backbone
def test_attention() -> BackboneConfig:
    """Tiny causal RoPE attention stack with grouped KV heads."""
    return BackboneConfig(d_model=16, n_layers=2, pattern="A", mixer_kwargs={"A": dict(_T_ATTN)})


@register_backbone
def test_attention_window() -> BackboneConfig:
    """Tiny sliding-window (window 3) causal attention stack."""
    return BackboneConfig(d_model=16, n_layers=2, pattern="A", mixer_kwargs={"A": {**_T_ATTN, "window": 3}})


@register_backbone
def test_attention_bi() -> BackboneConfig:
    """Tiny bidirectional attention stack."""
    return BackboneConfig(d_model=16, n_layers=2, pattern="Abi", mixer_kwargs={"Abi": dict(_T_ATTN)})


@register_backbone
def test_mlp() -> BackboneConfig:
    """Tiny stack of gated-MLP "mixers" (no token mixing; a control)."""
    return BackboneConfig(d_model=16, n_layers=2, pattern="G", mixer_kwargs={"G": {"d_intermediate": 24}})


@register_backbone
def test_transformer() -> BackboneConfig:
    """Tiny transformer: attention + gated MLP in each block."""
    return BackboneConfig(
        d_model=16, n_layers=2, pattern="A", d_intermediate=24, mixer_kwargs={"A": dict(_T_ATTN)}
    )


@register_backbone
def test_hybrid() -> BackboneConfig:
    """Tiny Mamba + attention hybrid ("M,A")."""
    return BackboneConfig(
        d_model=16, n_layers=2, pattern="M,A", mixer_kwargs={"M": dict(_T_MAMBA), "A": dict(_T_ATTN)}
    )


@register_backbone
def test_hybrid_mamba2() -> BackboneConfig:
    """Tiny Mamba-2 + windowed attention hybrid ("M2,A") with an MLP."""
    return BackboneConfig(
        d_model=16, n_layers=2, pattern="M2,A", d_intermediate=24,
        mixer_kwargs={"M2": dict(_T_MAMBA2), "A": {**_T_ATTN, "window": 4}},
    )


@register_backbone
def test_vim() -> BackboneConfig:
    """Tiny bidirectional Mamba stack (Vision Mamba style), merged by projection."""
    return BackboneConfig(
        d_model=16, n_layers=2, pattern="M", bidirectional=True, bidirectional_merge="proj",
        mixer_kwargs={"M": dict(_T_MAMBA)},
    )


@register_backbone
def test_vim_mixer() -> BackboneConfig:
    """Tiny Vision Mamba stack: bimamba v2 ("VM": shared projections, own backward SSM)."""
    return BackboneConfig(d_model=16, n_layers=2, pattern="VM", mixer_kwargs={"VM": dict(_T_MAMBA)})


@register_backbone
def test_bi_attention_mamba() -> BackboneConfig:
    """Tiny bidirectional hybrid: bidirectional Mamba (merge add) + bidirectional attention."""
    return BackboneConfig(
        d_model=16, n_layers=2, pattern="M,Abi", bidirectional=True,
        mixer_kwargs={"M": dict(_T_MAMBA), "Abi": dict(_T_ATTN)},
    )
