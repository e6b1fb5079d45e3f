"""HyenaDNA loader: synthetic state dicts in the exact Lightning and ``-hf`` layouts.

The expected outputs come from an independent float64 re-implementation of HyenaDNA's
forward written here from the published equations (no code shared with the library).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import upstream_keys  # tests/upstream_keys.py: the pinned upstream layouts
from longstream.backbones.hyenadna import HyenaDNAConfig, load_hyenadna
from longstream.encoders.tokenizers import CharacterTokenizer

D, NL, DI, V, LMAX, FO, EMB = 16, 2, 32, 16, 40, 8, 5


def _layer_tensors(g: torch.Generator) -> dict[str, torch.Tensor]:
    """One HyenaDNA layer's tensors, named as in HyenaDNA (mixer + norms + MLP)."""
    r = lambda *s, scale=0.3: torch.randn(*s, generator=g) * scale
    t = torch.linspace(0, 1, LMAX)[None, :, None]
    bands = (EMB - 1) // 2
    w = 2 * math.pi * torch.arange(LMAX, dtype=torch.float32)[None, :, None] / LMAX
    f = torch.linspace(1e-4, bands - 1, bands)[None, None]
    z = torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], -1)
    z = z + r(*z.shape, scale=0.01)  # trained positional embeddings differ from the analytic init
    freq = 10 + r(1, FO)
    sd = {
        "mixer.in_proj.weight": r(3 * D, D), "mixer.in_proj.bias": r(3 * D),
        "mixer.out_proj.weight": r(D, D), "mixer.out_proj.bias": r(D),
        "mixer.short_filter.weight": r(3 * D, 1, 3), "mixer.short_filter.bias": r(3 * D),
        "mixer.filter_fn.bias": r(D), "mixer.filter_fn.pos_emb.z": z, "mixer.filter_fn.pos_emb.t": t,
        "mixer.filter_fn.implicit_filter.0.weight": r(FO, EMB), "mixer.filter_fn.implicit_filter.0.bias": r(FO),
        "mixer.filter_fn.implicit_filter.1.freq": freq,
        "mixer.filter_fn.implicit_filter.2.weight": r(FO, FO), "mixer.filter_fn.implicit_filter.2.bias": r(FO),
        "mixer.filter_fn.implicit_filter.3.freq": freq,
        "mixer.filter_fn.implicit_filter.4.weight": r(FO, FO), "mixer.filter_fn.implicit_filter.4.bias": r(FO),
        "mixer.filter_fn.implicit_filter.5.freq": freq,
        "mixer.filter_fn.implicit_filter.6.weight": r(D, FO),
        "mixer.filter_fn.modulation.deltas": torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, D)[None, None],
        "norm1.weight": 1 + r(D), "norm1.bias": r(D), "norm2.weight": 1 + r(D), "norm2.bias": r(D),
        "mlp.fc1.weight": r(DI, D), "mlp.fc1.bias": r(DI), "mlp.fc2.weight": r(D, DI), "mlp.fc2.bias": r(D),
    }  # fmt: skip
    return sd


DIMS = {"d_model": D, "n_layer": NL, "d_inner": DI, "vocab_rows": V, "order": 2, "l_max": LMAX, "emb_dim": EMB,
        "filter_order": FO, "short_filter_order": 3}


def _from_fixture(layout: str, prefix: str, seed: int) -> dict[str, torch.Tensor]:
    """The pinned upstream key list of ``layout`` (tests/fixtures/upstream_keys/), filled with
    well-behaved values per tensor role; shapes are checked against the fixture."""
    g = torch.Generator().manual_seed(seed)
    shapes = upstream_keys.shapes(layout, DIMS)
    emb = torch.randn(V, D, generator=g)
    layers = [_layer_tensors(g) for _ in range(NL)]
    sd = {}
    for key, shape in shapes.items():
        rest = key[len(prefix):] if key.startswith(prefix) else key
        if rest.startswith("layers."):
            i, name = rest.split(".", 2)[1:]
            v = layers[int(i)][name]  # a KeyError here = the fixture names a tensor HyenaDNA's code does not
        elif rest == "embeddings.word_embeddings.weight" or key.endswith("lm_head.weight"):
            v = emb
        elif rest == "ln_f.weight":
            v = 1 + 0.1 * torch.randn(D, generator=g)
        else:
            assert rest == "ln_f.bias", key
            v = 0.1 * torch.randn(D, generator=g)
        assert tuple(v.shape) == shape, (key, tuple(v.shape), shape)
        sd[key] = v
    return sd


