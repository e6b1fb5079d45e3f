"""hustvl/Vim checkpoints -> VisionMamba: a synthetic state dict in the pinned upstream layout
(tests/fixtures/upstream_keys/hustvl_vim.json) converted and checked against a float64 forward
written from the paper's equations on the *upstream* keys, never through our modules."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

import upstream_keys
from longstream.pipelines.vision.vim import VisionMamba, checkpoint_filter_fn
from longstream.pipelines.vision.vim_convert import (
    VIM_REPOS,
    VimConversionError,
    convert_vim_state_dict,
    read_vim_checkpoint,
    vim_weight_file,
)

TINY = {"d_model": 16, "n_layer": 2, "d_inner": 32, "d_state": 4, "d_conv": 4, "dt_rank": 1, "in_chans": 3,
        "patch": 4, "n_patches": 16, "num_classes": 5}
VIM_NAME = "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"


def upstream_sd(seed: int = 0, **dims) -> dict[str, torch.Tensor]:
    sd = upstream_keys.state_dict("hustvl_vim", {**TINY, **dims}, seed=seed)
    for k in sd:  # a well-behaved backward-branch decay, as for A_log
        if k.endswith("A_b_log"):
            sd[k] = torch.log(torch.rand_like(sd[k]) * 3 + 0.5)
    return sd


# ----------------------------------------------------------------------------- float64 reference
def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _ssm_branch(x, z, p, sfx):
    """One direction of bimamba v2: causal depthwise conv + SiLU, selective scan, D skip, SiLU(z) gate."""
    b, l, e = x.shape
    w, bias = p[f"conv1d{sfx}.weight"], p[f"conv1d{sfx}.bias"]  # (e, 1, k), (e,)
    k = w.shape[-1]
    u = F.silu(F.conv1d(x.transpose(1, 2), w, bias, padding=k - 1, groups=e)[..., :l]).transpose(1, 2)  # (b, l, e)
    r = p[f"dt_proj{sfx}.weight"].shape[1]
    n = (p[f"x_proj{sfx}.weight"].shape[0] - r) // 2
    dbc = u @ p[f"x_proj{sfx}.weight"].T
    dt = F.softplus(dbc[..., :r] @ p[f"dt_proj{sfx}.weight"].T + p[f"dt_proj{sfx}.bias"])  # (b, l, e)
    Bm, Cm = dbc[..., r : r + n], dbc[..., r + n :]
    A = -torch.exp(p["A_b_log" if sfx else "A_log"])  # (e, n)
    h = torch.zeros(b, e, n, dtype=x.dtype)
    ys = []
    for t in range(l):  # h_t = exp(dt A) h_{t-1} + dt u_t B_t ;  y_t = C_t h_t + D u_t
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + p[f"D{sfx}"] * u[:, t])
    return torch.stack(ys, 1) * F.silu(z)


def hustvl_reference(sd, images, stride, divide_out=True):
    """Vim's forward (models_mamba.VisionMamba with bimamba v2, middle class token) in float64."""
    p = {k: v.double() for k, v in sd.items()}
    x = images.double()
    t = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=stride)
    t = t.flatten(2).transpose(1, 2)  # (b, n, d)
    b, n, d = t.shape
    i = n // 2
    t = torch.cat([t[:, :i], p["cls_token"].expand(b, -1, -1), t[:, i:]], 1) + p["pos_embed"]
    depth = len({k.split(".")[1] for k in p if k.startswith("layers.")})
    residual, hidden = None, t
    for j in range(depth):  # upstream Block: add -> norm -> mixer
        q = {k[len(f"layers.{j}.mixer."):]: v for k, v in p.items() if k.startswith(f"layers.{j}.mixer.")}
        residual = hidden if residual is None else residual + hidden
        hidden = _rms(residual, p[f"layers.{j}.norm.weight"])
        xz = hidden @ q["in_proj.weight"].T
        e = xz.shape[-1] // 2
        xs, z = xz[..., :e], xz[..., e:]
        y = _ssm_branch(xs, z, q, "") + _ssm_branch(xs.flip(1), z.flip(1), q, "_b").flip(1)
        hidden = (y / 2 if divide_out else y) @ q["out_proj.weight"].T
    out = _rms(residual + hidden, p["norm_f.weight"])
    return out[:, i] @ p["head.weight"].T + p["head.bias"]


