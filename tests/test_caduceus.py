"""Caduceus (backbones/caduceus.py, encoders/dna_rc.py): RC equivariance and upstream conversion.

- For random weights the whole PS model (RC embedding -> RC-equivariant backbone -> RC LM
  head) satisfies ``logits(RC(x)) == RC(logits(x))`` (positions reversed, vocabulary
  complemented) within 1e-5 in float32 and 1e-10 in float64, for unpadded and right-padded
  batches; ``rc_pool`` of the hidden states is RC-invariant.
- Synthetic checkpoints in the pinned upstream layouts (tests/fixtures/upstream_keys/
  caduceus_{ph,ps}_hf.json) convert to models whose logits equal an independent float64
  re-implementation of the upstream forward written here from modeling_caduceus.py /
  modeling_rcps.py (with the fused-add-norm half swap of the PS block), to 1e-6 in float64
  (our Mamba keeps its scan state in float32, ~1e-7) and 1e-4 in float32.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import upstream_keys
from longstream.backbones.caduceus import CaduceusConversionError, CaduceusMixer, convert_caduceus_state_dict
from longstream.backbones.mamba import Mamba
from longstream.backbones.registry import backbone_config
from longstream.backbones.stack import SequenceBackbone, create_backbone
from longstream.encoders.dna import reverse_complement_ids
from longstream.encoders.dna_rc import RCLanguageModel, dna_complement, rc_pool
from longstream.pipelines.hf_import import caduceus_from_upstream

torch.set_num_threads(1)
COMP = torch.tensor(dna_complement(16))

def _rc_logits(logits: torch.Tensor) -> torch.Tensor:
    """RC of per-position logits (b, l, v): positions reversed, vocabulary complemented."""
    return logits.flip(1)[..., COMP]


def _ps_model(dtype: torch.dtype, seed: int = 0) -> RCLanguageModel:
    torch.manual_seed(seed)
    model = RCLanguageModel(create_backbone("test_caduceus_ps"), 16).to(dtype)
    with torch.no_grad():  # non-trivial weights everywhere (the init has D = 1, zero biases, ...)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


# ----------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@torch.no_grad()
def test_whole_model_is_rc_equivariant(dtype, tol):
    model = _ps_model(dtype)
    ids = torch.randint(7, 12, (3, 23))  # A, C, G, T, N
    logits = model(ids)[0]
    rc = model(reverse_complement_ids(ids))[0]
    assert logits.abs().max() > 0.05
    assert (rc - _rc_logits(logits)).abs().max() < tol
    # and it is not trivially symmetric: a sequence and its RC get different logits
    assert (rc - logits).abs().max() > 1e-3


@torch.no_grad()
def test_equivariance_holds_per_row_in_padded_batches():
    model = _ps_model(torch.float64, seed=1)
    lengths = [17, 9]
    ids = torch.randint(7, 12, (2, 17))
    ids[1, 9:] = 4  # [PAD]
    mask = torch.arange(17)[None] < torch.tensor(lengths)[:, None]
    out = model(ids, mask=mask)[0]
    rc_ids = ids.clone()
    for b, n in enumerate(lengths):
        rc_ids[b, :n] = reverse_complement_ids(ids[b, :n])
    rc_out = model(rc_ids, mask=mask)[0]
    # the Mamba scan's masked path (dt = 0 on padding) rounds to ~1e-7 even for float64 inputs
    for b, n in enumerate(lengths):
        alone = model(ids[b : b + 1, :n])[0][0]
        assert (out[b, :n] - alone).abs().max() < 1e-6  # padding changes nothing
        assert (rc_out[b, :n] - out[b, :n].flip(0)[..., COMP]).abs().max() < 1e-6


@pytest.mark.parametrize("how", ["mean", "max"])
@torch.no_grad()
def test_pooled_classification_output_is_rc_invariant(how):
    model = _ps_model(torch.float64, seed=2)
    head = torch.nn.Linear(16, 3).double()
    ids = torch.randint(7, 12, (2, 15))
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[1, 11:] = False
    rc_ids = ids.clone()
    rc_ids[0] = reverse_complement_ids(ids[0])
    rc_ids[1, :11] = reverse_complement_ids(ids[1, :11])
    p = head(rc_pool(model.hidden(ids, mask), mask, how))
    p_rc = head(rc_pool(model.hidden(rc_ids, mask), mask, how))
    assert p.shape == (2, 3) and p.abs().max() > 1e-3
    assert (p - p_rc).abs().max() < 1e-10
    other = head(rc_pool(model.hidden(ids.flip(1), None), None, how))  # plain reversal is a different input
    assert (other[0] - p[0]).abs().max() > 1e-4


# ----------------------------------------------------------------------------- structure
def test_bimamba_ties_projections_and_equals_two_mambas():
    torch.manual_seed(0)
    m = CaduceusMixer(8, d_state=4).double()
    assert m.bwd.in_proj is m.fwd.in_proj and m.bwd.out_proj is m.fwd.out_proj
    assert m.bwd.A_log is not m.fwd.A_log
    a, b = Mamba(8, d_state=4).double(), Mamba(8, d_state=4).double()
    a.load_state_dict(m.fwd.state_dict())
    b.load_state_dict(m.bwd.state_dict())
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    with torch.no_grad():
        want = a(x)[0] + b(x.flip(1))[0].flip(1)
        assert (m(x)[0] - want).abs().max() < 1e-10


def _rcps_per_layer(bb: SequenceBackbone, x: torch.Tensor) -> torch.Tensor:
    """The upstream non-fused RCPS formulation: every norm and mixer wrapped per layer."""
    w = x.shape[-1] // 2
    flip = lambda t: t.flip(-2, -1)
    wrap = lambda f, h: torch.cat([f(h[..., :w]), flip(f(flip(h[..., w:])))], -1)
    h = x
    for blk in bb.layers:
        h = h + wrap(lambda t, blk=blk: blk.mixer(blk.norm(t))[0], h)
    return wrap(bb.norm_f, h)


@torch.no_grad()
def test_folded_stack_equals_per_layer_rc_wrapping():
    torch.manual_seed(3)
    bb = create_backbone("test_caduceus_ps").double()
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    assert (bb(x)[0] - _rcps_per_layer(bb, x)).abs().max() < 1e-12
    assert not bb.is_causal and not bb.supports_state and bb.symbols == ["BM", "BM"]


def test_odd_width_is_refused():
    with pytest.raises(ValueError, match="even d_model"):
        create_backbone("test_caduceus_ps", d_model=31)


def test_presets_have_the_upstream_parameter_count():
    """The presets' layers have the upstream shapes (2 of the 16 layers built, to stay fast)."""
    dims = upstream_keys.fixture("caduceus_ps_hf")["reference_dims"]
    for variant, preset in (("ph", "caduceus_ph"), ("ps", "caduceus_ps")):
        fx = upstream_keys.fixture(f"caduceus_{variant}_hf")
        assert len(upstream_keys.shapes(f"caduceus_{variant}_hf", dims)) == fx["reference_tensor_count"]
        shapes = upstream_keys.shapes(f"caduceus_{variant}_hf", {**dims, "n_layer": 2})
        upstream = sum(torch.Size(s).numel() for k, s in shapes.items()
                       if "embeddings" not in k and not k.endswith("complement_map"))
        ours = sum(p.numel() for p in create_backbone(preset, n_layers=2).parameters())
        assert ours == upstream, (variant, ours, upstream)


