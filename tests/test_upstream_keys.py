"""The pinned upstream key lists (tests/fixtures/upstream_keys/) against upstream code where it is installed.

transformers is upstream for its Mamba / Mamba-2 layouts: a tiny model's ``state_dict()``
must have exactly the pinned keys and shapes. The mamba_ssm and HyenaDNA lists were
written from their source (not installed here); their internal consistency is checked
against the published sizes of the reference checkpoints.
"""

from __future__ import annotations

import pytest
import torch

import upstream_keys

TINY_M1 = {"d_model": 32, "n_layer": 2, "vocab_rows": 64, "d_inner": 64, "d_state": 8, "d_conv": 4, "dt_rank": 2}
TINY_M2 = {"d_model": 32, "n_layer": 2, "vocab_rows": 64, "d_inner": 64, "d_state": 8, "d_conv": 4, "ngroups": 2,
           "headdim": 8, "nheads": 8}


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_transformers_layout_matches_installed_transformers(kind):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "mamba":
        cfg = transformers.MambaConfig(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                                       conv_kernel=4, use_mambapy=False)
        model, dims = transformers.MambaForCausalLM(cfg), TINY_M1
    else:
        cfg = transformers.Mamba2Config(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                                        head_dim=8, num_heads=8, n_groups=2, tie_word_embeddings=False)
        model, dims = transformers.Mamba2ForCausalLM(cfg), TINY_M2
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == upstream_keys.shapes(f"transformers_{kind}", dims)


def test_mamba_ssm_layouts_differ_from_transformers_only_in_the_embedding_name():
    for m in ("mamba1", "mamba2"):
        ssm = upstream_keys.fixture(f"mamba_ssm_{m}")["keys"]
        hf = upstream_keys.fixture(f"transformers_{'mamba' if m == 'mamba1' else 'mamba2'}")["keys"]
        assert set(ssm) ^ set(hf) == {"backbone.embedding.weight", "backbone.embeddings.weight"}


def test_reference_sizes_match_published_parameter_counts():
    """mamba-130m: 129.1M parameters (tied head counted once); hyenadna-tiny-1k: 0.44M."""
    fx = upstream_keys.fixture("mamba_ssm_mamba1")
    n = sum(torch.Size(s).numel() for k, s in upstream_keys.shapes("mamba_ssm_mamba1", fx["reference_dims"]).items()
            if k != "lm_head.weight")
    assert 129.0e6 < n < 129.3e6, n
    fx = upstream_keys.fixture("hyenadna_lightning")
    shapes = upstream_keys.shapes("hyenadna_lightning", fx["reference_dims"])
    n = sum(torch.Size(s).numel() for k, s in shapes.items()
            if k != "model.lm_head.weight" and not k.endswith(("pos_emb.t", "deltas")))
    assert 0.40e6 < n < 0.48e6, n
