"""HyenaDNA checkpoints: a HyenaDNA-shaped model on our Hyena mixer and a loader.

Paper: "HyenaDNA: Long-Range Genomic Sequence Modeling at Single Nucleotide Resolution"
(Nguyen et al., 2023). HyenaDNA is a decoder of pre-LayerNorm blocks
``x = x + Hyena(LN1(x)); x = x + MLP(LN2(x))`` (MLP: ``fc1 -> GELU(tanh) -> fc2``), a
character embedding and a final LayerNorm ``ln_f``; the LM head is tied to the embedding.
:class:`HyenaDNAModel` reproduces that structure with module names chosen so both public
layouts map onto it by a prefix rename:

- Lightning ``weights.ckpt`` (LongSafari/hyenadna-*): ``state_dict`` keys
  ``model.backbone.embeddings.word_embeddings.weight``,
  ``model.backbone.layers.{i}.{norm1,norm2,mlp.fc1,mlp.fc2}``,
  ``model.backbone.layers.{i}.mixer.{in_proj,out_proj,short_filter}``,
  ``model.backbone.layers.{i}.mixer.filter_fn.{bias, pos_emb.z, pos_emb.t,
  implicit_filter.{0,1,2,...}, modulation.deltas}``, ``model.backbone.ln_f``.
- ``-hf`` safetensors (``HyenaDNAForCausalLM`` etc.): the same names under
  ``hyena.backbone.``; safetensors stores a shared tensor once, so of the sine frequency
  shared by ``implicit_filter.{1,3,5}`` only one copy (or none: HF then re-initialises it)
  may be present, and the embedding / ``lm_head`` pair may hold only one of the two.
  :func:`convert_hyenadna_state_dict` re-ties both.

Tokenizer convention (HyenaDNA's ``CharacterTokenizer``, which lives in
:mod:`longstream.encoders.tokenizers`): ``[CLS]=0, [SEP]=1, [BOS]=2,
[MASK]=3, [PAD]=4, [RESERVED]=5, [UNK]=6`` and the characters from 7 on, in the order
``A, C, G, T, N`` (A=7, C=8, G=9, T=10, N=11): vocabulary 12, padded to a multiple of 8
(16 embedding rows). Special tokens wrap a sequence as ``[CLS] ... [SEP]``; padding is on
the left by default.

Axis legend: b batch, l length, d model width, v vocabulary.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import State
from .hyena import Hyena

__all__ = [
    "HyenaDNAConfig",
    "HyenaDNAModel",
    "convert_hyenadna_state_dict",
    "infer_hyenadna_config",
    "load_hyenadna",
]

_MLP_BLOCK = 1 << 16  # tokens per chunk of the position-wise MLP without grad


@dataclass
class HyenaDNAConfig:
    """Shape of a HyenaDNA model (defaults: hyenadna-tiny-1k-seqlen)."""

    d_model: int = 128
    n_layer: int = 2
    d_inner: int = 512
    vocab_size: int = 12
    pad_vocab_size_multiple: int = 8
    l_max: int = 1026
    order: int = 2
    filter_order: int = 64
    emb_dim: int = 5
    short_filter_order: int = 3
    num_inner_mlps: int = 2
    w: float = 10.0
    train_freq: bool = True
    modulate: bool = True
    shift: float = 0.05
    layer_norm_epsilon: float = 1e-5

    @property
    def padded_vocab(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size + (-self.vocab_size) % m if m > 1 else self.vocab_size

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> HyenaDNAConfig:
        """Read either layout's ``config.json``: Lightning (``layer: {...}``) or HF (``HyenaConfig``)."""
        layer = dict(d.get("layer", {}) or {})
        out: dict[str, Any] = {}
        for name in ("d_model", "n_layer", "d_inner", "vocab_size", "pad_vocab_size_multiple", "layer_norm_epsilon"):
            if name in d:
                out[name] = d[name]
        aliases = {
            "l_max": ("l_max", "max_seq_len"), "order": ("order", "hyena_order"),
            "filter_order": ("filter_order",), "emb_dim": ("emb_dim",),
            "short_filter_order": ("short_filter_order",), "num_inner_mlps": ("num_inner_mlps",),
            "w": ("w", "activation_freq"), "train_freq": ("train_freq",), "modulate": ("modulate",),
            "shift": ("shift",),
        }  # fmt: skip
        for field, names in aliases.items():
            for src in (layer, d):
                for n in names:
                    if n in src and field not in out:
                        out[field] = src[n]
        if out.get("d_inner") is None and "d_model" in out:
            out["d_inner"] = 4 * out["d_model"]
        return cls(**out)


