"""Vision Mamba (Vim) image classifier, registered in timm's model registry.

Zhu et al., "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State
Space Model" (ICML 2024). Images become tokens through :class:`~longstream.encoders.image.ImageEncoder`
(patches, class token in the middle, position embeddings resampled for a new resolution), a
stack of bidirectional Mamba layers (:class:`~longstream.backbones.bimamba.VimMixer`, pre-norm
RMSNorm blocks with the residual stream in float32) mixes them, a final RMSNorm, and the
class token's output goes through a linear head. Everything runs on a CPU (compiled scan and
conv kernels at inference) without ``mamba_ssm`` or ``causal_conv1d``.

Importing this module registers the models with timm, so ``timm.create_model("vim_tiny_patch16_224")``
works with timm's conventions: ``pretrained_cfg`` / ``default_cfg``, ``num_classes`` and
``in_chans`` overrides (timm adapts the first conv of pretrained weights), ``forward_features``
(unpooled tokens (b, l, d), class token included), ``forward_head(x, pre_logits=)``,
``forward_intermediates`` / ``features_only=True`` (per-layer NCHW maps), ``reset_classifier``,
``set_grad_checkpointing``, ``dynamic_img_size=True`` and ``set_input_size``.
``pretrained=True`` fetches the released hustvl checkpoints (``hf_hub_id`` / ``hf_hub_filename``)
and converts them with :func:`checkpoint_filter_fn`; ``longstream hub import hf:hustvl/Vim-tiny-midclstok``
converts them into a longstream checkpoint instead (``pipelines/vision/vim_convert.py``).

Registered: ``vim_tiny_patch16_224`` (Vim-Ti, 7M), ``vim_small_patch16_224`` (Vim-S, 26M), their
``_stride8`` "finer granularity" variants, ``vim_fmnist`` (28x28 grey, patch 4) and
``vim_fmnist_seqpixel`` (one token per pixel, 784 tokens) for Fashion-MNIST.

Axis legend: b batch, c channels, h/w image size, gh/gw patch grid, l tokens, d width.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, lecun_normal_, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from longstream.backbones.block import residual_dtype
from longstream.backbones.config import BackboneConfig
from longstream.backbones.lm import load_checkpoint, save_checkpoint
from longstream.backbones.stack import SequenceBackbone
from longstream.encoders.image import ImageEncoder, cls_index, resample_pos_embed, square_grid, to_2tuple

from .vim_convert import convert_vim_state_dict, is_vim_layout, read_vim_checkpoint

__all__ = ["VisionMamba", "checkpoint_filter_fn", "MODEL_NAMES", "MODEL_TYPE", "FMNIST_MEAN", "FMNIST_STD"]

# the released .pth files hold the training arguments (an argparse.Namespace) next to the weights;
# allowing that one class keeps timm's ``weights_only=True`` loading of them working
torch.serialization.add_safe_globals([argparse.Namespace])

MODEL_TYPE = "longstream_vim"  # config.json model_type of a saved VisionMamba
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)  # Fashion-MNIST train-set pixel statistics
GLOBAL_POOLS = ("", "token", "avg")


class VisionMamba(nn.Module):
    """Vim classifier: ``ImageEncoder`` -> ``depth`` x bimamba-v2 blocks -> RMSNorm -> pool -> head.

    Parameter names: ``embed.{patch_embed.proj, cls_token, pos_embed}``,
    ``backbone.layers.{i}.{norm, mixer.*}``, ``backbone.norm_f``, ``head``.
    ``global_pool``: ``"token"`` (the class token, Vim's default), ``"avg"`` (mean of the patch
    tokens) or ``""`` (no pooling: the head sees every token).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        divide_out: bool = True,
        norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        cls_position: str = "middle",
        dynamic_img_size: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        #: the constructor arguments (config.json of a saved checkpoint); ``backend`` is a runtime choice
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__", "backend")}
        for k in ("img_size", "patch_size", "stride"):
            self.config[k] = None if self.config[k] is None else list(to_2tuple(self.config[k]))
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        if global_pool == "token" and cls_position == "none":
            raise ValueError("global_pool='token' needs a class token; use cls_position='middle' or global_pool='avg'")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.embed = ImageEncoder(img_size, patch_size, stride, in_chans, embed_dim, cls_position=cls_position,
                                  dynamic_img_size=dynamic_img_size, drop_rate=drop_rate)
        self.num_prefix_tokens = self.embed.num_prefix_tokens
        mixer_kw = {"d_state": d_state, "d_conv": d_conv, "expand": expand, "dt_rank": dt_rank,
                    "divide_out": divide_out, "backend": backend}
        self.backbone = SequenceBackbone(BackboneConfig(
            d_model=embed_dim, n_layers=depth, pattern="VM", mixer_kwargs={"VM": mixer_kw}, norm_eps=norm_eps,
            residual_in_fp32=residual_in_fp32,
        ))  # fmt: skip
        # stochastic depth on each mixer's output (the block's ``drop`` slot), linearly up to the rate
        for blk, p in zip(self.backbone.layers, torch.linspace(0, drop_path_rate, depth).tolist()):
            blk.drop = DropPath(p) if p > 0 else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        r = self.embed.patch_embed.stride[0]
        self.feature_info = [dict(module=f"backbone.layers.{i}", num_chs=embed_dim, reduction=r) for i in range(depth)]
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        """Vim's initialisation: lecun-normal patch conv, trunc-normal head, zero biases except
        dt_proj's, out_proj rescaled by 1/sqrt(depth) (GPT-2's prenorm residual rule)."""
        lecun_normal_(self.embed.patch_embed.proj.weight)
        nn.init.zeros_(self.embed.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for name, m in self.backbone.named_modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
            if name.endswith("mixer"):
                with torch.no_grad():
                    m.out_proj.weight /= math.sqrt(depth)

    # ------------------------------------------------------------------ timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"embed.pos_embed", "embed.cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^embed", blocks=[(r"^backbone\.layers\.(\d+)", None), (r"^backbone\.norm_f", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.gradient_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def set_input_size(self, img_size: int | tuple[int, int] | None = None, **_: Any) -> None:
        """Make ``img_size`` the native resolution (the position table is resampled once)."""
        if img_size is not None:
            self.embed.set_input_size(img_size)

    @property
    def patch_embed(self) -> nn.Module:
        return self.embed.patch_embed

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path, card: str | None = None, **extra: Any) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (``model_type`` longstream_vim) + card, atomically."""
        config = {"model_type": MODEL_TYPE, "vim": dict(self.config), **extra}
        config["vim"].update(num_classes=self.num_classes, global_pool=self.global_pool,
                             img_size=list(self.embed.patch_embed.img_size))
        return save_checkpoint(directory, self.state_dict(), config, card=card)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu", **overrides: Any) -> VisionMamba:
        """Load a checkpoint written by :meth:`save_pretrained` (sha256 verified)."""
        config, tensors = load_checkpoint(directory, map_location=map_location)
        if config.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{directory}/config.json has model_type {config.get('model_type')!r}, expected {MODEL_TYPE!r}")
        model = cls(**{**config["vim"], **overrides})
        model.load_state_dict(checkpoint_filter_fn(tensors, model))
        return model.eval()

    @classmethod
    def from_hustvl(cls, source: str | Path | dict[str, Tensor], trust_pickle: bool = False,
                    args: dict[str, Any] | None = None, **overrides: Any) -> VisionMamba:
        """A released hustvl/Vim checkpoint (a ``.pth`` path or its state dict) as our model."""
        if isinstance(source, (str, Path)):
            sd, args = read_vim_checkpoint(source, trust_pickle=trust_pickle)
        else:
            sd = source.get("model", source)
        converted, kw = convert_vim_state_dict(sd, args)
        model = cls(**{**kw, **overrides})
        model.load_state_dict(checkpoint_filter_fn(converted, model))
        return model.eval()

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: Tensor) -> Tensor:
        """Images (b, c, h, w) -> normalised tokens (b, l, d), the class token at its index."""
        tokens, _ = self.embed(x)
        return self.backbone(tokens)[0]

    def _pool(self, x: Tensor) -> Tensor:
        """Tokens (b, l, d) -> (b, d) per ``global_pool`` (identity for ``""``)."""
        i = cls_index(x.shape[1] - self.num_prefix_tokens, self.embed.cls_position)
        if self.global_pool == "token":
            return x[:, i]
        if self.global_pool == "avg":
            if i is None:
                return x.mean(1)
            return torch.cat([x[:, :i], x[:, i + 1 :]], 1).mean(1)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (b, l, d) from :meth:`forward_features` -> logits (b, classes) (or pooled features)."""
        x = self.head_drop(self._pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The residual stream after the layers in ``indices`` (last n if an int, all if None) as
        (b, d, gh, gw) maps (``"NCHW"``) or (b, n, d) tokens (``"NLC"``), class token removed (returned
        alongside with ``return_prefix_tokens``); ``norm`` applies the final norm to them. Returns
        ``(forward_features(x), intermediates)`` or, with ``intermediates_only``, the list."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        layers = self.backbone.layers
        take, max_index = feature_take_indices(len(layers), indices)
        b = x.shape[0]
        tokens, (gh, gw) = self.embed(x)
        h = tokens.to(residual_dtype(tokens.dtype, self.backbone.cfg.residual_in_fp32))
        norm_f = self.backbone.norm_f
        ckpt = self.backbone.gradient_checkpointing and torch.is_grad_enabled()
        inter = []
        for i, blk in enumerate(layers[: max_index + 1] if stop_early else layers):
            h = checkpoint(blk, h, None, use_reentrant=False)[0] if ckpt else blk(h, None)[0]
            if i in take:
                inter.append((norm_f(h) if norm and norm_f is not None else h).to(tokens.dtype))
        ci = self.embed.cls_index((gh, gw))
        prefix = [y[:, ci : ci + 1] for y in inter] if ci is not None else None
        if ci is not None:
            inter = [torch.cat([y[:, :ci], y[:, ci + 1 :]], 1) for y in inter]  # (b, n, d)
        if output_fmt == "NCHW":
            inter = [y.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous() for y in inter]
        if return_prefix_tokens and prefix is not None:
            inter = list(zip(inter, prefix))  # type: ignore[arg-type]
        if intermediates_only:
            return inter
        final = norm_f(h) if norm_f is not None else h
        return final.to(tokens.dtype), inter

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers after the last of ``indices`` (and the norm / head) for feature extraction."""
        take, max_index = feature_take_indices(len(self.backbone.layers), indices)
        self.backbone.layers = self.backbone.layers[: max_index + 1]
        if prune_norm:
            self.backbone.norm_f = None
        if prune_head:
            self.reset_classifier(0, "")
        return take


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_filter_fn(state_dict: dict[str, Any], model: VisionMamba) -> dict[str, Tensor]:
    """Weights for ``model`` from a hustvl/Vim checkpoint (``{"model": ...}`` .pth, upstream key
    layout) or one of ours; the position table is resampled to the model's grid."""
    sd = state_dict.get("model", state_dict) if isinstance(state_dict, dict) else state_dict
    if is_vim_layout(sd):
        sd, _ = convert_vim_state_dict(sd)
    out = dict(sd)
    pe = out.get("embed.pos_embed")
    if pe is not None and model.embed.pos_embed is not None and pe.shape != model.embed.pos_embed.shape:
        n = pe.shape[1] - model.num_prefix_tokens
        out["embed.pos_embed"] = resample_pos_embed(pe, square_grid(n), model.embed.grid_size, model.embed.cls_position)
    return out


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    depth = kwargs.get("depth", 24)
    out_indices = kwargs.pop("out_indices", 3 if depth >= 3 else depth)
    return build_model_with_cfg(
        VisionMamba, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs,
    )  # fmt: skip


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.875,
        "interpolation": "bicubic", "fixed_input_size": True, "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "embed.patch_embed.proj", "classifier": "head",
        "license": "apache-2.0", "paper_ids": "arXiv:2401.09417", "paper_name": "Vision Mamba",
        "origin_url": "https://github.com/hustvl/Vim", **kwargs,
    }  # fmt: skip


