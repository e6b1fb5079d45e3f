"""Converters from public Mamba / Mamba-2 checkpoints into longstream's :class:`LanguageModel`.

Sources (Gu & Dao 2023, "Mamba"; Dao & Gu 2024, "Transformers are SSMs"):

- ``mamba_ssm`` layout (state-spaces/mamba-*, state-spaces/mamba2-*): ``config.json`` with
  ``d_model, n_layer, vocab_size, ssm_cfg, rms_norm, residual_in_fp32,
  pad_vocab_size_multiple, tie_embeddings, d_intermediate, attn_layer_idx``, and weights
  ``backbone.embedding.weight``, ``backbone.layers.{i}.norm.weight``,
  ``backbone.layers.{i}.mixer.*``, ``backbone.norm_f.weight``, ``lm_head.weight``
  (``pytorch_model.bin`` or ``model.safetensors``).
- Hugging Face ``transformers`` ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (and the bare
  ``MambaModel`` / ``Mamba2Model``): ``backbone.embeddings.weight`` instead of
  ``backbone.embedding.weight``, the same per-layer names, HF config field names.

Our mixers use mamba_ssm's parameter names, so converting is a rename of the embedding key
plus a translation of the config. ``save_pretrained`` of the result writes safetensors +
config.json. Command line: ``python -m longstream.backbones.convert SRC_DIR OUT_DIR``.

Axis legend: v vocabulary, d model width.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import BackboneConfig

__all__ = [
    "backbone_config_from_hf",
    "backbone_config_from_mamba_ssm",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_layout",
    "from_transformers",
    "load_hf",
    "load_mamba_ssm",
]

_LAYER_KEY = re.compile(r"^backbone\.layers\.(\d+)\.(norm|norm2|mixer|mlp)\.(.+)$")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted (unknown layout, unsupported option, bad file)."""


