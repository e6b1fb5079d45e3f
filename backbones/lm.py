"""Language model wrapper: token embedding -> backbone (with final norm) -> tied LM head.

The layout of ``mamba_ssm``'s ``MambaLMHeadModel`` (Gu & Dao, "Mamba: Linear-Time
Sequence Modeling with Selective State Spaces", 2023) for any longstream backbone,
with the embedding and head weights tied (Press & Wolf, "Using the Output Embedding
to Improve Language Models", 2017) and the vocabulary padded to a multiple of
``pad_vocab_size_multiple``. ``generate`` prefills the prompt with one ``forward``
(chunked prefill is the caller's choice) and then decodes with O(1)-per-token
``step``; :meth:`LanguageModel.quantize` opts decoding in to int8 / bf16 projection and head
weights (:mod:`longstream.backbones.lowp`). Checkpoints are written and read by :mod:`longstream.backbones.io`
(``model.safetensors`` + ``config.json`` with its sha256 manifest; the tied head is
stored once and recorded in ``tied_weights``).

Axis legend: b batch, l length, d model width, v vocabulary (padded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import State
from .block import Block
from .config import BackboneConfig
from .hugepages import move_to_hugepages
from .io import CONFIG_NAME, CheckpointError, load_weights_dir, save_weights_dir, sha256_file
from .lowp import quantize_decode
from .mamba import Mamba
from .ops import cpu_kernels
from .registry import backbone_config
from .stack import SequenceBackbone

__all__ = ["CheckpointError", "LanguageModel", "load_checkpoint", "save_checkpoint", "sha256_file"]


def save_checkpoint(
    directory: str | Path,
    tensors: dict[str, Tensor],
    config: dict[str, Any],
    extra_files: dict[str, str] | None = None,
    *,
    card: str | None = None,
) -> Path:
    """Write a checkpoint directory through :func:`longstream.backbones.io.save_weights_dir`."""
    return save_weights_dir(directory, tensors, config, card=card, extra_files=extra_files)


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict[str, Tensor]]:
    """Read ``(config, tensors)`` through :func:`longstream.backbones.io.load_weights_dir` (verified).

    Raises ``FileNotFoundError`` (:class:`~longstream.backbones.io.CheckpointNotFoundError`)
    naming a missing file and :class:`CheckpointError` for a corrupt one.
    """
    return load_weights_dir(directory, map_location=map_location)


# ---------------------------------------------------------------------- fused decode
def decode_linear_ok(w: Tensor) -> bool:
    """The compiled decode GEMV applies to weight ``w`` (o, i): contiguous, i % 8 == 0."""
    return w.is_contiguous() and w.shape[1] % 8 == 0 and cpu_kernels.has_op("decode_linear")


def decode_linear(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """x (b, i) float32 -> x w^T + bias (b, o): the bandwidth-bound GEMV of ``csrc/decode_cpu.cpp``,
    threaded on its decode pool (torch's thread count, weights >= 1 MB) and float32 throughout."""
    empty = _EMPTY
    return cpu_kernels.ops().decode_linear(x.contiguous(), w, empty, empty if bias is None else bias)


_EMPTY = torch.empty(0)


def _fused_layers(lm: LanguageModel) -> list[tuple[Block, Mamba]] | None:
    """The (block, mixer) pairs when the backbone is pre-norm Mamba blocks only (no MLP), else None."""
    bb = lm.backbone
    key = (id(bb), *(id(blk) for blk in bb.layers), *(id(getattr(blk, "mixer", None)) for blk in bb.layers))
    cached = getattr(lm, "_fused_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    pairs: list[tuple[Block, Mamba]] | None = []
    for blk in bb.layers:
        if not (isinstance(blk, Block) and blk.mlp is None and type(blk.mixer) is Mamba):
            pairs = None
            break
        pairs.append((blk, blk.mixer))
    lm._fused_cache = (key, pairs)  # rebuilt when a layer or mixer is replaced
    return pairs


def fused_step(lm: LanguageModel, h: Tensor, state: State) -> tuple[Tensor, State] | None:
    """h (b, d) embedded token -> (normed output (b, d), new state), or None where it does not apply.

    The same arithmetic as ``SequenceBackbone.step`` over Mamba blocks (``h + mixer(norm(h))``
    per layer, then ``norm_f``), as compiled calls only: ``rms_norm_rows``, ``decode_linear``
    (or the :meth:`LanguageModel.quantize` weights) for in_proj / out_proj, ``mamba_step``."""
    pairs = _fused_layers(lm)
    bb = lm.backbone
    if (
        not pairs
        or h.dtype != torch.float32
        or h.device.type != "cpu"
        or bb.norm_f is None
        or not isinstance(state, (list, tuple))
        or len(state) != len(pairs)
        or not cpu_kernels.has_op("decode_linear")
        or not cpu_kernels.has_op("rms_norm_rows")
    ):
        return None
    blk0, m0 = pairs[0]
    if not (m0._step_fused(h, state[0]) and blk0.norm.weight.dtype == torch.float32):
        return None
    ops = cpu_kernels.ops()
    if cpu_kernels.has_op("lm_step"):
        if not getattr(lm, "_hugepages_tried", False):  # once: weights onto 2 MB pages (~5-10% faster decode)
            lm._hugepages_tried = True
            move_to_hugepages(lm)  # same parameters and values; LONGSTREAM_HUGEPAGES=0 turns it off
        flat = _lm_step_tensors_cached(lm, pairs, h, state)
        if flat is not None:
            res = ops.lm_step(h.contiguous(), flat, [st["conv"].contiguous() for st in state],
                              [st["ssm"].contiguous() for st in state], bb.norm_f.weight, bb.norm_f.eps)
            n = len(pairs)
            return res[0], [{"conv": res[1 + i], "ssm": res[1 + n + i]} for i in range(n)]
    new_states = []
    h = h.contiguous()
    for (blk, m), st in zip(pairs, state):
        if not m._step_fused(h, st):
            return None  # a layer that differs (dtype, backend): the generic path for all
        x = ops.rms_norm_rows(h, blk.norm.weight, blk.norm.eps)  # (b, d)
        lin = getattr(m, "_lowp_linears", None)  # set by LanguageModel.quantize
        if lin is None and not (decode_linear_ok(m.in_proj.weight) and decode_linear_ok(m.out_proj.weight)):
            return None  # widths the compiled GEMV does not take (d % 8 != 0): the generic path
        xz = lin[0](x) if lin is not None else decode_linear(x, m.in_proj.weight, m.in_proj.bias)  # (b, 2e)
        conv_w, conv_b, dtw_t, A = m._step_consts()[:4]
        y, conv, ssm = ops.mamba_step(
            xz.contiguous(), st["conv"].contiguous(), conv_w, conv_b, m.x_proj.weight, dtw_t,
            m.dt_proj.bias, A, m.D, st["ssm"].contiguous(),
        )  # y (b, e), conv (b, e, k-1), ssm (b, e, n)
        out = lin[1](y) if lin is not None else decode_linear(y, m.out_proj.weight, m.out_proj.bias)  # (b, d)
        h = h + out
        new_states.append({"conv": conv, "ssm": ssm})
    return ops.rms_norm_rows(h, bb.norm_f.weight, bb.norm_f.eps), new_states


def _lm_step_tensors_cached(lm: LanguageModel, pairs: list[tuple[Block, Mamba]], h: Tensor, state: State) -> list[Tensor] | None:
    """:func:`_lm_step_tensors`, kept on the model until something it depends on changes: a parameter
    (its storage or in-place version), a low-precision copy (:meth:`LanguageModel.quantize`), a mixer's
    backend, the grad mode, or the dtype / device of the token or the states. Rebuilding the 14 x L
    list costs ~1k module attribute lookups, ~0.5 ms a token for a 24-layer model."""
    params: list = []
    stack: list[nn.Module] = [mod for blk, m in pairs for mod in (blk.norm, m)]
    while stack:  # the modules' own dicts (no attribute lookups): a replaced parameter or submodule shows
        mod = stack.pop()
        for p in mod._parameters.values():  # flat values: one GC-tracked object kept per token, not one per weight
            if p is not None:
                params += (p.data_ptr(), p._version, p.requires_grad, p.dtype)
        stack.extend(c for c in mod._modules.values() if c is not None)
    key = (
        torch.is_grad_enabled(), h.dtype, h.device, cpu_kernels.has_op("mamba_step"), params,
        tuple((getattr(m, "_lowp_linears", None), m.backend) for _, m in pairs),
        tuple((st["conv"].dtype, st["ssm"].dtype) for st in state),
    )
    cached = getattr(lm, "_lm_step_flat", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    flat = _lm_step_tensors(lm, pairs, h, state)
    lm._lm_step_flat = (key, flat)
    return flat


def _lm_step_tensors(lm: LanguageModel, pairs: list[tuple[Block, Mamba]], h: Tensor, state: State) -> list[Tensor] | None:
    """The 14 tensors per layer of ``lm_step`` (``csrc/decode_cpu.cpp``), or None when a layer does not
    fit it (a layer the fused step does not apply to, a norm eps other than ``norm_f``'s, a
    low-precision weight without the compiled GEMV, x_proj / dt_proj biases, weights not contiguous)."""
    eps = lm.backbone.norm_f.eps
    flat: list[Tensor] = []
    for (blk, m), st in zip(pairs, state):
        if (
            not m._step_fused(h, st)
            or blk.norm.eps != eps
            or m.x_proj.bias is not None
            or not (m.x_proj.weight.is_contiguous() and m.D.is_contiguous() and m.dt_proj.bias is not None)
        ):
            return None
        lin = getattr(m, "_lowp_linears", None)
        if lin is not None:
            if lin[0].kernel_args is None or lin[1].kernel_args is None:
                return None
            (w_in, s_in, b_in), (w_out, s_out, b_out) = lin[0].kernel_args, lin[1].kernel_args
        else:
            if not (decode_linear_ok(m.in_proj.weight) and decode_linear_ok(m.out_proj.weight)):
                return None
            w_in, s_in, b_in = m.in_proj.weight, _EMPTY, _EMPTY if m.in_proj.bias is None else m.in_proj.bias
            w_out, s_out, b_out = m.out_proj.weight, _EMPTY, _EMPTY if m.out_proj.bias is None else m.out_proj.bias
        conv_w, conv_b, _, A, xproj_t, dtw = m._step_consts()
        flat += [blk.norm.weight, w_in, s_in, b_in, conv_w, conv_b, xproj_t, dtw, m.dt_proj.bias,
                 A, m.D, w_out, s_out, b_out]
    return flat


# ---------------------------------------------------------------------- model
class LanguageModel(nn.Module):
    """``embedding`` (v, d) -> ``backbone`` (:class:`SequenceBackbone`, ends with
    ``norm_f``) -> ``lm_head`` (d -> v, tied to the embedding by default).

    ``backbone`` is a :class:`BackboneConfig` or a registered preset name;
    ``backbone_overrides`` are applied to a preset (``d_model=64``, ...).
    Logits cover the real vocabulary (the padding rows of the embedding are cut).
    """

    def __init__(
        self,
        vocab_size: int,
        backbone: BackboneConfig | str,
        tie_embeddings: bool = True,
        pad_vocab_size_multiple: int = 8,
        **backbone_overrides: Any,
    ) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if isinstance(backbone, str):
            cfg = backbone_config(backbone, **backbone_overrides)
        elif backbone_overrides:
            import dataclasses

            cfg = dataclasses.replace(backbone, **backbone_overrides)
        else:
            cfg = backbone
        m = max(1, pad_vocab_size_multiple)
        self.vocab_size = vocab_size
        self.padded_vocab_size = (vocab_size + m - 1) // m * m
        self.pad_vocab_size_multiple = pad_vocab_size_multiple
        self.tie_embeddings = tie_embeddings
        self.embedding = nn.Embedding(self.padded_vocab_size, cfg.d_model)
        self.backbone = SequenceBackbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, self.padded_vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description (what ``config.json`` holds, minus checksums)."""
        return {
            "model_type": "longstream_lm",
            "vocab_size": self.vocab_size,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
            "backbone": self.backbone.cfg.to_dict(),
        }

    def _check_ids(self, input_ids: Tensor) -> None:
        if input_ids.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); got range "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            )

    def forward(
        self, input_ids: Tensor, state: State = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """input_ids (b, l) -> (logits (b, l, vocab_size), backbone state)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        self._check_ids(input_ids)
        h = self.embedding(input_ids.long())  # (b, l, d)
        h, state = self.backbone(h, state, mask=mask)
        logits = self.lm_head(h)[..., : self.vocab_size]  # (b, l, vocab_size)
        return logits, state

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        """Empty streaming state of the backbone."""
        return self.backbone.init_state(batch_size, device=device or self.embedding.weight.device,
                                        dtype=self.embedding.weight.dtype)

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """token (b,) -> (logits (b, vocab_size), new state).

        A stack of pre-norm Mamba blocks on CPU (float32, no autograd, compiled kernels built)
        runs as one loop of compiled calls per layer (:func:`fused_step`):
        RMSNorm, the in_proj GEMV, the fused SSM step, the out_proj GEMV; the other stacks go
        through ``backbone.step``. Both give the same numbers (tests/test_decode.py)."""
        h = self.embedding(token.long())  # (b, d)
        fused = fused_step(self, h, state)
        if fused is not None:
            h, state = fused
        else:
            h, state = self.backbone.step(h, state)
        return self._head_last(h), state

    def _head_last(self, h: Tensor) -> Tensor:
        """h (b, d) -> logits (b, vocab_size); the low-precision head when :meth:`quantize` set one,
        the compiled threaded GEMV (``decode_linear``) for one-token float32 CPU rows."""
        w = self.lm_head.weight
        fast = h.dtype == torch.float32 and h.device.type == "cpu" and not (torch.is_grad_enabled() and w.requires_grad)
        lowp = getattr(self, "_lowp_head", None)
        if lowp is not None and fast:
            return lowp(h)[..., : self.vocab_size]
        if fast and h.dim() == 2 and w.dtype == torch.float32 and decode_linear_ok(w):
            return decode_linear(h, w, self.lm_head.bias)[..., : self.vocab_size]
        return F.linear(h, w, self.lm_head.bias)[..., : self.vocab_size]

    def quantize(self, mode: str | None = "int8") -> LanguageModel:
        """Opt in to low-precision decode weights: ``"int8"`` or ``"bf16"`` (``None`` undoes it).

        Mamba's ``in_proj`` / ``out_proj`` and the LM head get an int8 (per-channel scales) or
        bf16 copy used by ``step`` / ``generate``'s decode loop on CPU without autograd; the SSM
        state, conv and dt path stay float32, and ``forward`` (prefill, training), the float32
        parameters and ``state_dict`` are unchanged. See :mod:`longstream.backbones.lowp`.
        Returns ``self``; call it again after changing the weights."""
        quantize_decode(self, mode)
        return self

    @torch.inference_mode()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
        eos_token_id: int | None = None,
    ) -> Tensor:
        """Continue ``input_ids`` (b, l) by up to ``max_new_tokens`` tokens -> (b, l + n).

        ``temperature == 0`` is greedy; otherwise sample from softmax(logits / T),
        restricted to the ``top_k`` most likely tokens if given, with a generator
        seeded by ``seed``. Rows that emitted ``eos_token_id`` keep emitting it; decoding
        stops early once every row has. The prompt is prefilled with one ``forward``
        and each new token costs one ``step``.
        """
        bb = self.backbone
        if not bb.supports_step:
            raise NotImplementedError(
                f"generate() needs a causal backbone with step(); pattern {bb.cfg.pattern!r} "
                f"(bidirectional={bb.cfg.bidirectional}) has none"
            )
        if input_ids.dim() != 2 or input_ids.shape[1] < 1:
            raise ValueError(f"input_ids must be (batch, length >= 1), got shape {tuple(input_ids.shape)}")
        self._check_ids(input_ids)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=input_ids.device)
            gen.manual_seed(seed)
        if bb.supports_state:  # prefill; only the last position goes through the head
            h, state = bb(self.embedding(input_ids.long()), None)  # (b, l, d)
            last = self._head_last(h[:, -1])  # (b, vocab)
        else:
            state = self.init_state(input_ids.shape[0])
            for t in range(input_ids.shape[1]):
                last, state = self.step(input_ids[:, t], state)
        out = [input_ids.long()]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            tok = _sample(last, temperature, top_k, gen)  # (b,)
            if eos_token_id is not None:
                tok = torch.where(done, torch.full_like(tok, eos_token_id), tok)
                done = done | (tok == eos_token_id)
            out.append(tok[:, None])
            if i + 1 == max_new_tokens or (eos_token_id is not None and bool(done.all())):
                break
            last, state = self.step(tok, state)
        return torch.cat(out, dim=1)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path, model_card: str | None = None) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (+ ``README.md``) atomically."""
        return save_weights_dir(directory, self.state_dict(), self.config, card=model_card)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> LanguageModel:
        """Load a model written by :meth:`save_pretrained`; the sha256 is verified."""
        config, tensors = load_checkpoint(directory, map_location=map_location)
        if config.get("model_type") != "longstream_lm":
            raise CheckpointError(
                f"{Path(directory) / CONFIG_NAME} has model_type {config.get('model_type')!r}, "
                "expected 'longstream_lm'"
            )
        model = cls(
            config["vocab_size"],
            BackboneConfig.from_dict(config["backbone"]),
            tie_embeddings=config.get("tie_embeddings", True),
            pad_vocab_size_multiple=config.get("pad_vocab_size_multiple", 8),
        )
        if model.tie_embeddings and "embedding.weight" in tensors:
            tensors.setdefault("lm_head.weight", tensors["embedding.weight"])
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise CheckpointError(f"weights in {directory} do not fit the model in its config.json: {e}") from None
        return model.to(map_location)


def _sample(logits: Tensor, temperature: float, top_k: int | None, gen: torch.Generator | None) -> Tensor:
    """logits (b, v) -> token ids (b,)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (b, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]
