"""Converters: logit / hidden-state parity against transformers' Mamba and Mamba2 (the
oracle runs in a subprocess where mamba_ssm, causal_conv1d and hub kernels cannot be
imported, so transformers takes its pure-PyTorch path), and round trips of synthetic
mamba_ssm-layout checkpoints (config.json + pytorch_model.bin / model.safetensors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import upstream_keys  # tests/upstream_keys.py: the pinned upstream layouts
from longstream.backbones.convert import ConversionError, convert_checkpoint, load_hf, load_mamba_ssm
from longstream.backbones.lm import LanguageModel

torch.set_num_threads(1)
pytest.importorskip("transformers")

ORACLE = textwrap.dedent(
    """
    import sys
    for name in ("mamba_ssm", "causal_conv1d", "mambapy", "kernels"):
        sys.modules[name] = None  # make `import name` fail: transformers uses its torch path
    import os, torch
    torch.set_num_threads(1)
    import transformers

    def make(kind, out):
        torch.manual_seed(0)
        if kind == "mamba":
            cfg = transformers.MambaConfig(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2,
                                           expand=2, conv_kernel=4, use_mambapy=False)
            model = transformers.MambaForCausalLM(cfg)
        else:
            cfg = transformers.Mamba2Config(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2,
                                            expand=2, head_dim=8, num_heads=8, n_groups=2, chunk_size=8,
                                            tie_word_embeddings=False)
            model = transformers.Mamba2ForCausalLM(cfg)
        model.eval()
        with torch.no_grad():  # move every weight off its (often constant) init so all of them matter
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        ids = torch.randint(0, 64, (2, 37))
        with torch.no_grad():
            logits = model(ids).logits
            hidden = model.backbone(ids).last_hidden_state
        model.save_pretrained(out, safe_serialization=True)
        torch.save({"ids": ids, "logits": logits, "hidden": hidden}, os.path.join(out, "oracle.pt"))

    for kind in ("mamba", "mamba2"):
        make(kind, os.path.join(sys.argv[1], kind))
    print("oracle ok", transformers.__version__)
    """
)


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory) -> Path:
    """Run the transformers oracle once (both models) in a process without mamba_ssm."""
    tmp = tmp_path_factory.mktemp("hf_oracle")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", ORACLE, str(tmp)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"transformers oracle failed:\n{r.stdout}\n{r.stderr[-3000:]}"
    return tmp


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_transformers_parity(kind, oracle_dir):
    tmp_path = oracle_dir / kind
    ref = torch.load(tmp_path / "oracle.pt")
    model = load_hf(tmp_path).eval()
    with torch.no_grad():
        logits, _ = model(ref["ids"])
        hidden, _ = model.backbone(model.embedding(ref["ids"]))
    torch.testing.assert_close(hidden, ref["hidden"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, ref["logits"], atol=1e-4, rtol=1e-4)
    # the same weights in mamba_ssm layout (backbone.embedding.weight + mamba_ssm config.json)
    cfg = json.loads((tmp_path / "config.json").read_text())
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "model.safetensors"))
    sd = {("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v for k, v in sd.items()}
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    ssm_cfg = (
        {"d_state": cfg["state_size"]} if kind == "mamba"
        else {"layer": "Mamba2", "d_state": cfg["state_size"], "headdim": cfg["head_dim"],
              "ngroups": cfg["n_groups"], "chunk_size": cfg["chunk_size"]}
    )
    mcfg = {"d_model": cfg["hidden_size"], "n_layer": cfg["num_hidden_layers"], "vocab_size": cfg["vocab_size"],
            "ssm_cfg": ssm_cfg, "rms_norm": True, "residual_in_fp32": True, "pad_vocab_size_multiple": 8,
            "tie_embeddings": kind == "mamba"}
    m2 = load_mamba_ssm((mcfg, sd)).eval()
    with torch.no_grad():
        torch.testing.assert_close(m2(ref["ids"])[0], ref["logits"], atol=1e-4, rtol=1e-4)
    # streaming after conversion: prefill + step == full forward
    with torch.no_grad():
        _, st = model(ref["ids"][:, :30])
        steps = []
        for t in range(30, 37):
            lt, st = model.step(ref["ids"][:, t], st)
            steps.append(lt)
    torch.testing.assert_close(torch.stack(steps, 1), ref["logits"][:, 30:], atol=1e-4, rtol=1e-4)


TINY = {
    "Mamba1": {"d_model": 16, "n_layer": 2, "vocab_rows": 56, "d_inner": 32, "d_state": 4, "d_conv": 4, "dt_rank": 1},
    "Mamba2": {"d_model": 16, "n_layer": 2, "vocab_rows": 56, "d_inner": 32, "d_state": 8, "d_conv": 4, "ngroups": 2,
               "headdim": 8, "nheads": 4},
}


def _mamba_ssm_dir(tmp: Path, layer: str, vocab: int, fmt: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """A synthetic mamba_ssm checkpoint whose keys and shapes come from the pinned upstream list."""
    dims = TINY[layer]
    sd = upstream_keys.state_dict("mamba_ssm_mamba1" if layer == "Mamba1" else "mamba_ssm_mamba2", dims)
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]  # tie_embeddings=True: mamba_ssm saves both names
    kw = {"d_state": dims["d_state"]} if layer == "Mamba1" else {
        "d_state": dims["d_state"], "headdim": dims["headdim"], "ngroups": dims["ngroups"], "chunk_size": 4}
    cfg = {"d_model": 16, "n_layer": 2, "vocab_size": vocab, "ssm_cfg": {"layer": layer, **kw}, "rms_norm": True,
           "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}
    d = tmp / f"mamba_ssm_{layer}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    if fmt == "bin":
        torch.save(sd, d / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v for k, v in sd.items() if k != "lm_head.weight"}, str(d / "model.safetensors"))
    return d, sd


@pytest.mark.parametrize("layer,fmt", [("Mamba1", "bin"), ("Mamba2", "safetensors")])
def test_mamba_ssm_layout_round_trip(layer, fmt, tmp_path):
    d, sd = _mamba_ssm_dir(tmp_path, layer, vocab=50, fmt=fmt)
    model = load_mamba_ssm(d).eval()
    assert model.padded_vocab_size == 56 and model.tie_embeddings
    ours = model.state_dict()
    for k, v in sd.items():  # every upstream tensor lands, unchanged, where the layout says
        torch.testing.assert_close(ours["embedding.weight" if k == "backbone.embedding.weight" else k], v,
                                   atol=0, rtol=0)
    assert set(ours) == {"embedding.weight" if k == "backbone.embedding.weight" else k for k in sd}
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        ref = model(ids)[0]
        assert ref.abs().max() > 0.1  # the random weights give non-trivial logits
        out = convert_checkpoint(d, tmp_path / "ours")
        assert (Path(out) / "model.safetensors").exists() and (Path(out) / "config.json").exists()
        again = LanguageModel.from_pretrained(out)
        torch.testing.assert_close(again(ids)[0], ref, atol=1e-6, rtol=1e-6)


def test_conversion_errors_are_clear(tmp_path):
    with pytest.raises(ConversionError, match="layout"):
        load_mamba_ssm(({"d_model": 8, "n_layer": 1, "vocab_size": 8}, {"foo": torch.zeros(1)}))
    with pytest.raises(ConversionError, match="attn_layer_idx"):
        load_mamba_ssm(({"d_model": 8, "n_layer": 1, "vocab_size": 8, "attn_layer_idx": [0]}, {"backbone.embedding.weight": torch.zeros(8, 8)}))
    with pytest.raises(ConversionError, match="config.json"):
        load_hf(tmp_path)
