"""LanguageModel: tied head, generate with step == greedy full re-runs, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from longstream.backbones import CheckpointError, LanguageModel, list_backbones
from longstream.backbones.io import sha256_file

V = 37


ALL_TEST_PRESETS = list_backbones("test_")


def lm(name: str = "test_transformer", **kw) -> LanguageModel:
    # a preset naming an unregistered mixer fails here (it is never skipped)
    torch.manual_seed(0)
    return LanguageModel(V, name, **kw).eval()


def test_shapes_tied_and_padded_vocab():
    m = lm()
    assert m.padded_vocab_size == 40 and m.embedding.weight.shape == (40, 16)
    assert m.lm_head.weight is m.embedding.weight
    ids = torch.randint(0, V, (2, 7))
    logits, state = m(ids)
    assert logits.shape == (2, 7, V) and len(state) == 2
    untied = lm(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.embedding.weight
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 37\)"):
        m(torch.tensor([[0, 37]]))
    with pytest.raises(ValueError, match="batch, length"):
        m(torch.tensor([1, 2]))


@pytest.mark.parametrize("name", ALL_TEST_PRESETS)
@torch.no_grad()
def test_generate_with_step_equals_greedy_full_reruns(name):
    m = lm(name)
    if not m.backbone.supports_step:
        pytest.skip(f"{name} is not causal/streamable")
    # make the logits peaky enough that greedy choices are not near-ties
    m.embedding.weight.mul_(20)
    prompt = torch.randint(0, V, (2, 5))
    out = m.generate(prompt, max_new_tokens=8)
    assert out.shape == (2, 13) and torch.equal(out[:, :5], prompt)
    seq = prompt
    for _ in range(8):
        nxt = m(seq)[0][:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(out, seq)


@torch.no_grad()
def test_sampling_is_seeded_and_top_k_one_is_greedy():
    m = lm()
    prompt = torch.randint(0, V, (3, 4))
    a = m.generate(prompt, 6, temperature=1.0, seed=123)
    b = m.generate(prompt, 6, temperature=1.0, seed=123)
    assert torch.equal(a, b)
    assert torch.equal(m.generate(prompt, 6, temperature=0.7, top_k=1, seed=5), m.generate(prompt, 6))
    assert int(a.max()) < V


@torch.no_grad()
def test_generate_stops_at_eos():
    m = lm()
    prompt = torch.randint(0, V, (2, 3))
    greedy = m.generate(prompt, 6)
    eos = int(greedy[0, 3])  # the first generated token of row 0
    out = m.generate(prompt, 6, eos_token_id=eos)
    assert (out[0, 3:] == eos).all()


def test_generate_needs_a_causal_backbone():
    m = lm("test_attention_bi")
    with pytest.raises(NotImplementedError, match="causal backbone with step"):
        m.generate(torch.zeros(1, 3, dtype=torch.long), 2)


@torch.no_grad()
def test_save_load_roundtrip(tmp_path):
    m = lm("test_transformer", tie_embeddings=True)
    path = m.save_pretrained(tmp_path / "lm", model_card="# tiny\n")
    files = sorted(p.name for p in path.iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((path / "config.json").read_text())
    rec = cfg["files"]["model.safetensors"]
    assert rec["size"] == (path / "model.safetensors").stat().st_size and cfg["vocab_size"] == V
    assert rec["sha256"] == sha256_file(path / "model.safetensors")
    assert cfg["tied_weights"] == {"lm_head.weight": "embedding.weight"}  # the tied head is stored once
    m2 = LanguageModel.from_pretrained(path)
    assert m2.lm_head.weight is m2.embedding.weight
    ids = torch.randint(0, V, (2, 6))
    assert torch.equal(m(ids)[0], m2(ids)[0])
    # overwriting an existing checkpoint is atomic and leaves no temporary directories
    m.save_pretrained(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]


def test_corrupt_or_missing_checkpoint_errors(tmp_path):
    m = lm()
    path = m.save_pretrained(tmp_path / "lm")
    w = path / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: sha256"):
        LanguageModel.from_pretrained(path)
    w.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        LanguageModel.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LanguageModel.from_pretrained(tmp_path / "nowhere")
    m.save_pretrained(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        LanguageModel.from_pretrained(path)
