"""timm's own model-test checks (timm tests/test_models.py: forward, backward, default cfgs of a
non-standard (token-output) model, forward_intermediates, features_only) for every Vim we
register, with timm's input-size rules. The 24-layer ImageNet models beyond Vim-Ti are slow."""

from __future__ import annotations

import math

import pytest
import torch

timm = pytest.importorskip("timm")

from longstream.pipelines.vision.vim import MODEL_NAMES  # noqa: E402  (registers the models)

FAST = ["vim_tiny_patch16_224", "vim_fmnist", "vim_fmnist_seqpixel"]
PARAMS = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in MODEL_NAMES]
TARGET_BWD_SIZE, TARGET_FFEAT_SIZE = 128, 96  # timm's test sizes


def _input_size(model, target=None):
    """timm's ``_get_input_size``: the cfg size, shrunk to ``target`` unless fixed."""
    cfg = model.pretrained_cfg
    size = cfg["input_size"]
    if cfg.get("fixed_input_size"):
        return size
    return tuple(min(s, target) for s in size) if target else size


def test_every_model_is_in_timms_registry():
    assert set(MODEL_NAMES) <= set(timm.list_models("vim_*"))
    tags = set(timm.list_pretrained("vim_*"))
    assert {"vim_tiny_patch16_224.hustvl_in1k", "vim_small_patch16_224.hustvl_in1k"} <= tags
    for name in MODEL_NAMES:
        assert timm.models.get_pretrained_cfg(name) is not None


@pytest.mark.parametrize("name", PARAMS)
@torch.no_grad()
def test_model_forward(name):
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, *_input_size(model, 384))
    out = model(x)
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", PARAMS)
def test_model_backward(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=42).train()
    x = torch.randn(2, *_input_size(model, TARGET_BWD_SIZE))
    out = model(x)
    assert out.shape == (2, 42)
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"
        assert torch.isfinite(p.grad).all(), n
    assert sum(p.grad.numel() for p in model.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PARAMS)
@torch.no_grad()
def test_model_default_cfgs_non_std(name):
    model = timm.create_model(name, pretrained=False).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    sd = model.state_dict()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *_input_size(model))
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    n_tokens = model.embed.patch_embed.num_patches + model.num_prefix_tokens
    assert feats.shape == (1, n_tokens, model.num_features)  # unpooled tokens, class token included
    assert pre.shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0
    out = model(x)
    assert out.shape == pre.shape
    torch.testing.assert_close(out, pre)
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    assert model(x).shape[-1] == model.num_features
    for c in (cfg["classifier"],) if isinstance(cfg["classifier"], str) else cfg["classifier"]:
        assert c + ".weight" in sd
    assert cfg["first_conv"] + ".weight" in sd


@pytest.mark.parametrize("name", PARAMS)
@torch.no_grad()
def test_model_forward_intermediates(name):
    model = timm.create_model(name, pretrained=False).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    channels, reductions = info.channels(), info.reduction()
    assert len(channels) >= 3
    size = _input_size(model, TARGET_FFEAT_SIZE)
    x = torch.randn(1, *size)
    final, inter = model.forward_intermediates(x, output_fmt="NCHW")
    assert len(inter) == len(channels)
    for c, r, o in zip(channels, reductions, inter):
        assert o.shape[1] == c and o.shape[0] == 1 and torch.isfinite(o).all()
        assert o.shape[2] <= math.ceil(size[1] / r) + 1 and o.shape[3] <= math.ceil(size[2] / r) + 1
    torch.testing.assert_close(final, model.forward_features(x))
    model.set_grad_checkpointing()
    final2, _ = model.forward_intermediates(x, output_fmt="NCHW")
    torch.testing.assert_close(final2, final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", PARAMS)
@torch.no_grad()
def test_model_features_only(name):
    model = timm.create_model(name, pretrained=False, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    full = timm.create_model(name, pretrained=False).eval()
    full.load_state_dict(model.model.state_dict(), strict=False)
    size = _input_size(full, TARGET_FFEAT_SIZE)
    x = torch.randn(1, *size)
    outs = model(x)
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape[1] == c and torch.isfinite(o).all()
        assert o.shape[2] <= math.ceil(size[1] / r) + 1
    # the getter returns the residual stream after the requested layers (the last three here)
    ref = full.forward_intermediates(x, indices=model.out_indices, intermediates_only=True)
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_dynamic_img_size_and_set_input_size():
    kw = dict(embed_dim=32, depth=2, d_state=4)
    static = timm.create_model("vim_tiny_patch16_224", **kw).eval()
    dyn = timm.create_model("vim_tiny_patch16_224", dynamic_img_size=True, **kw).eval()
    dyn.load_state_dict(static.state_dict())
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(dyn(x), static(x))  # native size: no resampling
    y = dyn(torch.randn(2, 3, 160, 256))  # 10 x 16 patches, not square
    assert y.shape == (2, 1000) and torch.isfinite(y).all()
    feats = dyn.forward_features(torch.randn(1, 3, 160, 256))
    assert feats.shape == (1, 161, 32)
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        static(torch.randn(1, 3, 256, 256))
    static.set_input_size(img_size=256)
    assert static.embed.pos_embed.shape == (1, 257, 32) and static(torch.randn(1, 3, 256, 256)).shape == (1, 1000)
    m = timm.create_model("vim_tiny_patch16_224", img_size=320, **kw)
    assert m.embed.pos_embed.shape == (1, 401, 32)


@torch.no_grad()
def test_in_chans_override_and_wrong_channels_error():
    m = timm.create_model("vim_fmnist", in_chans=3, num_classes=4).eval()
    assert m.embed.patch_embed.proj.weight.shape[1] == 3 and m(torch.randn(2, 3, 28, 28)).shape == (2, 4)
    with pytest.raises(ValueError, match="3 channels"):
        timm.create_model("vim_fmnist")(torch.randn(1, 3, 28, 28))


def test_timm_data_config_resolves_for_our_cfgs():
    m = timm.create_model("vim_fmnist")
    cfg = timm.data.resolve_data_config({}, model=m)
    assert cfg["input_size"] == (1, 28, 28) and len(cfg["mean"]) == 1
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("vim_tiny_patch16_224", depth=1))
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