# ----------------------------------------------------------------------------- upstream reference
DIMS = {"d_model": 8, "n_layer": 2, "d_inner": 16, "d_state": 4, "d_conv": 4, "dt_rank": 1, "vocab_rows": 16}


def _hf_config(variant: str, n_layer: int = 2, fused: bool = True) -> dict:
    cfg = dict(upstream_keys.fixture(f"caduceus_{variant}_hf")["reference_config"])
    cfg.update(d_model=DIMS["d_model"], n_layer=n_layer, fused_add_norm=fused)
    cfg["ssm_cfg"] = dict(cfg["ssm_cfg"], d_state=DIMS["d_state"])
    return cfg


def upstream_state_dict(variant: str, n_layer: int = 2, fused: bool = True, seed: int = 0) -> dict:
    """Random tensors under the pinned upstream keys (tied duplicates absent, as in the file)."""
    sd = upstream_keys.state_dict(f"caduceus_{variant}_hf", {**DIMS, "n_layer": n_layer}, seed=seed)
    for k in [k for k in sd if k.endswith("complement_map")]:
        sd[k] = COMP.clone()
    if not fused:  # non-fused RCPS wraps the norms: RCPSAddNormWrapper.submodule
        sd = {k.replace(".norm.weight", ".norm.submodule.weight").replace("norm_f.weight", "norm_f.submodule.weight")
              if variant == "ps" else k: v for k, v in sd.items()}
    return sd