def _fmnist_cfg(**kwargs: Any) -> dict[str, Any]:
    return _cfg(num_classes=10, input_size=(1, 28, 28), crop_pct=1.0, interpolation="bilinear",
                mean=FMNIST_MEAN, std=FMNIST_STD, license="apache-2.0", origin_url="", **kwargs)


default_cfgs = generate_default_cfgs({
    "vim_tiny_patch16_224.hustvl_in1k": _cfg(hf_hub_id="hustvl/Vim-tiny-midclstok",
                                             hf_hub_filename="vim_t_midclstok_76p1acc.pth"),
    "vim_tiny_patch16_stride8_224.hustvl_in1k": _cfg(hf_hub_id="hustvl/Vim-tiny-midclstok",
                                                     hf_hub_filename="vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small_patch16_224.hustvl_in1k": _cfg(hf_hub_id="hustvl/Vim-small-midclstok",
                                              hf_hub_filename="vim_s_midclstok_80p5acc.pth"),
    "vim_small_patch16_stride8_224.hustvl_in1k": _cfg(hf_hub_id="hustvl/Vim-small-midclstok",
                                                      hf_hub_filename="vim_s_midclstok_ft_81p6acc.pth"),
    "vim_fmnist": _fmnist_cfg(),
    "vim_fmnist_seqpixel": _fmnist_cfg(),
})  # fmt: skip

#: Every model this module registers with timm.
MODEL_NAMES = ("vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224", "vim_small_patch16_224",
               "vim_small_patch16_stride8_224", "vim_fmnist", "vim_fmnist_seqpixel")  # fmt: skip


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-Ti: d 192, 24 layers, patch 16, middle class token (hustvl/Vim-tiny-midclstok, 76.1% IN-1k)."""
    return _create("vim_tiny_patch16_224", pretrained, **{"patch_size": 16, "embed_dim": 192, "depth": 24, **kwargs})


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-Ti+: overlapping 16 px patches at stride 8 (729 tokens; 78.3% IN-1k)."""
    kw = {"patch_size": 16, "stride": 8, "embed_dim": 192, "depth": 24, **kwargs}
    return _create("vim_tiny_patch16_stride8_224", pretrained, **kw)


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-S: d 384, 24 layers, patch 16 (hustvl/Vim-small-midclstok, 80.5% IN-1k)."""
    return _create("vim_small_patch16_224", pretrained, **{"patch_size": 16, "embed_dim": 384, "depth": 24, **kwargs})


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-S+: overlapping 16 px patches at stride 8 (81.6% IN-1k)."""
    kw = {"patch_size": 16, "stride": 8, "embed_dim": 384, "depth": 24, **kwargs}
    return _create("vim_small_patch16_stride8_224", pretrained, **kw)


@register_model
def vim_fmnist(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Fashion-MNIST Vim: 28x28 grey images, 4 px patches (49 tokens + class), d 96, 6 layers."""
    kw = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 96, "depth": 6, **kwargs}
    return _create("vim_fmnist", pretrained, **kw)


@register_model
def vim_fmnist_seqpixel(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Sequential-pixel Vim: one token per pixel of a 28x28 image (784 tokens + class), d 64, 4 layers."""
    kw = {"img_size": 28, "patch_size": 1, "in_chans": 1, "num_classes": 10, "embed_dim": 64, "depth": 4, **kwargs}
    return _create("vim_fmnist_seqpixel", pretrained, **kw)
