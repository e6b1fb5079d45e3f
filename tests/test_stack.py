"""Layer patterns, the block stack, the Bidirectional wrapper and presets."""

from __future__ import annotations

import pytest
import torch

from longstream.backbones import (
    Attention,
    BackboneConfig,
    Bidirectional,
    GatedMLP,
    SequenceBackbone,
    backbone_config,
    create_backbone,
    list_backbones,
    parse_pattern,
    reverse_within_length,
)
from longstream.backbones.stack import layer_symbols

SYMS = ["M", "M2", "A", "Abi", "G", "S", "H"]


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("M*7,A", ["M"] * 7 + ["A"]),
        ("MMMA", ["M", "M", "M", "A"]),
        ("M2M2A", ["M2", "M2", "A"]),
        ("M2*3, A", ["M2", "M2", "M2", "A"]),
        ("MA*2,G", ["M", "A", "M", "A", "G"]),
        ("AbiA", ["Abi", "A"]),
        (" S ", ["S"]),
    ],
)
def test_parse_pattern(pattern, expected):
    assert parse_pattern(pattern, SYMS) == expected


@pytest.mark.parametrize(
    "pattern, match",
    [
        ("", "empty layer pattern"),
        ("M,,A", "empty item"),
        ("M,", "empty item"),
        ("X", "unknown mixer symbol at 'X'"),
        ("MQA", "unknown mixer symbol at 'QA'"),
        ("M*x", "bad repeat count 'x'"),
        ("M*0", "repeat count must be >= 1"),
        ("*3", "missing mixer symbol"),
    ],
)
def test_bad_patterns_give_clear_errors(pattern, match):
    with pytest.raises(ValueError, match=match):
        parse_pattern(pattern, SYMS)


def test_layer_symbols_repeat_and_truncate():
    cfg = BackboneConfig(d_model=8, n_layers=5, pattern="G,A")
    assert layer_symbols(cfg) == ["G", "A", "G", "A", "G"]
    cfg = BackboneConfig(d_model=8, n_layers=2, pattern="G*3,A")
    assert layer_symbols(cfg) == ["G", "G"]
    with pytest.raises(ValueError, match="n_layers"):
        layer_symbols(BackboneConfig(n_layers=0, pattern="A"))


def test_stack_layout_and_names():
    m = create_backbone("test_transformer")
    names = set(dict(m.named_parameters()))
    for n in ["layers.0.norm.weight", "layers.0.mixer.in_proj.weight", "layers.0.mixer.out_proj.weight",
              "layers.0.norm2.weight", "layers.0.mlp.fc1.weight", "layers.1.mlp.fc2.weight", "norm_f.weight"]:
        assert n in names, n
    assert isinstance(m.layers[0].mixer, Attention) and isinstance(m.layers[0].mlp, GatedMLP)
    assert m.is_causal and m.supports_step and m.supports_state
    assert len(m.init_state(3)) == 2


def test_flags_follow_layers():
    bi = SequenceBackbone(BackboneConfig(d_model=16, n_layers=2, pattern="G,Abi"))
    assert not bi.is_causal and not bi.supports_step and not bi.supports_state
    with pytest.raises(NotImplementedError, match="not streamable"):
        bi.init_state(1)
    with pytest.raises(ValueError, match="not streamable"):
        bi(torch.randn(1, 3, 16), state=[None, None])
    with pytest.raises(NotImplementedError):
        bi.step(torch.randn(1, 16), None)
    wrapped = SequenceBackbone(BackboneConfig(d_model=16, n_layers=2, pattern="A,G", bidirectional=True))
    assert isinstance(wrapped.layers[0].mixer, Bidirectional)
    assert isinstance(wrapped.layers[1].mixer, GatedMLP)  # position-wise: nothing to reverse
    assert not wrapped.is_causal


def test_overrides_and_errors():
    cfg = backbone_config("test_attention", d_model=24, mixer_kwargs={"A": {"window": 2}})
    assert cfg.d_model == 24 and cfg.mixer_kwargs["A"] == {"n_heads": 4, "n_kv_heads": 2, "window": 2}
    with pytest.raises(TypeError, match="unknown backbone option"):
        backbone_config("test_attention", width=3)
    with pytest.raises(KeyError, match="unknown backbone"):
        backbone_config("no_such_backbone")
    with pytest.raises(ValueError, match="unknown mixer symbol"):
        SequenceBackbone(BackboneConfig(d_model=8, n_layers=1, pattern="A", mixer_kwargs={"Q": {}}))
    m = create_backbone("test_attention")
    with pytest.raises(ValueError, match=r"\(batch, length, 16\)"):
        m(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="list of 2 per-layer states"):
        m(torch.randn(2, 3, 16), state=[None])


def test_presets_registered():
    names = list_backbones()
    for n in ["mamba_130m", "mamba2_130m", "transformer_small", "jamba_small", "vim_small", "test_attention"]:
        assert n in names
    assert backbone_config("jamba_small").pattern == "M*7,A"
    assert backbone_config("vim_small").pattern == "VM"  # bimamba v2 (backbones/bimamba.py)


@torch.no_grad()
def test_residual_in_fp32_with_bfloat16():
    m = create_backbone("test_transformer").to(torch.bfloat16)
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    y, st = m(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    y_t, _ = m.step(x[:, 0], m.init_state(2))
    assert y_t.dtype == torch.bfloat16


def test_reverse_within_length():
    x = torch.arange(10.0).view(2, 5, 1)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    r = reverse_within_length(x, mask)
    assert r[:, :, 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]
    assert torch.equal(reverse_within_length(r, mask), x)


@torch.no_grad()
def test_bidirectional_wrapper_merges_both_directions():
    fwd = Attention(16, n_heads=2)
    bwd = Attention(16, n_heads=2)
    bi = Bidirectional(fwd, bwd, merge="add")
    x = torch.randn(1, 6, 16)
    expected = fwd(x)[0] + bwd(x.flip(1))[0].flip(1)
    torch.testing.assert_close(bi(x)[0], expected)
    shared = Bidirectional.build(Attention, 16, shared=True, n_heads=2)
    assert shared.bwd is None and sum(p.numel() for p in shared.parameters()) == sum(
        p.numel() for p in fwd.parameters()
    )
    with pytest.raises(ValueError, match="'add' or 'proj'"):
        Bidirectional(fwd, merge="concat")


def test_gradient_checkpointing_gives_same_gradients():
    m = create_backbone("test_transformer")
    x = torch.randn(2, 7, 16)
    m(x)[0].square().sum().backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.gradient_checkpointing = True
    m(x)[0].square().sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=n)


def _build_on_meta(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return create_backbone(name)


def test_published_sizes_build_with_expected_parameter_counts():
    # mamba-130m: 129.1M parameters with its 50280 x 768 tied embedding -> 90.5M backbone
    assert abs(sum(p.numel() for p in _build_on_meta("mamba_130m").parameters()) - 90.5e6) < 0.1e6
    jamba = _build_on_meta("jamba_small")
    assert "".join(jamba.symbols[:8]) == "MMMMMMMA" and jamba.supports_step
    vim = _build_on_meta("vim_tiny")
    assert type(vim.layers[0].mixer).__name__ == "VimMixer" and not vim.is_causal


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_backbones() if not n.startswith("test_")])
def test_every_preset_builds(name):
    m = _build_on_meta(name)
    assert m.d_model == backbone_config(name).d_model
