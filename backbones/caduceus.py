"""Caduceus: a bidirectional, reverse-complement (RC) equivariant Mamba stack for DNA.

Paper: Schiff et al., "Caduceus: Bi-Directional Equivariant Long-Range DNA Sequence
Modeling" (2024). Two ideas, both built here from the existing Mamba mixer
(:mod:`.mamba`) and bidirectional wrapper (:mod:`.bidirectional`), not a new scan:

- **BiMamba** (mixer symbol ``"BM"``, :class:`CaduceusMixer`): a Mamba over the sequence
  plus a Mamba over the sequence reversed, outputs added; the two directions share
  ``in_proj`` and ``out_proj`` (most of the parameters) and keep their own conv, ``x_proj``,
  ``dt_proj``, ``A_log`` and ``D``. A stack of these with pattern ``"BM"`` is Caduceus-Ph
  (preset :func:`caduceus_ph`).
- **RC parameter sharing** (the "PS" variant, stack option
  ``BackboneConfig.rc_equivariant``): the hidden channels are split into two halves; the
  same layers (built at ``d_model // 2``) run on the first half and on the *reverse
  complement* of the second half, which is brought back afterwards. The RC of a hidden
  stream is ``h.flip(length, channels)`` (:func:`rc_hidden`), the convention of the paper's
  RCPS modules, so with the RC-equivariant embedding and LM head of
  :mod:`longstream.encoders.dna_rc` the whole model satisfies ``f(RC(x)) == RC(f(x))``.
  Because every op (norm, mixer, residual) acts on one half at a time, running the whole
  stack on the two halves (folded into the batch, :func:`rc_fold` / :func:`rc_unfold`) is
  the same function as wrapping every layer. Preset :func:`caduceus_ps`.

:func:`convert_caduceus_state_dict` maps the public checkpoints
(kuleshov-group/caduceus-{ph,ps}_seqlen-131k_d_model-256_n_layer-16, ``CaduceusForMaskedLM``
``model.safetensors``) onto these names. One upstream detail matters for the PS weights:
with ``fused_add_norm=True`` (how they were trained and how they run with ``mamba_ssm``)
the upstream RCPS block normalises the *second* channel half into the first slot, so every
layer swaps the two halves of the residual stream. Each layer then acts on the previous
layer's output flipped in length and channels; for an even number of layers this equals
our plain PS stack with every even-indexed layer conjugated by that flip (norm weight and
projection channels reversed, forward/reverse Mamba parameters exchanged), which the
converter does, so no quirk lives in the model. The test checks it against a literal
re-implementation of the upstream fused forward.

Axis legend: b batch, l length, d model width (w = d / 2 per RC half), e inner width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import State
from .bidirectional import Bidirectional, reverse_within_length
from .config import BackboneConfig
from .mamba import Mamba
from .registry import register_backbone, register_mixer

__all__ = [
    "CaduceusMixer",
    "CaduceusConversionError",
    "caduceus_backbone_config",
    "convert_caduceus_state_dict",
    "rc_fold",
    "rc_hidden",
    "rc_unfold",
]


# ----------------------------------------------------------------------------- BiMamba
@register_mixer("BM")
class CaduceusMixer(Bidirectional):
    """Caduceus BiMamba: ``fwd(x) + reverse(bwd(reverse(x)))``, in/out projections shared.

    ``mamba_kwargs`` go to both :class:`~longstream.backbones.mamba.Mamba` directions.
    Parameter names: ``fwd.*`` and ``bwd.*`` (``bwd.in_proj`` / ``bwd.out_proj`` are
    ``fwd``'s modules; checkpoints store them once, see ``tied_weights``).
    """

    is_causal: ClassVar[bool] = False
    supports_step: ClassVar[bool] = False
    supports_state: ClassVar[bool] = False
    test_kwargs: ClassVar[dict[str, Any]] = {"d_state": 4}

    def __init__(self, d_model: int, **mamba_kwargs: Any) -> None:
        fwd = Mamba(d_model, **mamba_kwargs)
        bwd = Mamba(d_model, **mamba_kwargs)
        bwd.in_proj = fwd.in_proj  # weight tie of Caduceus' ``bidirectional_weight_tie``
        bwd.out_proj = fwd.out_proj
        super().__init__(fwd, bwd, merge="add")

    def reference(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        """float64 reference from the two directions' sequential references (unpadded x)."""
        y_f, _ = self.fwd.reference(x)
        y_b, _ = self.bwd.reference(x.flip(1))  # type: ignore[union-attr]
        return y_f + y_b.flip(1), None


# ----------------------------------------------------------------------------- RC halves
def rc_hidden(h: Tensor, mask: Tensor | None = None) -> Tensor:
    """Reverse complement of a hidden stream h (b, l, c): length reversed (within each row's
    valid length when ``mask`` is given, right padding) and channels reversed."""
    return reverse_within_length(h, mask).flip(-1)


def rc_fold(x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """x (b, l, 2w) -> (2b, l, w): rows ``[:b]`` the first half, rows ``[b:]`` the RC of the second."""
    w = x.shape[-1] // 2
    folded = torch.cat([x[..., :w], rc_hidden(x[..., w:], mask)], dim=0)
    return folded, (None if mask is None else torch.cat([mask, mask], dim=0))


def rc_unfold(y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Inverse of :func:`rc_fold`: y (2b, l, w) -> (b, l, 2w)."""
    b = y.shape[0] // 2
    return torch.cat([y[:b], rc_hidden(y[b:], mask)], dim=-1)


# ----------------------------------------------------------------------------- presets
_SSM = {"d_state": 16, "d_conv": 4, "expand": 2}


@register_backbone
def caduceus_ph() -> BackboneConfig:
    """Caduceus-Ph (131k, d_model 256, 16 layers): BiMamba with tied projections, RMSNorm."""
    return BackboneConfig(d_model=256, n_layers=16, pattern="BM", mixer_kwargs={"BM": dict(_SSM)})


@register_backbone
def caduceus_ps() -> BackboneConfig:
    """Caduceus-PS (131k, 16 layers): RC-equivariant; hidden width 512 = 2 x 256 halves."""
    return BackboneConfig(
        d_model=512, n_layers=16, pattern="BM", mixer_kwargs={"BM": dict(_SSM)}, rc_equivariant=True
    )


@register_backbone
def test_caduceus() -> BackboneConfig:
    """Tiny Caduceus-Ph stack for tests."""
    return BackboneConfig(d_model=16, n_layers=2, pattern="BM", mixer_kwargs={"BM": {"d_state": 4}})


@register_backbone
def test_caduceus_ps() -> BackboneConfig:
    """Tiny RC-equivariant Caduceus-PS stack for tests (two halves of 16 channels)."""
    return BackboneConfig(
        d_model=32, n_layers=2, pattern="BM", mixer_kwargs={"BM": {"d_state": 4}}, rc_equivariant=True
    )


# ----------------------------------------------------------------------------- conversion
class CaduceusConversionError(ValueError):
    """An upstream Caduceus checkpoint that does not fit (message names the key or field)."""


_PREFIXES = ("caduceus.backbone.", "backbone.")
_MAMBA_OWN = ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D")
_MAMBA_SHARED = ("in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias")


def caduceus_backbone_config(hf: Mapping[str, Any]) -> BackboneConfig:
    """Our :class:`BackboneConfig` for an upstream ``CaduceusConfig`` dict (``config.json``).

    PS (``rcps``) doubles the width: the backbone maps ``2 * d_model`` channels.
    """
    if not hf.get("bidirectional", True):
        raise CaduceusConversionError("config.json has bidirectional=false; only bidirectional Caduceus converts")
    if (hf.get("bidirectional_strategy") or "add") != "add":
        raise CaduceusConversionError(
            f"config.json bidirectional_strategy={hf.get('bidirectional_strategy')!r}; only 'add' is supported"
        )
    if not hf.get("bidirectional_weight_tie", True):
        raise CaduceusConversionError("config.json bidirectional_weight_tie=false; CaduceusMixer always ties")
    if not hf.get("rms_norm", True):
        raise CaduceusConversionError("config.json rms_norm=false (LayerNorm); only RMSNorm Caduceus converts")
    ssm = dict(hf.get("ssm_cfg") or {})
    known = ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
             "conv_bias", "bias")  # fmt: skip
    kw = {k: ssm[k] for k in known if k in ssm}
    d = int(hf["d_model"])
    rc = bool(hf.get("rcps", False))
    return BackboneConfig(
        d_model=2 * d if rc else d, n_layers=int(hf["n_layer"]), pattern="BM", mixer_kwargs={"BM": kw},
        norm_eps=float(hf.get("norm_epsilon", 1e-5)), residual_in_fp32=True, rc_equivariant=rc,
    )  # fmt: skip


def _strip(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES:
            if k.startswith(p):
                out[k[len(p):]] = v
                break
    return out


def _conjugate_layer(sd: dict[str, Tensor], i: int) -> None:
    """Replace layer i by its conjugate ``Q b Q`` (Q = flip of length and channels), in place."""
    p = f"layers.{i}."
    sd[p + "norm.weight"] = sd[p + "norm.weight"].flip(0)
    sd[p + "mixer.fwd.in_proj.weight"] = sd[p + "mixer.fwd.in_proj.weight"].flip(1)
    sd[p + "mixer.fwd.out_proj.weight"] = sd[p + "mixer.fwd.out_proj.weight"].flip(0)
    if p + "mixer.fwd.out_proj.bias" in sd:
        sd[p + "mixer.fwd.out_proj.bias"] = sd[p + "mixer.fwd.out_proj.bias"].flip(0)
    for name in _MAMBA_SHARED:
        if p + "mixer.fwd." + name in sd:
            sd[p + "mixer.bwd." + name] = sd[p + "mixer.fwd." + name]
    for name in _MAMBA_OWN:  # a reversed input swaps the roles of the two directions
        f, r = p + "mixer.fwd." + name, p + "mixer.bwd." + name
        if f in sd:
            sd[f], sd[r] = sd[r], sd[f]


def convert_caduceus_state_dict(
    sd: Mapping[str, Tensor], hf: Mapping[str, Any]
) -> tuple[BackboneConfig, dict[str, Tensor], Tensor]:
    """``(backbone config, backbone state dict, embedding table)`` from an upstream Caduceus
    state dict (``CaduceusForMaskedLM`` / ``Caduceus`` keys) and its ``config.json`` dict.

    The embedding table is (vocab_rows, d_model) for Ph and (vocab_rows, d_model) producing
    ``2 * d_model`` RC channels for PS. A stored ``lm_head`` must equal the embedding
    (upstream ties them); tied duplicates absent from the file are re-tied.
    """
    cfg = caduceus_backbone_config(hf)
    rc = cfg.rc_equivariant
    raw = _strip(sd)
    heads = [sd[k] for k in ("lm_head.weight", "lm_head.lm_head.weight") if k in sd]
    emb_key = "embeddings.word_embeddings.embedding.weight" if rc else "embeddings.word_embeddings.weight"
    if emb_key not in raw:
        if not heads:
            raise CaduceusConversionError(f"no embedding ({emb_key}) and no lm_head in the checkpoint")
        raw[emb_key] = heads[0]
    emb = raw.pop(emb_key)
    for h in heads:
        if h.shape != emb.shape or not torch.equal(h, emb):
            raise CaduceusConversionError("the checkpoint's lm_head differs from its embedding; Caduceus ties them")
    for k in [k for k in raw if k.endswith("complement_map")]:
        raw.pop(k)  # recorded in our config instead
    out: dict[str, Tensor] = {}
    unknown = []
    for k, v in raw.items():
        k2 = k.replace(".mixer.submodule.", ".mixer.").replace(".mamba_fwd.", ".fwd.").replace(".mamba_rev.", ".bwd.")
        k2 = k2.replace(".norm.submodule.", ".norm.").replace("norm_f.submodule.", "norm_f.")
        if not (k2.startswith("layers.") or k2.startswith("norm_f.")):
            unknown.append(k)
            continue
        out[k2] = v
    if unknown:
        raise CaduceusConversionError(f"unexpected key(s) in the Caduceus checkpoint: {sorted(unknown)[:5]}")
    for i in range(cfg.n_layers):
        for name in _MAMBA_SHARED:
            f, r = f"layers.{i}.mixer.fwd.{name}", f"layers.{i}.mixer.bwd.{name}"
            if f in out and r in out and not torch.equal(out[f], out[r]):
                raise CaduceusConversionError(f"{r} differs from {f}; Caduceus ties the projections")
            if f in out:
                out[r] = out[f]
    if rc and hf.get("fused_add_norm", True):
        if cfg.n_layers % 2:
            raise CaduceusConversionError(
                f"an RCPS checkpoint with fused_add_norm and an odd n_layer ({cfg.n_layers}) swaps the RC halves "
                "at the output; only even n_layer converts"
            )
        for i in range(0, cfg.n_layers, 2):
            _conjugate_layer(out, i)
    return cfg, out, emb