class _Mlp(nn.Module):
    def __init__(self, d: int, d_inner: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, d_inner)
        self.fc2 = nn.Linear(d_inner, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class HyenaDNABlock(nn.Module):
    """Pre-LN block: ``x + mixer(norm1(x))`` then ``+ mlp(norm2(.))`` (residual in float32)."""

    def __init__(self, cfg: HyenaDNAConfig) -> None:
        super().__init__()
        self.mixer = Hyena(
            cfg.d_model, l_max=cfg.l_max, order=cfg.order, filter_order=cfg.filter_order, emb_dim=cfg.emb_dim,
            w=cfg.w, num_inner_mlps=cfg.num_inner_mlps, short_filter_order=cfg.short_filter_order,
            modulate=cfg.modulate, shift=cfg.shift, train_freq=cfg.train_freq,
        )  # fmt: skip
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)
        self.mlp = _Mlp(cfg.d_model, cfg.d_inner)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)

    def forward(
        self, x: Tensor, state: State = None, mask: Tensor | None = None, want_state: bool = False
    ) -> tuple[Tensor, State]:
        h, state = self.mixer._forward(self.norm1(x), state, mask=mask, want_state=want_state)
        if torch.is_grad_enabled():
            x = x + h.float()
            return x + self.mlp(self.norm2(x)).float(), state
        x.add_(h.float())  # in place: no grad, one (B, L, D) buffer less
        del h
        B, L, _ = x.shape
        for l0 in range(0, L, _MLP_BLOCK):  # bounded activation memory at 1M tokens
            sl = slice(l0, min(L, l0 + _MLP_BLOCK))
            x[:, sl] += self.mlp(self.norm2(x[:, sl])).float()
        return x, state


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, d: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d)