def lightning_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The Lightning ``weights.ckpt`` layout (``model.backbone.*``; the tied ``model.lm_head.weight`` too)."""
    return _from_fixture("hyenadna_lightning", "model.backbone.", seed)


def hf_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The ``-hf`` safetensors layout: ``hyena.`` prefix; of each shared group only the first name stored
    for the sine frequencies and only ``lm_head.weight`` for the embedding pair."""
    sd = _from_fixture("hyenadna_hf", "hyena.backbone.", seed)
    for group in upstream_keys.fixture("hyenadna_hf")["shared"]:
        keep = group[-1] if group[-1] == "lm_head.weight" else group[0]
        for i in range(NL):
            for k in group:
                if k != keep:
                    sd.pop(k.format(i=i), None)
    return sd


def reference_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor, prefix: str) -> torch.Tensor:
    """HyenaDNA's forward in float64 from its equations (direct O(L^2) long convolution)."""
    P = lambda k: sd[prefix + k].double()
    emb = sd.get(prefix + "embeddings.word_embeddings.weight", sd.get("lm_head.weight")).double()
    x = emb[ids]  # (B, L, D)
    B, L, _ = x.shape
    for i in range(NL):
        p = f"layers.{i}."
        h = F.layer_norm(x, (D,), P(p + "norm1.weight"), P(p + "norm1.bias"), 1e-5)
        u = h @ P(p + "mixer.in_proj.weight").T + P(p + "mixer.in_proj.bias")  # (B, L, 3D)
        u = u.transpose(1, 2)
        sw, sbias = P(p + "mixer.short_filter.weight"), P(p + "mixer.short_filter.bias")
        upad = F.pad(u, (2, 0))
        uc = sbias[None, :, None] + sum(sw[None, :, 0, j, None] * upad[..., j : j + L] for j in range(3))
        x0, x1, v = uc[:, :D], uc[:, D : 2 * D], uc[:, 2 * D :]
        fp = p + "mixer.filter_fn."
        z, t = P(fp + "pos_emb.z")[0, :L], P(fp + "pos_emb.t")[0, :L]
        freq = P(fp + "implicit_filter.1.freq")
        a = torch.sin(freq * (z @ P(fp + "implicit_filter.0.weight").T + P(fp + "implicit_filter.0.bias")))
        for j in (2, 4):
            a = torch.sin(freq * (a @ P(fp + f"implicit_filter.{j}.weight").T + P(fp + f"implicit_filter.{j}.bias")))
        k = a @ P(fp + "implicit_filter.6.weight").T  # (L, D)
        k = k * (torch.exp(-t * P(fp + "modulation.deltas")[0].abs()) + 0.05)
        k = k.T  # (D, L)
        g = v * x1
        conv = torch.zeros_like(g)
        for tt in range(L):
            conv[..., tt] = (k[:, : tt + 1].flip(-1) * g[..., : tt + 1]).sum(-1)
        y = (conv + g * P(fp + "bias")[None, :, None]) * x0
        y = y.transpose(1, 2) @ P(p + "mixer.out_proj.weight").T + P(p + "mixer.out_proj.bias")
        x = x + y
        h = F.layer_norm(x, (D,), P(p + "norm2.weight"), P(p + "norm2.bias"), 1e-5)
        h = F.gelu(h @ P(p + "mlp.fc1.weight").T + P(p + "mlp.fc1.bias"), approximate="tanh")
        x = x + h @ P(p + "mlp.fc2.weight").T + P(p + "mlp.fc2.bias")
    return F.layer_norm(x, (D,), P("ln_f.weight"), P("ln_f.bias"), 1e-5)


IDS = torch.randint(0, 12, (2, 33), generator=torch.Generator().manual_seed(1))