# ----------------------------------------------------------------------------- tests
def test_fixture_matches_the_published_vim_tiny_size():
    fx = upstream_keys.fixture("hustvl_vim")
    shapes = upstream_keys.shapes("hustvl_vim", fx["reference_dims"])
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 7_148_008  # "7M" in hustvl's README
    import timm

    m = timm.create_model("vim_tiny_patch16_224")  # our registration has exactly that many parameters
    assert sum(p.numel() for p in m.parameters()) == 7_148_008
    assert len(m.state_dict()) == len(shapes)


def test_converted_logits_match_the_float64_upstream_forward():
    sd = upstream_sd()
    model = VisionMamba.from_hustvl(sd)
    assert model.embed.patch_embed.img_size == (16, 16) and model.embed.cls_index() == 8
    assert model.num_classes == 5 and len(model.backbone.layers) == 2 and model.embed.patch_embed.stride == (4, 4)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(x)
    ref = hustvl_reference(sd, x, stride=4)
    assert ref.abs().max() > 0.05  # not a degenerate comparison
    torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-4)
    # every upstream tensor went somewhere, unchanged
    ours = model.state_dict()
    conv, _ = convert_vim_state_dict(sd)
    assert len(conv) == len(sd) == len(ours)
    for k, v in conv.items():
        assert torch.equal(ours[k], v), k


def test_pth_with_training_args_loads_weights_only(tmp_path):
    sd = upstream_sd(seed=3, n_patches=36)  # 6x6 patches of 4 px at stride 4 -> 24 px
    ckpt = {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 299,
            "args": argparse.Namespace(model=VIM_NAME, input_size=24, drop_path=0.0)}
    path = tmp_path / "vim_t_midclstok_76p1acc.pth"
    torch.save(ckpt, path)
    tensors, args = read_vim_checkpoint(path)
    assert args["model"] == VIM_NAME and set(tensors) == set(sd)
    model = VisionMamba.from_hustvl(path)
    assert model.embed.patch_embed.img_size == (24, 24) and model.config["divide_out"] is True
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), hustvl_reference(sd, x, stride=4), atol=1e-4, rtol=1e-4)


def test_overlapping_patches_are_read_off_the_position_table():
    """Vim-Ti+ (stride 8): 27 x 27 patches of 16 px at 224 px; pos_embed has 730 rows."""
    sd = upstream_sd(patch=16, n_patches=27 * 27)
    _, kw = convert_vim_state_dict(sd)
    assert (kw["stride"], kw["img_size"], kw["patch_size"]) == (8, 224, 16)
    _, kw = convert_vim_state_dict(upstream_sd(patch=16, n_patches=196))
    assert (kw["stride"], kw["img_size"]) == (16, 224)
    _, kw = convert_vim_state_dict(sd, {"model": VIM_NAME.replace("patch16_224", "patch16_stride8_224")})
    assert kw["stride"] == 8


