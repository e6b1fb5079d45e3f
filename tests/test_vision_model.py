"""The Vim pieces: image tokens (middle class token, position resampling), the bimamba-v2 mixer
against an independent composition of two Mambas, and the classifier's own behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longstream.backbones.bimamba import VimMixer
from longstream.backbones.caduceus import CaduceusMixer
from longstream.encoders.image import ImageEncoder, cls_index, resample_pos_embed
from longstream.pipelines.vision.vim import VisionMamba

TINY = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=16, depth=2, d_state=4)


@torch.no_grad()
def test_tokens_are_raster_patches_with_the_class_token_in_the_middle():
    torch.manual_seed(0)
    enc = ImageEncoder(img_size=(12, 16), patch_size=4, in_chans=2, embed_dim=8)
    x = torch.randn(2, 2, 12, 16)
    tokens, grid = enc(x)
    assert grid == (3, 4) and tokens.shape == (2, 13, 8)
    patches = F.conv2d(x, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=4)  # (b, d, 3, 4)
    patches = patches.permute(0, 2, 3, 1).reshape(2, 12, 8)  # raster order: row by row
    i = 6  # 12 patches -> class token at 12 // 2
    pos = enc.pos_embed[0]
    torch.testing.assert_close(tokens[:, i], (enc.cls_token[0, 0] + pos[i]).expand(2, 8))
    torch.testing.assert_close(tokens[:, :i], patches[:, :i] + pos[:i])
    torch.testing.assert_close(tokens[:, i + 1 :], patches[:, i:] + pos[i + 1 :])
    head = ImageEncoder(img_size=8, patch_size=4, embed_dim=4, cls_position="head")
    assert head.cls_index() == 0 and ImageEncoder(img_size=8, patch_size=4, embed_dim=4, cls_position="none").cls_index() is None


def test_overlapping_patches_and_one_token_per_pixel():
    enc = ImageEncoder(img_size=224, patch_size=16, stride=8, embed_dim=4)
    assert enc.grid_size == (27, 27) and enc.pos_embed.shape == (1, 730, 4) and enc.cls_index() == 364
    pix = ImageEncoder(img_size=28, patch_size=1, in_chans=1, embed_dim=4)
    tokens, grid = pix(torch.randn(1, 1, 28, 28))
    assert grid == (28, 28) and tokens.shape == (1, 785, 4) and pix.cls_index() == 392


def test_resample_pos_embed_keeps_the_class_row_and_interpolates_the_grid():
    d = 3
    gy, gx = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    patches = torch.stack([gy, gx, torch.ones_like(gx)], -1).reshape(1, 16, d)  # position-linear table
    cls = torch.full((1, 1, d), 7.0)
    table = torch.cat([patches[:, :8], cls, patches[:, 8:]], 1)
    assert resample_pos_embed(table, (4, 4), (4, 4)) is table
    out = resample_pos_embed(table, (4, 4), (8, 6))
    assert out.shape == (1, 49, d)
    i = cls_index(48)
    torch.testing.assert_close(out[0, i], cls[0, 0])
    grid = torch.cat([out[:, :i], out[:, i + 1 :]], 1).reshape(8, 6, d)
    assert (grid[1:, :, 0] >= grid[:-1, :, 0] - 1e-5).all() and (grid[:, 1:, 1] >= grid[:, :-1, 1] - 1e-5).all()
    torch.testing.assert_close(grid[..., 2], torch.ones(8, 6), atol=1e-4, rtol=0)  # a constant stays constant
    with pytest.raises(ValueError, match="needs 17"):
        resample_pos_embed(table[:, :-1], (4, 4), (8, 8))


def test_image_errors_name_the_fix():
    enc = ImageEncoder(img_size=16, patch_size=4, in_chans=1, embed_dim=4)
    with pytest.raises(ValueError, match="3 channels: convert the images to 1"):
        enc(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(batch, 1, height, width\)"):
        enc(torch.randn(16, 16))
    with pytest.raises(ValueError, match="does not match the model's 16x16"):
        enc(torch.randn(1, 1, 20, 20))
    dyn = ImageEncoder(img_size=16, patch_size=4, in_chans=1, embed_dim=4, dynamic_img_size=True)
    with pytest.raises(ValueError, match="smaller than one 4x4 patch"):
        dyn(torch.randn(1, 1, 3, 8))
    with pytest.raises(ValueError, match="cls position"):
        ImageEncoder(cls_position="left")


@torch.no_grad()
def test_vim_mixer_equals_two_mambas_sharing_projections():
    """out_proj(y_f + rev y_b) == Caduceus' BiMamba (tied in/out projections, outputs added):
    the same function computed with the projections applied once instead of twice."""
    torch.manual_seed(0)
    vim = VimMixer(16, d_state=4, divide_out=False)
    bi = CaduceusMixer(16, d_state=4)
    own = ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias")
    sd = {f"fwd.{k}": v for k, v in vim.state_dict().items() if "_b" not in k}
    sd.update({f"bwd.{k}": vim.state_dict()[k.replace(".", "_b.", 1)] for k in own})
    sd.update({"bwd.A_log": vim.A_b_log, "bwd.D": vim.D_b, "bwd.in_proj.weight": vim.in_proj.weight,
               "bwd.out_proj.weight": vim.out_proj.weight})
    bi.load_state_dict(sd)
    x = torch.randn(2, 13, 16)
    torch.testing.assert_close(vim(x)[0], bi(x)[0], atol=1e-5, rtol=1e-5)
    vim.divide_out = True
    torch.testing.assert_close(vim(x)[0], bi(x)[0] / 2, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_compiled_and_pure_torch_paths_agree():
    torch.manual_seed(0)
    a = VimMixer(32, d_state=8)
    b = VimMixer(32, d_state=8, backend="torch")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 50, 32)
    torch.testing.assert_close(a(x)[0], b(x)[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="no state"):
        a(x, state={})
    with pytest.raises(NotImplementedError):
        a.step(x[:, 0], None)


def test_drop_path_is_stochastic_in_training_only():
    torch.manual_seed(0)
    m = VisionMamba(**TINY, drop_path_rate=0.5)
    x = torch.randn(4, 3, 16, 16)
    m.train()
    assert not torch.allclose(m(x), m(x))
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x))
    assert VisionMamba(**TINY).backbone.layers[1].drop.__class__.__name__ == "Identity"


@torch.no_grad()
def test_pooling_options():
    torch.manual_seed(0)
    m = VisionMamba(**TINY).eval()
    x = torch.randn(2, 3, 16, 16)
    feats = m.forward_features(x)  # (2, 17, 16), class token at 8
    torch.testing.assert_close(m.forward_head(feats, pre_logits=True), feats[:, 8])
    m.reset_classifier(5, "avg")
    torch.testing.assert_close(m.forward_head(feats, pre_logits=True), torch.cat([feats[:, :8], feats[:, 9:]], 1).mean(1))
    m.reset_classifier(0, "")
    assert m(x).shape == (2, 17, 16)
    with pytest.raises(ValueError, match="global_pool"):
        VisionMamba(**TINY, global_pool="max")
    with pytest.raises(ValueError, match="needs a class token"):
        VisionMamba(**TINY, cls_position="none")
    nocls = VisionMamba(**TINY, cls_position="none", global_pool="avg").eval()
    assert nocls.forward_features(x).shape == (2, 16, 16) and nocls(x).shape == (2, 5)


@torch.no_grad()
def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = VisionMamba(**TINY, stride=2, dynamic_img_size=True).eval()
    x = torch.randn(2, 3, 16, 16)
    m.save_pretrained(tmp_path / "ckpt", card="# tiny Vim\n")
    m2 = VisionMamba.from_pretrained(tmp_path / "ckpt")
    assert m2.config == m.config and m2.embed.patch_embed.stride == (2, 2)
    torch.testing.assert_close(m2(x), m(x))
    # a checkpoint opened at another resolution gets its position table resampled
    m3 = VisionMamba.from_pretrained(tmp_path / "ckpt", img_size=24, dynamic_img_size=False)
    assert m3.embed.pos_embed.shape == (1, 11 * 11 + 1, 16) and m3(torch.randn(1, 3, 24, 24)).shape == (1, 5)


def test_residual_stream_is_float32_under_bfloat16():
    torch.manual_seed(0)
    m = VisionMamba(**TINY).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y32 = m(x)
        yb = m.to(torch.bfloat16)(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    assert ((yb.float() - y32).abs().max() / y32.abs().max()).item() < 0.1


def test_vim_mixer_gradients_match_the_float64_reference():
    """The training path (compiled fused scan / conv backward, reversal autograd) against plain
    autograd through the float64 equations (tests/test_vim_convert.py), input and every parameter."""
    from test_vim_convert import _ssm_branch

    torch.manual_seed(0)
    m = VimMixer(16, d_state=8)
    x = torch.randn(2, 19, 16, requires_grad=True)
    g = torch.randn(2, 19, 16)
    (m(x)[0] * g).sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    p = {k: v.detach().double().requires_grad_(True) for k, v in m.named_parameters()}
    xz = x64 @ p["in_proj.weight"].T
    xs, z = xz[..., :32], xz[..., 32:]
    y = (_ssm_branch(xs, z, p, "") + _ssm_branch(xs.flip(1), z.flip(1), p, "_b").flip(1)) / 2
    ((y @ p["out_proj.weight"].T) * g.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=2e-4, rtol=2e-3)
    for k, v in m.named_parameters():
        torch.testing.assert_close(v.grad.double(), p[k].grad, atol=2e-4, rtol=2e-3, msg=lambda s, k=k: f"{k}: {s}")