# ----------------------------------------------------------------------------- configs
def backbone_config_from_mamba_ssm(cfg: Mapping[str, Any]) -> tuple[BackboneConfig, dict[str, Any]]:
    """mamba_ssm ``MambaConfig`` dict -> (BackboneConfig, LanguageModel kwargs)."""
    if cfg.get("attn_layer_idx"):
        raise ConversionError(
            "mamba_ssm hybrid checkpoints (attn_layer_idx non-empty) are not supported by this converter"
        )
    if not cfg.get("rms_norm", True):
        raise ConversionError("mamba_ssm checkpoints with rms_norm=false (LayerNorm) are not supported")
    ssm = dict(cfg.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    sym = {"Mamba1": "M", "Mamba2": "M2"}.get(layer)
    if sym is None:
        raise ConversionError(f"unknown ssm_cfg.layer {layer!r}; expected 'Mamba1' or 'Mamba2'")
    allowed = {
        "M": {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
              "conv_bias", "bias"},
        "M2": {"d_state", "d_conv", "expand", "headdim", "ngroups", "A_init_range", "D_has_hdim", "rmsnorm",
               "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias", "conv_bias", "chunk_size"},
    }[sym]
    kw = {k: v for k, v in ssm.items() if k in allowed}
    dropped = set(ssm) - allowed - {"use_fast_path", "layer_idx", "norm_before_gate", "d_ssm", "conv_init",
                                    "process_group", "sequence_parallel", "use_mem_eff_path"}
    if dropped:
        raise ConversionError(f"unsupported ssm_cfg option(s) {sorted(dropped)}")
    if ssm.get("d_ssm") is not None:
        raise ConversionError("ssm_cfg.d_ssm (partial SSM width) is not supported")
    if ssm.get("norm_before_gate", False):
        raise ConversionError("ssm_cfg.norm_before_gate=true is not supported")
    bb = BackboneConfig(
        d_model=int(cfg["d_model"]),
        n_layers=int(cfg["n_layer"]),
        pattern=sym,
        mixer_kwargs={sym: kw},
        d_intermediate=int(cfg.get("d_intermediate", 0) or 0),
        norm_eps=float(cfg.get("norm_epsilon", 1e-5)),
        residual_in_fp32=bool(cfg.get("residual_in_fp32", True)),
    )
    lm = {
        "vocab_size": int(cfg["vocab_size"]),
        "pad_vocab_size_multiple": int(cfg.get("pad_vocab_size_multiple", 8)),
        "tie_embeddings": bool(cfg.get("tie_embeddings", True)),
    }
    return bb, lm


def backbone_config_from_hf(cfg: Mapping[str, Any]) -> tuple[BackboneConfig, dict[str, Any]]:
    """transformers ``MambaConfig`` / ``Mamba2Config`` dict -> (BackboneConfig, LanguageModel kwargs)."""
    mt = cfg.get("model_type")
    if mt not in ("mamba", "mamba2"):
        raise ConversionError(f"expected a transformers config with model_type 'mamba' or 'mamba2', got {mt!r}")
    d = int(cfg["hidden_size"])
    expand = cfg.get("expand", 2)
    rank = cfg.get("time_step_rank", "auto")
    common = {
        "d_state": int(cfg.get("state_size", 16 if mt == "mamba" else 128)),
        "d_conv": int(cfg.get("conv_kernel", 4)),
        "expand": expand,
        "bias": bool(cfg.get("use_bias", False)),
        "conv_bias": bool(cfg.get("use_conv_bias", True)),
        "dt_min": float(cfg.get("time_step_min", 0.001)),
        "dt_max": float(cfg.get("time_step_max", 0.1)),
        "dt_init_floor": float(cfg.get("time_step_floor", 1e-4)),
    }
    if mt == "mamba":
        sym = "M"
        kw = {**common, "dt_rank": math.ceil(d / 16) if rank == "auto" else int(rank)}
    else:
        sym = "M2"
        e = int(expand * d)
        heads, hd = int(cfg.get("num_heads", e // int(cfg.get("head_dim", 64)))), int(cfg.get("head_dim", 64))
        if heads * hd != e:
            raise ConversionError(f"num_heads * head_dim = {heads * hd} must equal expand * hidden_size = {e}")
        lim = [_json_float(v) for v in cfg.get("time_step_limit", (0.0, float("inf")))]
        kw = {
            **common, "headdim": hd, "ngroups": int(cfg.get("n_groups", 1)), "chunk_size": int(cfg.get("chunk_size", 256)),
            "dt_limit": (float(lim[0]), float(lim[1])), "norm_eps": float(cfg.get("layer_norm_epsilon", 1e-5)),
        }
    bb = BackboneConfig(
        d_model=d,
        n_layers=int(cfg["num_hidden_layers"]),
        pattern=sym,
        mixer_kwargs={sym: kw},
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        residual_in_fp32=bool(cfg.get("residual_in_fp32", True)),
    )
    lm = {
        "vocab_size": int(cfg["vocab_size"]),
        "pad_vocab_size_multiple": 1,
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", mt == "mamba")),
    }
    return bb, lm


def _json_float(v: Any) -> float:
    """A float from config.json; transformers writes infinity as {"__float__": "Infinity"}."""
    if isinstance(v, Mapping):
        v = v.get("__float__", v)
    return float(v)


# ----------------------------------------------------------------------------- weights
def detect_layout(sd: Mapping[str, Tensor]) -> str:
    """'mamba_ssm', 'hf', 'hf_backbone' (bare MambaModel) or raise."""
    if "backbone.embedding.weight" in sd:
        return "mamba_ssm"
    if "backbone.embeddings.weight" in sd:
        return "hf"
    if "embeddings.weight" in sd:
        return "hf_backbone"
    raise ConversionError(
        "unrecognised checkpoint layout: expected 'backbone.embedding.weight' (mamba_ssm) or "
        "'backbone.embeddings.weight' (transformers)"
    )


def convert_state_dict(sd: Mapping[str, Tensor], layout: str | None = None) -> dict[str, Tensor]:
    """Rename a mamba_ssm / transformers state dict to :class:`LanguageModel` keys."""
    layout = layout or detect_layout(sd)
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if layout == "hf_backbone":
            k = "backbone." + k
        if k in ("backbone.embedding.weight", "backbone.embeddings.weight"):
            out["embedding.weight"] = v
        elif k == "backbone.norm_f.weight" or k == "lm_head.weight" or _LAYER_KEY.match(k):
            out[k] = v
        else:
            raise ConversionError(f"unexpected weight {k!r} in a {layout} checkpoint")
    return out


def _build(bb: BackboneConfig, lm_kw: dict[str, Any], sd: dict[str, Tensor]):
    from .lm import LanguageModel

    emb = sd["embedding.weight"]
    if "lm_head.weight" in sd and lm_kw["tie_embeddings"] and not torch.equal(sd["lm_head.weight"], emb):
        lm_kw = {**lm_kw, "tie_embeddings": False}
    model = LanguageModel(lm_kw["vocab_size"], bb, tie_embeddings=lm_kw["tie_embeddings"],
                          pad_vocab_size_multiple=lm_kw["pad_vocab_size_multiple"])
    if model.embedding.weight.shape != emb.shape:
        # the checkpoint's vocabulary padding differs from ours: pad / cut rows beyond vocab_size
        rows = model.embedding.weight.shape[0]
        if emb.shape[0] < lm_kw["vocab_size"] or emb.shape[1] != model.embedding.weight.shape[1]:
            raise ConversionError(f"embedding of shape {tuple(emb.shape)} does not fit config vocab {lm_kw['vocab_size']}")
        fix = lambda w: torch.cat([w[:rows], w.new_zeros(max(0, rows - w.shape[0]), w.shape[1])], 0)
        sd["embedding.weight"] = fix(emb)
        if "lm_head.weight" in sd:
            sd["lm_head.weight"] = fix(sd["lm_head.weight"])
    if model.tie_embeddings:
        sd.pop("lm_head.weight", None)
        sd["lm_head.weight"] = sd["embedding.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ConversionError(f"converted weights do not fit the model: missing {missing}, unexpected {unexpected}")
    return model


def _read_weights(directory: Path) -> dict[str, Tensor]:
    st = directory / "model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    idx = directory / "model.safetensors.index.json"
    if idx.exists():
        from safetensors.torch import load_file

        files = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        out: dict[str, Tensor] = {}
        for f in files:
            out.update(load_file(str(directory / f)))
        return out
    pt = directory / "pytorch_model.bin"
    if pt.exists():
        return torch.load(str(pt), map_location="cpu", weights_only=True)
    raise ConversionError(f"no model.safetensors or pytorch_model.bin in {directory}")


def load_mamba_ssm(source: str | Path | tuple[Mapping[str, Any], Mapping[str, Tensor]]):
    """A state-spaces/mamba-* or mamba2-* checkpoint (directory, or (config, state_dict)) as a LanguageModel."""
    if isinstance(source, tuple):
        cfg, sd = source
    else:
        d = Path(source)
        if not (d / "config.json").exists():
            raise ConversionError(f"{d} has no config.json")
        cfg, sd = json.loads((d / "config.json").read_text()), _read_weights(d)
    layout = detect_layout(sd)
    if layout != "mamba_ssm":
        raise ConversionError(f"expected mamba_ssm layout (backbone.embedding.weight), found {layout}; use load_hf")
    bb, lm = backbone_config_from_mamba_ssm(cfg)
    return _build(bb, lm, convert_state_dict(sd, "mamba_ssm"))


def load_hf(source: str | Path | tuple[Mapping[str, Any], Mapping[str, Tensor]]):
    """A transformers Mamba / Mamba2 checkpoint (directory, or (config, state_dict)) as a LanguageModel."""
    if isinstance(source, tuple):
        cfg, sd = source
    else:
        d = Path(source)
        if not (d / "config.json").exists():
            raise ConversionError(f"{d} has no config.json")
        cfg, sd = json.loads((d / "config.json").read_text()), _read_weights(d)
    bb, lm = backbone_config_from_hf(cfg)
    layout = detect_layout(sd)
    return _build(bb, lm, convert_state_dict(sd, layout))


def from_transformers(model: Any):
    """A live transformers Mamba(ForCausalLM) / Mamba2(ForCausalLM) module as a LanguageModel."""
    cfg = model.config.to_dict()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return load_hf((cfg, sd))


def convert_checkpoint(src: str | Path, out: str | Path, model_card: str | None = None) -> Path:
    """Convert a mamba_ssm or transformers checkpoint directory; write ours (safetensors + config.json)."""
    src = Path(src)
    if not (src / "config.json").exists():
        raise ConversionError(f"{src} has no config.json")
    cfg = json.loads((src / "config.json").read_text())
    model = load_hf(src) if cfg.get("model_type") in ("mamba", "mamba2") else load_mamba_ssm(src)
    card = model_card or f"Converted from `{src.name}` by longstream.backbones.convert.\n"
    return model.save_pretrained(out, model_card=card)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(description="Convert a mamba_ssm / transformers Mamba checkpoint to longstream")
    ap.add_argument("src")
    ap.add_argument("out")
    a = ap.parse_args()
    print(convert_checkpoint(a.src, a.out))