def test_lightning_layout_parity():
    sd = lightning_state_dict()
    model = load_hyenadna(sd)
    assert model.config.l_max == LMAX and model.config.emb_dim == EMB and model.config.d_inner == DI
    with torch.no_grad():
        out = model(IDS)
    ref = reference_forward(sd, IDS, "model.backbone.")
    assert (out.double() - ref).abs().max() < 1e-4
    # the LM head is tied to the embedding
    assert model.lm_head.weight.data_ptr() == model.backbone.embeddings.word_embeddings.weight.data_ptr()


def test_hf_layout_parity_and_retied_weights(tmp_path):
    from safetensors.torch import save_file

    sd = hf_state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(
        '{"d_model": 16, "n_layer": 2, "d_inner": 32, "vocab_size": 12, "pad_vocab_size_multiple": 8,'
        ' "max_seq_len": 40, "hyena_order": 2, "filter_order": 8, "emb_dim": 5, "short_filter_order": 3,'
        ' "num_inner_mlps": 2, "activation_freq": 10, "layer_norm_epsilon": 1e-5}'
    )
    model = load_hyenadna(tmp_path)
    f = model.backbone.layers[1].mixer.filter_fn.implicit_filter
    assert f[1].freq is f[3].freq is f[5].freq
    torch.testing.assert_close(f[5].freq, sd["hyena.backbone.layers.1.mixer.filter_fn.implicit_filter.1.freq"])
    with torch.no_grad():
        out = model(IDS)
        logits = model.logits(IDS)
    ref = reference_forward(sd, IDS, "hyena.backbone.")
    assert (out.double() - ref).abs().max() < 1e-4
    # float32 model vs float64 reference through FFT long convolutions: ~1e-4 on logits of O(1)
    # (1.3e-4 seen on one machine); a wrong layout or weight tie gives errors of O(1)
    torch.testing.assert_close(logits, (ref @ sd["lm_head.weight"].double().T).float(), atol=5e-4, rtol=1e-3)


def test_lightning_ckpt_file_and_chunked_stream(tmp_path):
    torch.save({"state_dict": lightning_state_dict(), "epoch": 3}, tmp_path / "weights.ckpt")
    model = load_hyenadna(tmp_path)
    with torch.no_grad():
        full = model(IDS)
        a, s = model(IDS[:, :20], return_state=True)
        b, _ = model(IDS[:, 20:], s, return_state=True)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


def test_loader_errors(tmp_path):
    sd = lightning_state_dict()
    with pytest.raises(ValueError, match="d_model"):
        load_hyenadna(sd, HyenaDNAConfig(d_model=32, n_layer=2, d_inner=32, l_max=LMAX, filter_order=FO))
    with pytest.raises(FileNotFoundError):
        load_hyenadna(tmp_path / "missing.ckpt")
    bad = dict(sd)
    del bad["model.backbone.layers.0.mixer.out_proj.bias"]
    with pytest.raises(ValueError, match="missing"):
        load_hyenadna(bad)
    no_deltas = {k: v for k, v in sd.items() if not k.endswith("modulation.deltas")}
    with pytest.warns(UserWarning, match="derived buffer"):
        m = load_hyenadna(no_deltas)  # default window rebuilt (equal to HyenaDNA's init here)
    torch.testing.assert_close(m.backbone.layers[0].mixer.filter_fn.modulation.deltas,
                               sd["model.backbone.layers.0.mixer.filter_fn.modulation.deltas"])


def test_character_tokenizer_convention():
    tok = CharacterTokenizer()
    assert tok.encode("ACGTN") == [0, 7, 8, 9, 10, 11, 1]
    assert tok.encode("acgx", add_special_tokens=False) == [7, 8, 9, 6]
    assert tok.vocab_size == 12 and HyenaDNAConfig().padded_vocab == 16
    assert tok.decode([0, 7, 10, 1]) == "AT"
    ids, mask = tok.batch_encode(["AC", "ACGT"])
    assert ids.tolist() == [[4, 4, 0, 7, 8, 1], [0, 7, 8, 9, 10, 1]] and mask.sum().item() == 10