def test_timm_pretrained_file_with_other_channels_and_classes(tmp_path):
    """timm's own loading path: pretrained=True with a local file, in_chans / num_classes changed."""
    import timm

    sd = upstream_sd(seed=5, num_classes=1000)  # ImageNet's head, as in the released files
    path = tmp_path / "vim.pth"
    torch.save({"model": sd, "args": argparse.Namespace(model=VIM_NAME, input_size=16)}, path)
    arch = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, d_state=4)
    m = timm.create_model("vim_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **arch)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = m(x)
    torch.testing.assert_close(logits.double(), hustvl_reference(sd, x, stride=4), atol=1e-4, rtol=1e-4)
    m1 = timm.create_model("vim_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                           in_chans=1, num_classes=7, **arch)
    w = m1.embed.patch_embed.proj.weight
    assert w.shape[1] == 1
    torch.testing.assert_close(w[:, 0], sd["patch_embed.proj.weight"].sum(1))  # timm's adapt_input_conv
    torch.testing.assert_close(m1.backbone.layers[1].mixer.A_b_log, sd["layers.1.mixer.A_b_log"])
    assert m1(torch.randn(1, 1, 16, 16)).shape == (1, 7)


def test_position_table_resampled_for_a_new_resolution():
    sd = upstream_sd()
    conv, kw = convert_vim_state_dict(sd)
    kw["img_size"] = 32  # 8 x 8 patches: the class row moves from index 8 to 32
    model = VisionMamba(**kw)
    model.load_state_dict(checkpoint_filter_fn(conv, model))
    pe = model.embed.pos_embed
    assert pe.shape == (1, 65, 16)
    torch.testing.assert_close(pe[0, 32], sd["pos_embed"][0, 8])
    # a table that is constant over the grid stays constant
    const = sd["pos_embed"].clone()
    const[:, :8] = const[:, 9:] = 0.25
    model.load_state_dict(checkpoint_filter_fn({**conv, "embed.pos_embed": const}, model))
    patches = torch.cat([model.embed.pos_embed[0, :32], model.embed.pos_embed[0, 33:]])
    torch.testing.assert_close(patches, torch.full_like(patches, 0.25))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda sd: sd.update({"layers.0.norm.bias": torch.zeros(16)}), "LayerNorm"),
        (lambda sd: sd.update({"rope.freqs_cos": torch.zeros(4, 4)}), "rotary"),
        (lambda sd: sd.update({"layers.1.mixer.gamma": torch.ones(16)}), "layer scale"),
        (lambda sd: sd.pop("layers.1.mixer.A_b_log"), "backward branch"),
        (lambda sd: sd.update({"layers.0.mixer.extra.weight": torch.ones(1)}), "unexpected key"),
        (lambda sd: sd.pop("pos_embed"), "pos_embed"),
    ],
)
def test_unsupported_checkpoints_are_refused_by_name(edit, match):
    sd = upstream_sd()
    edit(sd)
    with pytest.raises(VimConversionError, match=match):
        convert_vim_state_dict(sd)


def test_non_checkpoint_files_are_refused(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(VimConversionError, match="cannot read"):
        read_vim_checkpoint(bad)
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "y.pth")
    with pytest.raises(VimConversionError, match="not a Vision Mamba"):
        read_vim_checkpoint(tmp_path / "y.pth")


def test_weight_file_choice():
    files = ["README.md", "vim_t_midclstok_76p1acc.pth", "vim_t_midclstok_ft_78p3acc.pth"]
    assert vim_weight_file("hustvl/Vim-tiny-midclstok", files) == "vim_t_midclstok_76p1acc.pth"
    assert vim_weight_file("someone/vim-copy", ["vim_x.pth"]) == "vim_x.pth"
    assert vim_weight_file("someone/vim-copy", ["a.pth", "b.pth"]) is None
    assert set(VIM_REPOS) >= {"hustvl/Vim-tiny-midclstok", "hustvl/Vim-small-midclstok"}


def test_hub_import_round_trip(tmp_path, monkeypatch):
    """``longstream hub import hf:hustvl/Vim-tiny-midclstok`` against a loopback Hub server."""
    pytest.importorskip("huggingface_hub")
    import io

    import huggingface_hub.constants as hc

    from hf_server import HFServer, Repo
    from longstream.apps.cli import main
    from longstream.pipelines.hf_import import import_dir, load_imported, load_imported_backbone

    for v in ("LONGSTREAM_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("LONGSTREAM_HOME", str(tmp_path / "home"))
    sd = upstream_sd(seed=11)
    buf = io.BytesIO()
    torch.save({"model": sd, "args": argparse.Namespace(model=VIM_NAME, input_size=16)}, buf)
    repo = Repo({"vim_t_midclstok_76p1acc.pth": buf.getvalue(), "vim_t_midclstok_ft_78p3acc.pth": b"other",
                 "README.md": b"# Vim\n"})
    with HFServer({"hustvl/Vim-tiny-midclstok": repo}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        assert main(["hub", "import", "hf:hustvl/Vim-tiny-midclstok"]) == 0
        assert not any("_ft_" in r or "README" in r for r in srv.requests)  # only the weights it converts
    d = import_dir(tmp_path / "home", "hf:hustvl/Vim-tiny-midclstok")
    meta = json.loads((d / "config.json").read_text())
    assert meta["model_type"] == "longstream_vim" and meta["source"]["layout"] == "vim"
    model = load_imported(d)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), hustvl_reference(sd, x, stride=4), atol=1e-4, rtol=1e-4)
    ib = load_imported_backbone(d)
    assert ib.kind == "vim" and ib.d_model == 16 and "pos_embed" in ib.embedding_state