def _mamba_ref(p: dict, x: torch.Tensor) -> torch.Tensor:
    """mamba_ssm Mamba forward in float64, sequential scan (bias=False, conv_bias=True)."""
    e, n = p["A_log"].shape
    xz = x @ p["in_proj.weight"].T
    xi, z = xz[..., :e], xz[..., e:]
    k = p["conv1d.weight"].shape[-1]
    u = F.silu(F.conv1d(F.pad(xi.transpose(1, 2), (k - 1, 0)), p["conv1d.weight"], p["conv1d.bias"], groups=e))
    u = u.transpose(1, 2)  # (b, l, e)
    r = p["dt_proj.weight"].shape[1]
    dt_low, B, C = torch.split(u @ p["x_proj.weight"].T, [r, n, n], dim=-1)
    dt = F.softplus(dt_low @ p["dt_proj.weight"].T + p["dt_proj.bias"])
    A = -torch.exp(p["A_log"])
    h = torch.zeros(x.shape[0], e, n, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + p["D"] * u[:, t])
    return (torch.stack(ys, 1) * F.silu(z)) @ p["out_proj.weight"].T


def _bimamba_ref(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    get = lambda d: {k[len(prefix + d):]: v for k, v in sd.items() if k.startswith(prefix + d)}
    fwd, rev = get("mamba_fwd."), get("mamba_rev.")
    rev.setdefault("in_proj.weight", fwd["in_proj.weight"])  # tied, stored once
    rev.setdefault("out_proj.weight", fwd["out_proj.weight"])
    return _mamba_ref(fwd, x) + _mamba_ref(rev, x.flip(1)).flip(1)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def upstream_logits(sd: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """CaduceusForMaskedLM's logits in float64, following modeling_caduceus.py / modeling_rcps.py."""
    sd = {k: (v.double() if v.is_floating_point() else v) for k, v in sd.items()}
    pre, n_layer, D = "caduceus.backbone.", cfg["n_layer"], cfg["d_model"]
    flip = lambda t: t.flip(-2, -1)
    if not cfg["rcps"]:
        E = sd[pre + "embeddings.word_embeddings.weight"]
        h, res = E[ids], None
        for i in range(n_layer):
            res = h if res is None else h + res  # Add -> Norm -> Mixer
            h = _bimamba_ref(sd, f"{pre}layers.{i}.mixer.", _rms(res, sd[f"{pre}layers.{i}.norm.weight"]))
        return _rms(h + res, sd[pre + "norm_f.weight"]) @ E.T
    E = sd[pre + "embeddings.word_embeddings.embedding.weight"]
    comp = sd[pre + "embeddings.word_embeddings.complement_map"]
    h = torch.cat([E[ids], flip(E[comp[ids.flip(-1)]])], -1)  # RCPSEmbedding
    res = None
    nk = ".norm.weight" if cfg["fused_add_norm"] else ".norm.submodule.weight"
    for i in range(n_layer):
        w = sd[f"{pre}layers.{i}{nk}"]
        lo, hi = (h[..., D:], h[..., :D]) if cfg["fused_add_norm"] else (h[..., :D], h[..., D:])  # the fused swap
        rlo, rhi = (None, None) if res is None else ((res[..., D:], res[..., :D]) if cfg["fused_add_norm"]
                                                     else (res[..., :D], res[..., D:]))
        a = lo if rlo is None else lo + rlo
        b = flip(hi) if rhi is None else flip(hi) + flip(rhi)
        hidden = torch.cat([_rms(a, w), flip(_rms(b, w))], -1)
        res = torch.cat([a, flip(b)], -1)
        mix = f"{pre}layers.{i}.mixer.submodule."
        h = torch.cat([_bimamba_ref(sd, mix, hidden[..., :D]), flip(_bimamba_ref(sd, mix, flip(hidden[..., D:])))], -1)
    wf = sd[pre + ("norm_f.weight" if cfg["fused_add_norm"] else "norm_f.submodule.weight")]
    s = h + res
    out = torch.cat([_rms(s[..., :D], wf), flip(_rms(flip(s[..., D:]), wf))], -1)
    lm_comp = sd["lm_head.complement_map"]
    return out[..., :D] @ E.T + out[..., D:].flip(-1) @ E[lm_comp].T  # RCPSLMHead


@pytest.mark.parametrize("variant,n_layer,fused", [("ph", 2, True), ("ps", 2, True), ("ps", 4, True), ("ps", 2, False)])
@torch.no_grad()
def test_converted_checkpoint_matches_upstream_forward(variant, n_layer, fused):
    sd = upstream_state_dict(variant, n_layer, fused, seed=n_layer)
    cfg = _hf_config(variant, n_layer, fused)
    _, model = caduceus_from_upstream(sd, cfg)
    ids = torch.randint(0, 12, (2, 9))
    ref = upstream_logits(sd, cfg, ids)
    got = model.double()(ids)[0]
    assert ref.abs().max() > 0.1
    assert (got - ref).abs().max() < 1e-6  # Mamba keeps its scan state in float32 by design (~1e-7)
    got32 = model.float()(ids)[0]
    assert (got32.double() - ref).abs().max() < 1e-4
    if variant == "ps":
        assert (model.double()(reverse_complement_ids(ids))[0] - _rc_logits(got)).abs().max() < 1e-10


def test_fused_swap_matters():
    """Converting the fused PS layout as if it were the plain one gives other logits: the
    conjugation of the even layers is doing real work."""
    sd = upstream_state_dict("ps", 2, True, seed=5)
    cfg = _hf_config("ps", 2, True)
    _, fused = caduceus_from_upstream(sd, cfg)
    _, plain = caduceus_from_upstream(sd, {**cfg, "fused_add_norm": False})
    ids = torch.randint(0, 12, (1, 9))
    with torch.no_grad():
        assert (fused(ids)[0] - plain(ids)[0]).abs().max() > 1e-3


def test_conversion_errors_name_the_problem():
    sd = upstream_state_dict("ps", 3, True)
    with pytest.raises(CaduceusConversionError, match="odd n_layer"):
        convert_caduceus_state_dict(sd, _hf_config("ps", 3))
    sd = upstream_state_dict("ph")
    bad = dict(sd, **{"lm_head.weight": torch.randn(16, 8)})
    with pytest.raises(CaduceusConversionError, match="lm_head differs"):
        convert_caduceus_state_dict(bad, _hf_config("ph"))
    with pytest.raises(CaduceusConversionError, match="ew_multiply"):
        convert_caduceus_state_dict(sd, {**_hf_config("ph"), "bidirectional_strategy": "ew_multiply"})
    with pytest.raises(CaduceusConversionError, match="unexpected key"):
        convert_caduceus_state_dict({**sd, "caduceus.backbone.extra.weight": torch.zeros(1)}, _hf_config("ph"))
    cfg, _, _ = convert_caduceus_state_dict(sd, _hf_config("ph"))
    assert dataclasses.asdict(cfg)["pattern"] == "BM" and backbone_config("caduceus_ph").pattern == "BM"


def test_complement_map_is_the_tokenizers():
    ids = torch.arange(12)
    assert reverse_complement_ids(ids).flip(0).tolist() == dna_complement(12)
    assert dna_complement(16)[12:] == [12, 13, 14, 15]