class HyenaDNABackbone(nn.Module):
    """Embedding -> blocks -> ``ln_f`` (HyenaDNA's ``LMBackbone``)."""

    def __init__(self, cfg: HyenaDNAConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg.padded_vocab, cfg.d_model)
        self.layers = nn.ModuleList([HyenaDNABlock(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)


class HyenaDNAModel(nn.Module):
    """HyenaDNA language model: ``input_ids (B, L) -> hidden (B, L, D)``; :meth:`logits` adds the tied head.

    ``forward(input_ids, state)`` continues a stream (each Hyena layer keeps at most
    ``l_max`` past inputs), so chunked inference over inputs longer than memory allows is
    possible; ``return_state=True`` returns the state to continue from.
    """

    def __init__(self, cfg: HyenaDNAConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = HyenaDNABackbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight  # tied

    def forward(
        self,
        input_ids: Tensor,
        state: State = None,
        *,
        mask: Tensor | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, State]:
        x = self.backbone.embeddings.word_embeddings(input_ids).float()  # (B, L, D), residual stream
        states = []
        for i, layer in enumerate(self.backbone.layers):
            x, s = layer(x, None if state is None else state[i], mask=mask, want_state=return_state)
            states.append(s)
        h = self.backbone.ln_f(x)
        return (h, states) if return_state else h

    def logits(self, input_ids: Tensor) -> Tensor:
        """Next-token logits ``(B, L, V)`` (float32)."""
        return self.lm_head(self(input_ids)).float()


# ----------------------------------------------------------------------------------------
# state-dict conversion
# ----------------------------------------------------------------------------------------

_PREFIXES = ("model.backbone.", "hyena.backbone.", "backbone.")
_HEAD_KEYS = ("model.lm_head.weight", "lm_head.weight", "hyena.lm_head.weight")
_FREQ = re.compile(r"^(backbone\.layers\.\d+\.mixer\.filter_fn\.implicit_filter\.)(\d+)\.freq$")


def convert_hyenadna_state_dict(sd: Mapping[str, Tensor], cfg: HyenaDNAConfig) -> dict[str, Tensor]:
    """Rename a Lightning or ``-hf`` HyenaDNA state dict onto :class:`HyenaDNAModel` and re-tie shared weights.

    Keys outside the backbone / LM head (classification heads, optimizer leftovers) are
    dropped with a warning.
    """
    out: dict[str, Tensor] = {}
    dropped = []
    for k, v in sd.items():
        if not isinstance(v, Tensor):
            continue
        for p in _PREFIXES:
            if k.startswith(p):
                out["backbone." + k[len(p) :]] = v
                break
        else:
            if k in _HEAD_KEYS:
                out["lm_head.weight"] = v
            else:
                dropped.append(k)
    if dropped:
        warnings.warn(f"HyenaDNA loader ignored {len(dropped)} key(s) outside the backbone, e.g. {dropped[:3]}", stacklevel=3)
    emb = "backbone.embeddings.word_embeddings.weight"
    if emb not in out and "lm_head.weight" in out:
        out[emb] = out["lm_head.weight"]
    if emb in out and "lm_head.weight" in out and not torch.equal(out[emb], out["lm_head.weight"]):
        raise ValueError("HyenaDNA checkpoint has an lm_head that differs from the embedding; HyenaDNA ties them")
    out.pop("lm_head.weight", None)
    if emb in out:
        out["lm_head.weight"] = out[emb]
    # the sine activation is one module shared by implicit_filter.{1,3,5,...}
    n_act = cfg.num_inner_mlps + 1
    for i in range(cfg.n_layer):
        pre = f"backbone.layers.{i}.mixer.filter_fn.implicit_filter."
        found = {int(m.group(2)): out[k] for k in list(out) if (m := _FREQ.match(k)) and m.group(1) == pre}
        if found:
            vals = list(found.values())
            if any(not torch.equal(vals[0], v) for v in vals[1:]):
                raise ValueError(f"layer {i}: implicit_filter sine frequencies differ; HyenaDNA shares one")
            freq = vals[0]
        else:
            warnings.warn(f"layer {i}: no sine frequency in the checkpoint; using w={cfg.w} (HF does the same)", stacklevel=3)
            freq = torch.full((1, cfg.filter_order), float(cfg.w))
        for j in range(n_act):
            out[f"{pre}{2 * j + 1}.freq"] = freq
    return out


def infer_hyenadna_config(sd: Mapping[str, Tensor], **known: Any) -> HyenaDNAConfig:
    """Read a HyenaDNA config from the tensor shapes of a (converted) state dict."""
    g = lambda name: sd[f"backbone.layers.0.{name}"]
    emb = sd["backbone.embeddings.word_embeddings.weight"]
    d = emb.shape[1]
    n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("backbone.layers."))
    lin = sorted(
        int(m.group(1))
        for k in sd
        if (m := re.match(r"backbone\.layers\.0\.mixer\.filter_fn\.implicit_filter\.(\d+)\.weight$", k))
    )
    z = g("mixer.filter_fn.pos_emb.z")
    cfg = dict(
        d_model=d, n_layer=n_layer, d_inner=g("mlp.fc1.weight").shape[0], vocab_size=emb.shape[0],
        pad_vocab_size_multiple=1, l_max=z.shape[1], emb_dim=z.shape[2],
        order=g("mixer.in_proj.weight").shape[0] // d - 1,
        filter_order=g("mixer.filter_fn.implicit_filter.0.weight").shape[0],
        short_filter_order=g("mixer.short_filter.weight").shape[-1], num_inner_mlps=len(lin) - 2,
    )  # fmt: skip
    cfg.update(known)
    return HyenaDNAConfig(**cfg)


def _read_state_dict(path: Path, trust_pickle: bool) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # Lightning checkpoints pickle their hyper-parameters
        if not trust_pickle:
            raise ValueError(
                f"{path} holds pickled objects besides tensors; if you trust its source, call "
                f"load_hyenadna(..., trust_pickle=True) ({type(e).__name__}: {str(e)[:200]})"
            ) from e
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not contain a state dict")
    return dict(obj)


def load_hyenadna(
    source: str | Path | Mapping[str, Tensor],
    config: HyenaDNAConfig | Mapping[str, Any] | None = None,
    *,
    trust_pickle: bool = False,
) -> HyenaDNAModel:
    """Build a :class:`HyenaDNAModel` from a HyenaDNA checkpoint.

    ``source``: a directory (``weights.ckpt`` or ``model.safetensors`` / ``pytorch_model.bin``,
    optionally with ``config.json``), a checkpoint file, or an in-memory state dict in
    either layout. ``config``: a :class:`HyenaDNAConfig` or a ``config.json`` dict; by
    default ``config.json`` next to the weights, else shapes read from the tensors
    (the window ``shift``/``modulate`` are not stored; HyenaDNA's defaults are used).
    """
    cfg_json: Mapping[str, Any] | None = None
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        if path.is_dir():
            cands = [path / n for n in ("weights.ckpt", "model.safetensors", "pytorch_model.bin")]
            found = [c for c in cands if c.exists()]
            if not found:
                raise FileNotFoundError(f"no HyenaDNA weights in {path}; expected one of {[c.name for c in cands]}")
            if (path / "config.json").exists():
                cfg_json = json.loads((path / "config.json").read_text())
            path = found[0]
        elif not path.exists():
            raise FileNotFoundError(f"HyenaDNA checkpoint {path} does not exist")
        elif (path.parent / "config.json").exists():
            cfg_json = json.loads((path.parent / "config.json").read_text())
        raw = _read_state_dict(path, trust_pickle)
    if isinstance(config, HyenaDNAConfig):
        cfg = config
    else:
        src = config if config is not None else cfg_json
        cfg = HyenaDNAConfig.from_json_dict(src) if src is not None else None
    probe = cfg or HyenaDNAConfig()
    renamed = {}
    for k, v in raw.items():  # rename only, to infer shapes
        for p in _PREFIXES:
            if k.startswith(p):
                renamed["backbone." + k[len(p) :]] = v
    if "backbone.embeddings.word_embeddings.weight" not in renamed:
        head = next((raw[k] for k in _HEAD_KEYS if k in raw), None)
        if head is None:
            raise ValueError("not a HyenaDNA state dict: no word embeddings and no lm_head found")
        renamed["backbone.embeddings.word_embeddings.weight"] = head
    inferred = infer_hyenadna_config(
        renamed, w=probe.w, shift=probe.shift, modulate=probe.modulate, layer_norm_epsilon=probe.layer_norm_epsilon
    )
    if cfg is None:
        cfg = inferred
    else:
        for f in ("d_model", "n_layer", "d_inner", "l_max", "order", "filter_order", "emb_dim", "short_filter_order"):
            if getattr(cfg, f) != getattr(inferred, f):
                raise ValueError(f"HyenaDNA config says {f}={getattr(cfg, f)} but the weights have {getattr(inferred, f)}")
        if cfg.padded_vocab != inferred.vocab_size:
            raise ValueError(f"config vocabulary pads to {cfg.padded_vocab} rows, the embedding has {inferred.vocab_size}")
    sd = convert_hyenadna_state_dict(raw, cfg)
    model = HyenaDNAModel(cfg)
    own = model.state_dict()
    derived = [k for k in own if k not in sd and k.endswith(("pos_emb.z", "pos_emb.t", "modulation.deltas"))]
    if derived:  # deterministic functions of the config: rebuild rather than fail
        warnings.warn(f"HyenaDNA checkpoint lacks {len(derived)} derived buffer(s), rebuilt from the config: {derived[:3]}", stacklevel=2)
        sd.update({k: own[k] for k in derived})
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"HyenaDNA checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
