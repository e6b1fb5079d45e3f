"""Conformance of every backbone to the Backbone protocol, generated from the registry.

Subjects are every registered ``test_*`` preset (built as a :class:`SequenceBackbone`)
and every registered mixer symbol (built alone as ``cls(16, **cls.test_kwargs)``).
A mixer that needs non-default arguments to be tiny sets a ``test_kwargs`` class
attribute. Each invariant is checked only when the capability flags claim it:

- shapes, finite gradients reaching every parameter (always);
- chunked forward with state passing == one full forward (``supports_state``);
- ``step`` over a sequence == ``forward``, also after a forward prefill (``supports_step``);
- no look-ahead: d y_t / d x_{>t} == 0 (``is_causal``); non-causal ones do look ahead;
- right-padded batch == unpadded runs, and the state continues each row correctly;
- save/load round trip (safetensors + config.json);
- a mixer's float64 reference == its float32 fast path (class attribute ``reference`` or
  module function ``<classname lower>_reference``, called as ``ref(layer, x) -> y or (y, ...)``).
  Which mixers have one is an explicit table (``FLOAT64_REFERENCE`` / ``NO_FLOAT64_REFERENCE``):
  a new mixer must be added to one of them, and a listed reference that disappears fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
from torch.utils._pytree import tree_flatten

from longstream.backbones import (
    BackboneConfig,
    SequenceBackbone,
    backbone_config,
    detach_state,
    get_mixer,
    list_backbones,
    list_mixers,
    load_checkpoint,
    save_checkpoint,
    state_nbytes,
    state_to,
)
from longstream.backbones.base import Backbone

D_MIXER = 16
B, L = 2, 11
ATOL, RTOL = 2e-5, 1e-4

SUBJECTS = [("preset", n) for n in list_backbones("test_")] + [("mixer", s) for s in list_mixers()]
IDS = [f"{k}:{n}" for k, n in SUBJECTS]


def build(kind: str, name: str) -> Backbone:
    """A tiny backbone for a subject (a preset naming an unregistered mixer fails: no skip)."""
    if kind == "preset":
        return SequenceBackbone(backbone_config(name))
    cls = get_mixer(name)
    kw = dict(getattr(cls, "test_kwargs", {}))
    try:
        return cls(D_MIXER, **kw)
    except Exception as e:  # pragma: no cover - a message for mixer authors
        raise AssertionError(
            f"mixer {name!r} cannot be built as {cls.__name__}({D_MIXER}, **{kw}); "
            "set a `test_kwargs` class attribute with tiny arguments"
        ) from e


def close(a: torch.Tensor, b: torch.Tensor, msg: str = "", atol: float = ATOL, rtol: float = RTOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


def reference_of(m: Backbone) -> Callable | None:
    ref = getattr(type(m), "reference", None)
    if ref is None:
        mod = sys.modules.get(type(m).__module__)
        ref = getattr(mod, f"{type(m).__name__.lower()}_reference", None)
    return ref


@pytest.fixture(params=SUBJECTS, ids=IDS)
def subject(request) -> tuple[str, str, Backbone]:
    kind, name = request.param
    torch.manual_seed(0)
    return kind, name, build(kind, name)


def inputs(m: Backbone, length: int = L, batch: int = B) -> torch.Tensor:
    return torch.randn(batch, length, m.d_model)


# ---------------------------------------------------------------------------- tests
def test_test_presets_are_tiny():
    for name in list_backbones("test_"):
        cfg = backbone_config(name)
        assert isinstance(cfg, BackboneConfig)
        assert cfg.d_model <= 32 and cfg.n_layers <= 2, f"{name} must stay tiny (d_model <= 32, 2 layers)"


def test_every_mixer_symbol_has_a_test_preset():
    from longstream.backbones.stack import layer_symbols

    covered = set()
    for name in list_backbones("test_"):
        covered |= set(layer_symbols(backbone_config(name)))  # an unregistered symbol fails here
    missing = sorted(set(list_mixers()) - covered)
    assert not missing, f"register a tiny test_* preset (d_model <= 32, 2 layers) using mixer(s) {missing}"


def test_shapes_gradients_and_flags(subject):
    kind, name, m = subject
    x = inputs(m).requires_grad_(True)
    y, st = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
    # capability flags are self-consistent
    if m.supports_step or m.supports_state:
        assert m.is_causal, f"{name}: a streamable backbone must be causal"
    if not m.supports_state:
        assert st is None, f"{name}: a non-streamable backbone returns state None"
    for leaf in tree_flatten(st)[0]:
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            assert leaf.dtype == torch.float32, f"{name}: state tensors must be float32, got {leaf.dtype}"


@torch.no_grad()
def test_chunked_forward_equals_full(subject):
    kind, name, m = subject
    if not m.supports_state:
        pytest.skip("not streamable")
    x = inputs(m, 14)
    y_full, _ = m(x)
    ys, st = [], None
    for a, b in [(0, 3), (3, 4), (4, 10), (10, 14)]:
        y, st = m(x[:, a:b], st)
        ys.append(y)
    close(torch.cat(ys, 1), y_full, f"{name}: chunked forward != full forward")


@torch.no_grad()
def test_step_equals_forward(subject):
    kind, name, m = subject
    if not m.supports_step:
        pytest.skip("no step")
    x = inputs(m)
    y_full, _ = m(x)
    st = m.init_state(B, device=x.device, dtype=x.dtype)
    ys = []
    for t in range(L):
        y_t, st = m.step(x[:, t], st)
        assert y_t.shape == (B, m.d_model)
        ys.append(y_t)
    close(torch.stack(ys, 1), y_full, f"{name}: step over the sequence != forward")
    if m.supports_state:  # prefill with forward, continue with step
        y_pre, st = m(x[:, :5])
        ys = [y_pre]
        for t in range(5, L):
            y_t, st = m.step(x[:, t], st)
            ys.append(y_t[:, None])
        close(torch.cat(ys, 1), y_full, f"{name}: forward prefill + step != forward")


def test_causality(subject):
    kind, name, m = subject
    x = inputs(m).requires_grad_(True)
    y, _ = m(x)
    t = 4
    (g,) = torch.autograd.grad(y[:, t].sum(), x)
    scale = g.abs().max().item()
    future = g[:, t + 1 :].abs().max().item()
    if m.is_causal:
        assert future <= 1e-6 * max(scale, 1.0), f"{name}: output at t={t} depends on later inputs ({future:.2e})"
    else:
        assert future > 0, f"{name}: flagged non-causal but never looks ahead"


@torch.no_grad()
def test_padded_batch_equals_unpadded(subject):
    kind, name, m = subject
    lengths = [L, 6]
    x = inputs(m)
    x_pad = x.clone()
    x_pad[1, lengths[1] :] = 5 * torch.randn(L - lengths[1], m.d_model)  # garbage in the padding
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # (b, l)
    y, st = m(x_pad, mask=mask)
    x2 = inputs(m, 4)
    y2 = m(x2, st)[0] if m.supports_state else None
    for b, n in enumerate(lengths):
        y_b, st_b = m(x[b : b + 1, :n])
        close(y[b, :n], y_b[0], f"{name}: padded row {b} differs from its unpadded run")
        if m.supports_state:
            y2_b, _ = m(x2[b : b + 1], st_b)
            close(y2[b], y2_b[0], f"{name}: state after a padded row {b} does not continue it")
    if m.supports_step:  # the padded state also continues with step
        y_t, _ = m.step(x2[:, 0], st)
        close(y_t, y2[:, 0], f"{name}: step from a padded-batch state != forward")


@torch.no_grad()
def test_save_load_roundtrip(subject, tmp_path):
    kind, name, m = subject
    x = inputs(m)
    y, _ = m(x)
    if kind == "preset":
        m.save_pretrained(tmp_path / "ckpt")
        m2 = SequenceBackbone.from_pretrained(tmp_path / "ckpt")
        assert m2.cfg == m.cfg
    else:
        save_checkpoint(tmp_path / "ckpt", m.state_dict(), {"symbol": name})
        config, tensors = load_checkpoint(tmp_path / "ckpt")
        torch.manual_seed(1)  # a different init, overwritten by the load
        m2 = build(kind, config["symbol"])
        m2.load_state_dict(tensors)
    assert torch.equal(m2(x)[0], y), f"{name}: outputs changed after save/load"


#: Mixers whose float32 fast path is tested against a float64 sequential reference.
FLOAT64_REFERENCE = ["A", "Abi", "BM", "C", "H", "HB", "M", "M2", "S", "VM"]
#: Mixers without one, and why.
NO_FLOAT64_REFERENCE = {
    "G": "position-wise gated MLP: no scan or long convolution, so no fast path to check",
}


def test_every_mixer_is_listed_for_the_float64_reference():
    mixers = set(list_mixers())
    listed = set(FLOAT64_REFERENCE) | set(NO_FLOAT64_REFERENCE)
    assert not set(FLOAT64_REFERENCE) & set(NO_FLOAT64_REFERENCE)
    assert not mixers - listed, (
        f"mixers {sorted(mixers - listed)} are in neither FLOAT64_REFERENCE nor NO_FLOAT64_REFERENCE "
        "(tests/test_backbone_conformance.py): give the mixer a float64 reference and list it, or say why not"
    )
    assert not listed - mixers, f"listed mixers no longer registered: {sorted(listed - mixers)}"
    for sym in NO_FLOAT64_REFERENCE:
        assert reference_of(build("mixer", sym)) is None, f"{sym} has a float64 reference now: list it in FLOAT64_REFERENCE"


@pytest.mark.parametrize("symbol", FLOAT64_REFERENCE)
@torch.no_grad()
def test_fast_path_matches_float64_reference(symbol):
    torch.manual_seed(0)
    m = build("mixer", symbol)
    ref = reference_of(m)
    assert ref is not None, f"{symbol}: no float64 reference (class attribute `reference` or `<class>_reference`)"
    x = inputs(m)
    y, _ = m(x)
    out = ref(m, x.double())
    y_ref = out[0] if isinstance(out, tuple) else out
    assert y_ref.dtype == torch.float64, f"{symbol}: the reference must compute in float64"
    close(y.double(), y_ref, f"{symbol}: fast path != float64 reference", atol=1e-4, rtol=1e-3)


@torch.no_grad()
def test_state_is_not_mutated_in_place(subject):
    kind, name, m = subject
    if not m.supports_state:
        pytest.skip("not streamable")
    x = inputs(m)
    _, st = m(x[:, :6])
    snapshot = [t.clone() for t in tree_flatten(st)[0] if isinstance(t, torch.Tensor)]
    y_a, _ = m(x[:, 6:], st)
    if m.supports_step:
        m.step(x[:, 6], st)
    y_b, _ = m(x[:, 6:], st)  # the same state reused: a branch of the stream
    close(y_a, y_b, f"{name}: continuing twice from one state differs (state mutated in place?)")
    after = [t for t in tree_flatten(st)[0] if isinstance(t, torch.Tensor)]
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after)), f"{name}: forward/step mutated its input state"


@torch.no_grad()
def test_state_helpers_apply(subject):
    kind, name, m = subject
    if not m.supports_state:
        pytest.skip("not streamable")
    x = inputs(m)
    _, st = m(x[:, :5])
    st2 = state_to(detach_state(st), device="cpu", dtype=torch.float32)
    assert state_nbytes(st2) == state_nbytes(st)
    close(m(x[:, 5:], st2)[0], m(x[:, 5:], st)[0], f"{name}: state_to/detach_state changed the state")
    empty = m.init_state(B, device="cpu", dtype=torch.float32)
    close(m(x, empty)[0], m(x)[0], f"{name}: init_state() differs from state=None")


def test_bfloat16_weights_run_close_to_float32(subject):
    """Casting a whole backbone to bfloat16 runs, keeps recurrent state in float32, and
    stays within a few percent of the float32 output."""
    _, _, m = subject
    x = inputs(m)
    with torch.no_grad():
        y32, _ = m(x)
        mb = m.to(torch.bfloat16)
        yb, st = mb(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    rel = ((yb.float() - y32).abs().max() / y32.abs().max().clamp_min(1e-6)).item()
    assert rel < 0.05, f"bf16 relative error {rel:.3f}"
    float_leaves = [t for t in torch.utils._pytree.tree_flatten(st)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    assert all(t.dtype == torch.float32 for t in float_leaves), {t.dtype for t in float_leaves}
