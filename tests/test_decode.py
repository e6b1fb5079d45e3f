"""Decode fast paths: the compiled one-call Mamba step, the one-row RMSNorm and small GEMV
against the pure-PyTorch step and the float64 reference; low-precision decode weights
(``LanguageModel.quantize``) within a bounded logit error, with state_dict unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longstream.backbones.base import RMSNorm
from longstream.backbones.config import BackboneConfig
from longstream.backbones.lm import LanguageModel
from longstream.backbones.mamba import Mamba
from longstream.backbones.ops import cpu_kernels

torch.set_num_threads(1)

needs_kernels = pytest.mark.skipif(not cpu_kernels.has_op("mamba_step"), reason="compiled CPU kernels unavailable")


def close(a, b, atol=2e-5, rtol=1e-4):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)


def _cpu_flags() -> str:
    try:
        return open("/proc/cpuinfo").read()
    except OSError:
        return ""


HAS_AVX512 = all(f" {f}" in _cpu_flags() for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq"))
HAS_AVX512_BF16 = HAS_AVX512 and " avx512_bf16" in _cpu_flags()


def bf16_x(x, isa: int):
    """The activations the bf16 GEMV multiplies: rounded to bf16 on the AVX512-BF16 path (isa 2 on a
    CPU with it), float32 otherwise."""
    return x.to(torch.bfloat16).float() if isa == 2 and HAS_AVX512_BF16 else x


@needs_kernels
@pytest.mark.parametrize("d_state,bias", [(8, False), (16, True)])
def test_fused_step_equals_torch_step_and_reference(d_state, bias):
    torch.manual_seed(0)
    m = Mamba(24, d_state=d_state, bias=bias).eval()  # e = 48, n % 8 == 0: the fused path applies
    x = torch.randn(3, 9, 24)
    st0 = {k: torch.randn_like(v) * 0.5 for k, v in m.init_state(3).items()}
    with torch.no_grad():
        assert m._step_fused(x[:, 0], st0)
        y_ref, st_ref = m.reference(x, st0)  # float64 sequential reference
        snapshot = {k: v.clone() for k, v in st0.items()}
        st_f, st_t, ys_f, ys_t = st0, st0, [], []
        for t in range(x.shape[1]):
            y_f, st_f = m.step(x[:, t], st_f)
            ys_f.append(y_f)
        m._step_fused = lambda *a: False  # the pure-PyTorch step
        for t in range(x.shape[1]):
            y_t, st_t = m.step(x[:, t], st_t)
            ys_t.append(y_t)
    assert all(torch.equal(snapshot[k], st0[k]) for k in st0), "fused step mutated its input state"
    close(torch.stack(ys_f, 1), torch.stack(ys_t, 1))
    close(torch.stack(ys_f, 1), y_ref)
    for k in st_ref:
        close(st_f[k], st_ref[k])


@needs_kernels
def test_fused_step_not_used_with_autograd():
    m = Mamba(16, d_state=8)
    x = torch.randn(2, 16, requires_grad=True)
    st = m.init_state(2)
    assert not m._step_fused(x, st)
    y, _ = m.step(x, st)
    y.sum().backward()
    assert m.in_proj.weight.grad is not None


@needs_kernels
def test_rows_kernels_match_torch():
    torch.manual_seed(0)
    norm = RMSNorm(40)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 40) * 3
    with torch.no_grad():
        y = norm(x)  # compiled one-row path
        ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    close(y, ref)
    w, b = torch.randn(13, 40), torch.randn(13)
    close(cpu_kernels.ops().linear_rows(x, w, b), F.linear(x, w, b), atol=1e-4)
    close(cpu_kernels.ops().linear_rows(x, w, w.new_empty(0)), F.linear(x, w), atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("mode,tol", [("int8", 0.15), ("bf16", 0.05)])
def test_quantized_decode_logits_close_and_state_dict_unchanged(mode, tol):
    torch.manual_seed(0)
    cfg = BackboneConfig(d_model=64, n_layers=2, pattern="M", mixer_kwargs={"M": {"d_state": 8}})
    lm = LanguageModel(100, cfg).eval()
    keys = {k: v.clone() for k, v in lm.state_dict().items()}
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        _, st = lm.backbone(lm.embedding(ids), None)
        ref, st_ref = lm.step(ids[:, -1], st)
        lm.quantize(mode)
        lg, st_q = lm.step(ids[:, -1], st)
        out = lm.generate(ids, 4)
        lm.quantize(None)
        back, _ = lm.step(ids[:, -1], st)
    assert out.shape == (2, 11)
    rel = float((lg - ref).norm() / ref.norm())
    assert 0 < rel < tol, f"{mode} relative logit error {rel}"
    assert st_q[0]["ssm"].dtype == torch.float32  # the SSM state stays float32
    torch.testing.assert_close(back, ref)
    assert set(lm.state_dict()) == set(keys)
    assert all(torch.equal(lm.state_dict()[k], v) for k, v in keys.items())
    with pytest.raises(ValueError, match="quantize mode"):
        lm.quantize("int4")


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_decode_linear_matches_f_linear(threads):
    """The pooled GEMV (float32 / bf16 / int8 weights) against F.linear on the widened weights,
    at one and two threads and above the 1 MB threading threshold."""
    torch.manual_seed(0)
    ops = cpu_kernels.ops()
    e = torch.empty(0)
    torch.set_num_threads(threads)
    try:
        for o, i in ((13, 40), (700, 512)):  # 80 KB (caller only) and 1.4 MB (pooled)
            x, w, b = torch.randn(2, i), torch.randn(o, i), torch.randn(o)
            close(ops.decode_linear(x, w, e, b), F.linear(x, w, b), atol=1e-3)
            wb = w.to(torch.bfloat16)
            close(ops.decode_linear(x, wb, e, e), F.linear(bf16_x(x, ops.decode_isa(0)), wb.float()), atol=1e-3)
            q = torch.randint(-127, 128, (o, i), dtype=torch.int8)
            s = torch.rand(o) * 0.01
            close(ops.decode_linear(x, q, s, b), F.linear(x, q.float() * s[:, None], b), atol=1e-3)
        with pytest.raises(RuntimeError, match="scale"):
            ops.decode_linear(x, q, e, e)
    finally:
        torch.set_num_threads(1)


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_lm_fused_step_equals_backbone_step(threads, monkeypatch):
    """LanguageModel.step's fused loop gives the generic backbone.step's logits and states."""
    import longstream.backbones.lm as lm_mod

    torch.manual_seed(0)
    cfg = BackboneConfig(d_model=64, n_layers=3, pattern="M", mixer_kwargs={"M": {"d_state": 8}})
    lm = LanguageModel(100, cfg).eval()
    ids = torch.randint(0, 100, (2, 5))
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            _, st = lm.backbone(lm.embedding(ids), None)
            h = lm.embedding(ids[:, -1])
            assert lm_mod.fused_step(lm, h, st) is not None
            st_f, st_g, lf, lg = st, st, [], []
            for t in range(4):
                y, st_f = lm.step(ids[:, t], st_f)
                lf.append(y)
            monkeypatch.setattr(lm_mod, "fused_step", lambda *a: None)
            for t in range(4):
                y, st_g = lm.step(ids[:, t], st_g)
                lg.append(y)
    finally:
        torch.set_num_threads(1)
    close(torch.stack(lf), torch.stack(lg), atol=1e-4)
    for a, b in zip(st_f, st_g):
        for k in a:
            close(a[k], b[k], atol=1e-5)


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_lowp_linear_kernel_and_fallback_agree(mode, monkeypatch):
    """LowpLinear through the compiled GEMV and through the PyTorch fallback (fbgemm int8 /
    bf16 F.linear) stay within the rounding of the mode of the float32 product."""
    from longstream.backbones.lowp import LowpLinear

    torch.manual_seed(0)
    w, b, x = torch.randn(96, 64) * 0.1, torch.randn(96), torch.randn(3, 64)
    ref = F.linear(x, w, b)
    # the kernel keeps float32 activations; fbgemm's int8 path also quantises them (per tensor)
    tol = {(True, "int8"): 0.01, (False, "int8"): 0.1, (True, "bf16"): 0.01, (False, "bf16"): 0.01}
    for use in ((True, False) if cpu_kernels.has_op("decode_linear") else (False,)):
        monkeypatch.setitem(cpu_kernels._STATE, "op:decode_linear", use)
        y = LowpLinear(w, b, mode)(x)
        rel = float((y - ref).norm() / ref.norm())
        assert 0 < rel < tol[use, mode], (mode, use, rel)


@needs_kernels
@pytest.mark.parametrize("mode", [None, "bf16", "int8"])
def test_lm_step_whole_stack_matches_layer_loop_and_thread_count(mode, monkeypatch):
    """The one-call ``lm_step`` (all layers on the decode pool, the SSM step split by channel blocks)
    gives the per-layer loop of compiled calls' logits and states, and bit-identical results at one
    and two threads (its partial sums are added in a fixed order). d_inner 80: a partial block."""
    import longstream.backbones.lm as lm_mod

    assert cpu_kernels.has_op("lm_step")
    torch.manual_seed(0)
    cfg = BackboneConfig(d_model=40, n_layers=3, pattern="M", mixer_kwargs={"M": {"d_state": 16}})
    lm = LanguageModel(120, cfg).eval()
    if mode:
        lm.quantize(mode)
    ids = torch.randint(0, 120, (2, 6))

    def run(lm_step: bool, threads: int):
        monkeypatch.setitem(cpu_kernels._STATE, "op:lm_step", lm_step)
        torch.set_num_threads(threads)
        calls = []
        orig = lm_mod._lm_step_tensors_cached
        monkeypatch.setattr(lm_mod, "_lm_step_tensors_cached", lambda *a: calls.append(1) or orig(*a))
        try:
            out = []
            with torch.no_grad():
                _, st = lm.backbone(lm.embedding(ids[:, :2]), None)  # a prefilled state
                for t in range(2, ids.shape[1]):
                    y, st = lm.step(ids[:, t], st)
                    out.append(y)
        finally:
            torch.set_num_threads(1)
            monkeypatch.setattr(lm_mod, "_lm_step_tensors_cached", orig)
        assert bool(calls) == lm_step  # the path under test ran
        return torch.stack(out), st

    (y1, s1), (y2, s2), (yl, sl) = run(True, 1), run(True, 2), run(False, 1)
    assert torch.equal(y1, y2)
    for a, b in zip(s1, s2):
        assert torch.equal(a["ssm"], b["ssm"]) and torch.equal(a["conv"], b["conv"])
    close(y1, yl, atol=1e-5)
    for a, b in zip(s1, sl):
        close(a["ssm"], b["ssm"], atol=1e-5)
        close(a["conv"], b["conv"], atol=1e-6)  # the next layers' inputs: rounding apart (AVX2 sums in another order)
    assert y1.abs().max() > 0.05  # real logits, not a zero output


@needs_kernels
def test_lm_step_tensor_cache_follows_parameter_changes():
    """The cached lm_step argument list is rebuilt when a weight changes in place, is replaced, or the
    model is quantized: each time the one-call step equals the per-layer loop of the changed model."""
    torch.manual_seed(0)
    cfg = BackboneConfig(d_model=32, n_layers=2, pattern="M", mixer_kwargs={"M": {"d_state": 8}})
    lm = LanguageModel(50, cfg).eval()
    tok = torch.tensor([3, 7])

    def both():
        with torch.no_grad():
            st = lm.init_state(2)
            y, _ = lm.step(tok, st)
            cpu_kernels._STATE["op:lm_step"] = False
            try:
                yl, _ = lm.step(tok, st)
            finally:
                cpu_kernels._STATE["op:lm_step"] = True
        close(y, yl, atol=1e-4)  # the two sum x_proj / dt_proj in different orders
        return y

    y0 = both()
    m = lm.backbone.layers[0].mixer
    with torch.no_grad():
        m.x_proj.weight.copy_(torch.randn_like(m.x_proj.weight))  # in place: same storage, new version
    y1 = both()
    m.dt_proj.weight = torch.nn.Parameter(torch.randn_like(m.dt_proj.weight))  # replaced
    y2 = both()
    lm.quantize("int8")
    y3 = both()
    # each change moves the logits far beyond the tolerance, so a stale argument list would fail above
    assert (y0 - y1).abs().max() > 1e-2 and (y1 - y2).abs().max() > 1e-2 and (y2 - y3).abs().max() > 1e-3


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_decode_gemv_avx512_and_avx2_agree(threads):
    """The AVX-512 GEMV (the default where the CPU has it) and the AVX2 one give F.linear's result for
    float32 / bf16 / int8 weights, with row counts that leave a partial block of 4 and widths that
    leave a partial 16-lane register (i = 8, 24, 40) or none (768)."""
    ops = cpu_kernels.ops()
    has512 = HAS_AVX512
    torch.manual_seed(0)
    e = torch.empty(0)
    prev = ops.decode_isa(0)
    torch.set_num_threads(threads)
    try:
        assert ops.decode_isa(2) == (2 if has512 else 1)
        assert ops.decode_isa(1) == 1
        for o, i, b in ((5, 8, 1), (13, 24, 3), (301, 40, 2), (1402, 768, 1)):  # the last pooled (4.3 MB)
            x, w, bias = torch.randn(b, i), torch.randn(o, i), torch.randn(o)
            wb = w.to(torch.bfloat16)
            q = torch.randint(-127, 128, (o, i), dtype=torch.int8)
            s = torch.rand(o) * 0.01
            refs = [((w, e, bias), lambda isa, x=x, w=w, bias=bias: F.linear(x, w, bias)),
                    ((wb, e, e), lambda isa, x=x, wb=wb: F.linear(bf16_x(x, isa), wb.float())),
                    ((q, s, bias), lambda isa, x=x, q=q, s=s, bias=bias: F.linear(x, q.float() * s[:, None], bias))]
            for args, ref in refs:
                for isa in (1, 2):
                    ops.decode_isa(isa)
                    close(ops.decode_linear(x, *args), ref(isa), atol=2e-4 * i ** 0.5)
                assert ref(1).abs().max() > 0.1
    finally:
        ops.decode_isa(prev)
        torch.set_num_threads(1)


@needs_kernels
def test_lm_step_width_not_multiple_of_8_falls_back():
    """d_model 36: the compiled GEMVs do not apply; LanguageModel.step takes the generic path
    (it used to raise from decode_linear) and matches the backbone's forward."""
    torch.manual_seed(0)
    cfg = BackboneConfig(d_model=36, n_layers=2, pattern="M", mixer_kwargs={"M": {"d_state": 8}})
    lm = LanguageModel(50, cfg).eval()
    ids = torch.randint(0, 50, (1, 5))
    with torch.no_grad():
        full, _ = lm(ids)
        _, st = lm.backbone(lm.embedding(ids[:, :4]), None)
        y, _ = lm.step(ids[:, 4], st)
    close(y, full[:, 4], atol=1e-4)
