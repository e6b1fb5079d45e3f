"""Convert the released hustvl/Vim checkpoints (``hustvl/Vim-{tiny,small,base}-midclstok``).

Upstream layout (``vim/models_mamba.py`` ``VisionMamba`` over the ``mamba_ssm`` fork in
``mamba-1p1p1/``; pinned in ``tests/fixtures/upstream_keys/hustvl_vim.json``): a ``.pth``
training checkpoint ``{"model": state_dict, "args": Namespace, "optimizer": ..., ...}`` whose
state dict holds ``patch_embed.proj.{weight,bias}``, ``cls_token`` (1, 1, d), ``pos_embed``
(1, n + 1, d) with the class token's row at ``n // 2``, ``layers.{i}.norm.weight`` (RMSNorm),
``layers.{i}.mixer.{in_proj, conv1d, conv1d_b, x_proj, x_proj_b, dt_proj, dt_proj_b, A_log,
A_b_log, D, D_b, out_proj}`` (bimamba v2), ``norm_f.weight`` and ``head.{weight,bias}``.

Our :class:`~longstream.pipelines.vision.vim.VisionMamba` keeps the mixer names, so the
conversion is a prefix change (``embed.`` for the tokeniser, ``backbone.`` for the stack) plus
reading the architecture off the tensor shapes. Upstream's block computes
``residual = residual + mixer_out; h = norm(residual)`` ("add -> norm -> mixer"), which is the
same function as our pre-norm ``h + mixer(norm(h))`` followed by ``norm_f``; the mixers' outputs
are averaged (``if_divide_out``), our ``divide_out=True``. Checkpoint options our model does
not implement (LayerNorm blocks, RoPE, two class tokens, layer scale, bimamba v1 / none) are
refused with a :class:`VimConversionError` naming the key.

Axis legend: d model width, e inner width, n state size / patches, r dt rank, k conv width.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from longstream.encoders.image import square_grid

__all__ = ["VimConversionError", "convert_vim_state_dict", "is_vim_layout", "read_vim_checkpoint",
           "VIM_REPOS", "vim_weight_file"]

#: The released checkpoints: repo -> {weight file: (variant, ImageNet-1k top-1)}.
VIM_REPOS: dict[str, dict[str, tuple[str, float]]] = {
    "hustvl/Vim-tiny-midclstok": {"vim_t_midclstok_76p1acc.pth": ("vim_tiny_patch16_224", 76.1),
                                  "vim_t_midclstok_ft_78p3acc.pth": ("vim_tiny_patch16_stride8_224", 78.3)},
    "hustvl/Vim-small-midclstok": {"vim_s_midclstok_80p5acc.pth": ("vim_small_patch16_224", 80.5),
                                   "vim_s_midclstok_ft_81p6acc.pth": ("vim_small_patch16_stride8_224", 81.6)},
    "hustvl/Vim-base-midclstok": {"vim_b_midclstok_81p9acc.pth": ("vim_base_patch16_224", 81.9)},
}  # fmt: skip

_MIXER = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "conv1d_b.weight", "conv1d_b.bias",
          "x_proj.weight", "x_proj_b.weight", "dt_proj.weight", "dt_proj.bias", "dt_proj_b.weight", "dt_proj_b.bias",
          "A_log", "A_b_log", "D", "D_b", "out_proj.weight", "out_proj.bias")  # fmt: skip
_LAYER = re.compile(r"^layers\.(\d+)\.(norm\.weight|norm\.bias|mixer\.(.+))$")
_TOP = {"patch_embed.proj.weight": "embed.patch_embed.proj.weight", "patch_embed.proj.bias": "embed.patch_embed.proj.bias",
        "cls_token": "embed.cls_token", "pos_embed": "embed.pos_embed", "norm_f.weight": "backbone.norm_f.weight",
        "head.weight": "head.weight", "head.bias": "head.bias"}  # fmt: skip
_UNSUPPORTED = {
    "norm.bias": "LayerNorm blocks (rms_norm=False)",
    "norm_f.bias": "a LayerNorm final norm (rms_norm=False)",
    "cls_token_head": "two class tokens (use_double_cls_token)",
    "rope.": "rotary position embeddings (if_rope)",
    "mixer.gamma": "layer scale (init_layer_scale)",
}


class VimConversionError(ValueError):
    """A Vim checkpoint that does not fit our model (the message names the key or option)."""


def is_vim_layout(sd: Mapping[str, Any]) -> bool:
    """Whether ``sd`` is a state dict in the hustvl/Vim layout."""
    return "patch_embed.proj.weight" in sd and any(k.startswith("layers.") for k in sd)


def vim_weight_file(repo_id: str, files: list[str]) -> str | None:
    """The weight file to import from a hustvl/Vim repo: the stride-16 (non ``_ft_``) release
    for the known repos, else the only ``.pth`` there; None if nothing fits."""
    pths = sorted(f for f in files if f.endswith(".pth"))
    known = [f for f in VIM_REPOS.get(repo_id, {}) if f in pths]
    plain = [f for f in known if "_ft_" not in f] or known
    if plain:
        return plain[0]
    return pths[0] if len(pths) == 1 else None


def read_vim_checkpoint(path: str | Path, trust_pickle: bool = False) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state dict, training args)`` of a hustvl ``.pth``. The file is unpickled with
    ``weights_only`` (tensors, containers and ``argparse.Namespace`` only) unless ``trust_pickle``."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # noqa: BLE001 - a pickle refused by weights_only, or a corrupt file
        raise VimConversionError(
            f"cannot read the Vim checkpoint {path} ({type(e).__name__}: {str(e)[:200]}); if it pickles other "
            "objects and you trust it, pass trust_pickle=True (CLI: --trust-pickle)"
        ) from e
    if not isinstance(obj, Mapping):
        raise VimConversionError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    sd = obj.get("model", obj)
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, Mapping) else {}
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not is_vim_layout(tensors):
        raise VimConversionError(f"{path} is not a Vision Mamba checkpoint (no patch_embed.proj.weight / layers.*)")
    return tensors, args


def _architecture(sd: Mapping[str, Tensor], args: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """``VisionMamba`` keyword arguments read off the tensor shapes (and the training args)."""
    w = sd["patch_embed.proj.weight"]  # (d, c, p, p)
    d, c, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    a = sd["layers.0.mixer.A_log"]  # (e, n)
    e, n = int(a.shape[0]), int(a.shape[1])
    name = str(args.get("model", ""))
    kw: dict[str, Any] = {
        "patch_size": p, "in_chans": c, "embed_dim": d, "depth": depth, "d_state": n, "expand": e / d,
        "d_conv": int(sd["layers.0.mixer.conv1d.weight"].shape[-1]),
        "dt_rank": int(sd["layers.0.mixer.dt_proj.weight"].shape[1]),
        "num_classes": int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0,
        "divide_out": "div2" in name if name else True,
    }  # fmt: skip
    if kw["expand"] == int(kw["expand"]):
        kw["expand"] = int(kw["expand"])
    has_cls = "cls_token" in sd
    middle = ("midcls" in name or "middle_cls" in name) if name else True
    kw["cls_position"] = ("middle" if middle else "head") if has_cls else "none"
    kw["global_pool"] = "token" if has_cls else "avg"
    if "pos_embed" not in sd:
        raise VimConversionError("the checkpoint has no pos_embed; only absolute position embeddings convert")
    gh, gw = square_grid(int(sd["pos_embed"].shape[1]) - int(has_cls))
    m = re.search(r"stride(\d+)", name)
    size = int(args.get("input_size") or 224)  # the ImageNet models were trained at 224 px
    if m:
        stride = int(m.group(1))
    elif gh > 1 and (size - p) % (gh - 1) == 0 and (size - p) // (gh - 1) <= p:
        stride = (size - p) // (gh - 1)
    else:
        stride = p
    kw["stride"] = stride
    kw["img_size"] = (gh - 1) * stride + p
    return kw


def convert_vim_state_dict(
    sd: Mapping[str, Tensor], args: Mapping[str, Any] | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state dict for VisionMamba, VisionMamba kwargs)`` from a hustvl/Vim state dict.

    ``args``: the checkpoint's training arguments (``model`` name: stride, class-token
    position, ``div2``; ``input_size``), optional.
    """
    args = args or {}
    for k in sd:
        for marker, what in _UNSUPPORTED.items():
            if marker in k:
                raise VimConversionError(f"{k}: the checkpoint uses {what}, which this converter does not support")
    layers: dict[int, set[str]] = {}
    out: dict[str, Tensor] = {}
    unknown = []
    for k, v in sd.items():
        if k in _TOP:
            out[_TOP[k]] = v
            continue
        m = _LAYER.match(k)
        if m is None or (m.group(3) is not None and m.group(3) not in _MIXER):
            unknown.append(k)
            continue
        layers.setdefault(int(m.group(1)), set()).add(m.group(2))
        out[f"backbone.{k}"] = v
    if unknown:
        raise VimConversionError(f"unexpected key(s) in the Vim checkpoint: {sorted(unknown)[:6]}")
    depth = len(layers)
    if depth == 0 or sorted(layers) != list(range(depth)):
        raise VimConversionError(f"the checkpoint's layers are not numbered 0..n-1: {sorted(layers)[:8]}")
    need = {"norm.weight", "mixer.A_log", "mixer.A_b_log", "mixer.conv1d_b.weight", "mixer.x_proj_b.weight",
            "mixer.dt_proj_b.weight", "mixer.D_b", "mixer.in_proj.weight", "mixer.out_proj.weight"}  # fmt: skip
    for i, names in layers.items():
        missing = need - names
        if missing:
            hint = " (bimamba v2 has a backward branch: *_b keys)" if any(s.endswith(("_b", "_b.weight", "b_log")) for s in missing) else ""
            raise VimConversionError(f"layer {i} lacks {sorted(missing)}{hint}")
    for k in ("patch_embed.proj.weight", "norm_f.weight"):
        if k not in sd:
            raise VimConversionError(f"the checkpoint has no {k}")
    kw = _architecture(sd, args, depth)
    return out, kw
