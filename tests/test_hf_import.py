"""``hub import hf:<repo_id>[@rev]`` against a Hugging Face-style server on 127.0.0.1 (tests/hf_server.py).

The synthetic repos hold tiny random weights under the pinned upstream key names
(tests/fixtures/upstream_keys/) and upstream config fields. Each round trip checks that
the imported checkpoint, resolved by name, gives the same logits as the converter applied
directly to the same files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from test_caduceus import _hf_config as caduceus_config
from test_caduceus import upstream_state_dict as caduceus_state_dict
from test_hyenadna_loader import DIMS as HY_DIMS
from test_hyenadna_loader import hf_state_dict, lightning_state_dict

import upstream_keys
from hf_server import HFServer, Repo
from longstream.backbones.convert import load_hf, load_mamba_ssm
from longstream.backbones.hyenadna import load_hyenadna
from longstream.backbones.lm import CheckpointError, LanguageModel
from longstream.pipelines.common import UserError
from longstream.pipelines.hf_import import (
    CADUCEUS_REPOS,
    HYENADNA_SIZES,
    caduceus_from_upstream,
    import_dir,
    import_hf,
    load_imported,
    load_imported_backbone,
)
from longstream.pipelines.hub import Hub

pytest.importorskip("huggingface_hub")
torch.set_num_threads(1)

M1 = {"d_model": 16, "n_layer": 2, "vocab_rows": 56, "d_inner": 32, "d_state": 4, "d_conv": 4, "dt_rank": 1}
M2 = {"d_model": 16, "n_layer": 2, "vocab_rows": 56, "d_inner": 32, "d_state": 8, "d_conv": 4, "ngroups": 2,
      "headdim": 8, "nheads": 4}


def _pt(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _st(sd) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in sd.items()})


def _mamba_ssm_repo(layer: str) -> Repo:
    dims = M1 if layer == "Mamba1" else M2
    sd = upstream_keys.state_dict("mamba_ssm_mamba1" if layer == "Mamba1" else "mamba_ssm_mamba2", dims, seed=1)
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    ssm = {"layer": layer, "d_state": dims["d_state"]}
    if layer == "Mamba2":
        ssm.update(headdim=8, ngroups=2, chunk_size=4)
    cfg = {"d_model": 16, "d_intermediate": 0, "n_layer": 2, "vocab_size": 50, "ssm_cfg": ssm, "attn_layer_idx": [],
           "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
           "pad_vocab_size_multiple": 8, "tie_embeddings": True}
    return Repo({"config.json": json.dumps(cfg).encode(), "pytorch_model.bin": _pt(sd), "README.md": b"# tiny\n"})


def _transformers_repo(kind: str) -> Repo:
    dims = M1 if kind == "mamba" else M2
    sd = upstream_keys.state_dict(f"transformers_{kind}", {**dims, "vocab_rows": 50}, seed=2)
    cfg = {"model_type": kind, "architectures": ["MambaForCausalLM" if kind == "mamba" else "Mamba2ForCausalLM"],
           "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "state_size": dims["d_state"], "expand": 2,
           "conv_kernel": 4, "use_bias": False, "use_conv_bias": True, "layer_norm_epsilon": 1e-5,
           "residual_in_fp32": True, "time_step_rank": "auto"}
    if kind == "mamba":
        sd.pop("lm_head.weight")  # tied: transformers' safetensors stores the embedding only
        cfg["tie_word_embeddings"] = True
    else:
        cfg.update(head_dim=8, num_heads=4, n_groups=2, chunk_size=4, tie_word_embeddings=False)
    return Repo({"config.json": json.dumps(cfg).encode(), "model.safetensors": _st(sd), ".gitattributes": b"*.bin lfs\n"})


def _hyenadna_repo(hf: bool) -> Repo:
    if hf:
        cfg = {"model_type": "hyenadna", "d_model": 16, "n_layer": 2, "d_inner": 32, "vocab_size": 12,
               "pad_vocab_size_multiple": 8, "max_seq_len": HY_DIMS["l_max"], "hyena_order": 2, "filter_order": 8,
               "emb_dim": 5, "short_filter_order": 3, "num_inner_mlps": 2, "activation_freq": 10,
               "layer_norm_epsilon": 1e-5}
        return Repo({"config.json": json.dumps(cfg).encode(), "model.safetensors": _st(hf_state_dict(3))})
    cfg = {"d_model": 16, "n_layer": 2, "d_inner": 32, "vocab_size": 12, "pad_vocab_size_multiple": 8,
           "layer": {"_name_": "hyena", "emb_dim": 5, "filter_order": 8, "short_filter_order": 3,
                     "l_max": HY_DIMS["l_max"], "modulate": True, "w": 10}}
    return Repo({"config.json": json.dumps(cfg).encode(), "weights.ckpt": _pt({"state_dict": lightning_state_dict(4),
                                                                               "epoch": 3})})


def _caduceus_repo(variant: str) -> Repo:
    cfg = {**caduceus_config(variant), "architectures": ["CaduceusForMaskedLM"],
           "auto_map": {"AutoModelForMaskedLM": "modeling_caduceus.CaduceusForMaskedLM"}}
    return Repo({"config.json": json.dumps(cfg).encode(), "model.safetensors": _st(caduceus_state_dict(variant, seed=7)),
                 "modeling_caduceus.py": b"# remote code, never downloaded\n", "README.md": b"# caduceus\n"})


CADUCEUS_PH, CADUCEUS_PS = sorted(CADUCEUS_REPOS)
REPOS = {
    "state-spaces/mamba-tiny": ("mamba_ssm", lambda: _mamba_ssm_repo("Mamba1")),
    "state-spaces/mamba2-tiny": ("mamba_ssm", lambda: _mamba_ssm_repo("Mamba2")),
    "tiny/mamba-tiny-hf": ("transformers", lambda: _transformers_repo("mamba")),
    "tiny/mamba2-tiny-hf": ("transformers", lambda: _transformers_repo("mamba2")),
    "LongSafari/hyenadna-tiny-1k-seqlen": ("hyenadna", lambda: _hyenadna_repo(False)),
    "LongSafari/hyenadna-tiny-1k-seqlen-hf": ("hyenadna", lambda: _hyenadna_repo(True)),
    CADUCEUS_PH: ("caduceus", lambda: _caduceus_repo("ph")),
    CADUCEUS_PS: ("caduceus", lambda: _caduceus_repo("ps")),
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean online environment pointing huggingface_hub at the loopback server."""
    import huggingface_hub.constants as hc

    for v in ("LONGSTREAM_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("LONGSTREAM_HOME", str(tmp_path / "home"))
    return tmp_path


def _serve(monkeypatch, repos: dict[str, Repo]) -> HFServer:
    srv = HFServer(repos).__enter__()
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    return srv


def _direct(layout: str, repo: Repo, tmp: Path):
    """The converter applied directly to the repo's files (no hub, no import)."""
    d = tmp / "direct"
    d.mkdir()
    for f, data in repo.files.items():
        (d / f).write_bytes(data)
    if layout == "mamba_ssm":
        return load_mamba_ssm(d)
    if layout == "transformers":
        return load_hf(d)
    if layout == "caduceus":
        from safetensors.torch import load_file

        return caduceus_from_upstream(load_file(str(d / "model.safetensors")), json.loads((d / "config.json").read_text()))[1]
    return load_hyenadna(d)


def _logits(model, ids):
    with torch.no_grad():
        return model.logits(ids) if hasattr(model, "logits") else model(ids)[0]


@pytest.mark.parametrize("repo_id", list(REPOS))
def test_round_trip(repo_id, env, monkeypatch):
    layout, make = REPOS[repo_id]
    repo = make()
    cache = env / "home"
    with _serve(monkeypatch, {repo_id: repo}) as srv:
        path = import_hf(f"hf:{repo_id}", cache=cache)
        assert path == import_dir(cache, f"hf:{repo_id}")
        n_requests = len(srv.requests)
        hub = Hub(checkpoints_dir=env / "none", registry_files=[], cache_dir=cache)
        assert hub.resolve(f"hf:{repo_id}") == path  # resolves from the cache: no new request
        assert len(srv.requests) == n_requests
        assert not any("README" in r for r in srv.requests)  # only the files the layout needs
    meta = json.loads((path / "config.json").read_text())
    assert meta["source"]["layout"] == layout and meta["source"]["commit"] == repo.commit
    for f, rec in meta["source"]["files"].items():
        import hashlib

        assert rec["sha256"] == hashlib.sha256(repo.files[f]).hexdigest()
    ids = torch.randint(0, 12 if layout in ("hyenadna", "caduceus") else 50, (2, 11))
    ref = _logits(_direct(layout, repo, env), ids)
    model = load_imported(path)
    if layout not in ("hyenadna", "caduceus"):
        model = LanguageModel.from_pretrained(path)
    got = _logits(model.eval(), ids)
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    ent = hub.entry(f"hf:{repo_id}")
    assert ent.domain == "hf" and f"hf:{repo_id}" in hub.entries()
    assert hub.verify(f"hf:{repo_id}") == {f"hf:{repo_id}": []}


def test_cli_import_info_list_and_revision(env, monkeypatch, capsys):
    from longstream.apps.cli import main

    repo = _mamba_ssm_repo("Mamba1")
    with _serve(monkeypatch, {"state-spaces/mamba-tiny": repo}) as srv:
        assert main(["hub", "import", "hf:state-spaces/mamba-tiny@main"]) == 0
        assert any("/revision/main" in r for r in srv.requests)
        assert main(["hub", "import", "hf:state-spaces/mamba-tiny@nope"]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "revision 'nope'" in err
    assert main(["hub", "info", "hf:state-spaces/mamba-tiny@main", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["name"] == "hf:state-spaces/mamba-tiny@main" and rec["files"]["model.safetensors"]["sha256"]
    assert main(["hub", "list", "--json"]) == 0
    assert "hf:state-spaces/mamba-tiny@main" in {e["name"] for e in json.loads(capsys.readouterr().out)}
    assert main(["hub", "list"]) == 0
    assert "hf:state-spaces/mamba-tiny@main" in capsys.readouterr().out


def test_cut_download_resumes(env, monkeypatch):
    import re

    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "DOWNLOAD_CHUNK_SIZE", 256)  # the client writes what it got in 256-byte chunks
    repo = _mamba_ssm_repo("Mamba1")
    with _serve(monkeypatch, {"state-spaces/mamba-tiny": repo}) as srv:
        srv.cut_once["pytorch_model.bin"] = 700
        path = import_hf("hf:state-spaces/mamba-tiny", cache=env / "home")
        gets = [r for r in srv.requests if r.startswith("GET") and r.split()[1].endswith("pytorch_model.bin")]
    assert len(gets) == 2 and "bytes=" not in gets[0]
    m = re.search(r"bytes=(\d+)-$", gets[1])  # the second request resumed where the cut left the file
    assert m and 0 < int(m.group(1)) <= 700
    assert "pytorch_model.bin" not in srv.cut_once
    model = LanguageModel.from_pretrained(path)  # sha256 of the converted weights verified on load
    ids = torch.randint(0, 50, (1, 7))
    torch.testing.assert_close(_logits(model, ids), _logits(_direct("mamba_ssm", repo, env), ids))


def test_wrong_checksum_is_refused(env, monkeypatch):
    repo = _mamba_ssm_repo("Mamba1")
    bad = bytearray(repo.files["pytorch_model.bin"])
    bad[-10] ^= 0xFF  # same size, different bytes than the published sha256
    with _serve(monkeypatch, {"state-spaces/mamba-tiny": repo}) as srv:
        srv.corrupt["pytorch_model.bin"] = bytes(bad)
        with pytest.raises(UserError, match=r"pytorch_model.bin failed verification.*sha256"):
            import_hf("hf:state-spaces/mamba-tiny", cache=env / "home")
        gets = [r for r in srv.requests if r.startswith("GET") and "pytorch_model.bin" in r]
        assert len(gets) == 2  # one fresh re-fetch, then refused
    assert not (import_dir(env / "home", "hf:state-spaces/mamba-tiny") / "config.json").exists()


def test_corrupted_import_is_detected_on_load(env, monkeypatch):
    with _serve(monkeypatch, {"tiny/mamba2-tiny-hf": _transformers_repo("mamba2")}):
        path = import_hf("hf:tiny/mamba2-tiny-hf", cache=env / "home")
    w = path / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_imported(path)
    hub = Hub(checkpoints_dir=env / "none", registry_files=[], cache_dir=env / "home")
    assert any("sha256" in p and "does not match" in p for p in hub.verify("hf:tiny/mamba2-tiny-hf")["hf:tiny/mamba2-tiny-hf"])


def test_unknown_layout_is_one_clear_error(env, monkeypatch):
    repo = Repo({"config.json": json.dumps({"model_type": "llama", "hidden_size": 8}).encode(),
                 "model.safetensors": _st({"model.embed_tokens.weight": torch.zeros(4, 8)})})
    with _serve(monkeypatch, {"meta/llama-tiny": repo}):
        with pytest.raises(UserError) as e:
            import_hf("hf:meta/llama-tiny", cache=env / "home")
    msg = str(e.value)
    assert "hf:meta/llama-tiny" in msg and "model.safetensors" in msg and "'llama'" in msg
    assert all(k in msg for k in ("mamba_ssm", "transformers", "hyenadna"))


def test_bad_names_and_missing_repo(env, monkeypatch):
    for bad in ("hf:nope", "hf:a/b/c", "hf:a/../b", "hf:a/b@", "hf:a/b@x..y"):
        with pytest.raises(UserError, match="hf:<owner>/<repo>"):
            import_hf(bad, cache=env / "home")
    with _serve(monkeypatch, {}):
        with pytest.raises(UserError, match="no such repository"):
            import_hf("hf:nobody/nothing", cache=env / "home")


@pytest.mark.parametrize("var", ["LONGSTREAM_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_connects(var, env, monkeypatch):
    repo = _mamba_ssm_repo("Mamba1")
    cache = env / "home"
    with _serve(monkeypatch, {"state-spaces/mamba-tiny": repo}) as srv:
        path = import_hf("hf:state-spaces/mamba-tiny", cache=cache)
        srv.requests.clear()
        monkeypatch.setenv(var, "1")
        hub = Hub(checkpoints_dir=env / "none", registry_files=[], cache_dir=cache)
        assert hub.resolve("hf:state-spaces/mamba-tiny") == path
        assert import_hf("hf:state-spaces/mamba-tiny", cache=cache) == path
        with pytest.raises(UserError, match="OFFLINE"):
            hub.resolve("hf:state-spaces/mamba2-tiny")
        with pytest.raises(UserError, match="OFFLINE"):
            import_hf("hf:state-spaces/mamba-tiny", cache=cache, force=True)
        assert srv.requests == []


def test_missing_huggingface_hub_names_the_extra(env, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(UserError, match=r"longstream\[hub\]"):
        import_hf("hf:state-spaces/mamba-tiny", cache=env / "home")


# ----------------------------------------------------------------------------- genomics: sizes, Caduceus, fine-tuning entry
def test_every_hyenadna_size_is_known_and_converts_by_shape():
    """Each published size's pinned config.json gives a model whose converted tensors have
    exactly the shapes of the pinned Lightning key list at that size (built on meta)."""
    from longstream.backbones.hyenadna import HyenaDNAConfig, HyenaDNAModel

    sizes = upstream_keys.fixture("hyenadna_sizes")["sizes"]
    assert set(sizes) == set(HYENADNA_SIZES) and len(sizes) == 7
    for repo, rec in sizes.items():
        cfg = HyenaDNAConfig.from_json_dict(rec["config"])
        d, n, longest = HYENADNA_SIZES[repo]
        assert (cfg.d_model, cfg.n_layer, cfg.l_max - 2) == (d, n, longest) == (d, n, rec["max_seq_len"]), repo
        dims = {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "d_inner": cfg.d_inner, "vocab_rows": cfg.padded_vocab,
                "order": cfg.order, "l_max": cfg.l_max, "emb_dim": cfg.emb_dim, "filter_order": cfg.filter_order,
                "short_filter_order": cfg.short_filter_order}
        upstream = {"backbone." + k[len("model.backbone."):]: v
                    for k, v in upstream_keys.shapes("hyenadna_lightning", dims).items() if k.startswith("model.backbone.")}
        with torch.device("meta"):
            ours = {k: tuple(v.shape) for k, v in HyenaDNAModel(cfg).state_dict().items() if k != "lm_head.weight"}
        assert ours == upstream, repo


def test_caduceus_layout_is_detected():
    from longstream.pipelines.hf_import import detect_hf_layout

    files = ["config.json", "model.safetensors", "modeling_caduceus.py", "tokenizer_config.json"]
    assert detect_hf_layout(files, {"model_type": "caduceus"}) == ("caduceus", ["model.safetensors"])
    with pytest.raises(UserError, match="caduceus"):
        detect_hf_layout(["config.json"], {"model_type": "caduceus"}, "kuleshov-group/x")


@pytest.mark.parametrize("repo_id", ["LongSafari/hyenadna-tiny-1k-seqlen", "state-spaces/mamba-tiny", CADUCEUS_PH,
                                     CADUCEUS_PS])
def test_load_imported_backbone_rebuilds_the_features(repo_id, env, monkeypatch):
    """What gen-pipe's ``--model.init DIR`` loads: the backbone config + weights + embedding,
    from which a fresh embedding -> backbone reproduces the imported model's hidden states."""
    from longstream.backbones.hyenadna import HyenaDNAModel
    from longstream.backbones.stack import SequenceBackbone

    layout, make = REPOS[repo_id]
    with _serve(monkeypatch, {repo_id: make()}):
        path = import_hf(f"hf:{repo_id}", cache=env / "home")
    imp = load_imported_backbone(path)
    assert imp.name == f"hf:{repo_id}" and imp.config["source"]["layout"] == layout
    ids = torch.randint(7, 12, (2, 10))
    with torch.no_grad():
        if imp.kind == "hyenadna":
            fresh = HyenaDNAModel(imp.backbone_config)
            fresh.backbone.load_state_dict({**imp.backbone_state,
                                            "embeddings.word_embeddings.weight": imp.embedding_state["weight"]})
            want, got = imp.model(ids), fresh(ids)
        else:
            bb = SequenceBackbone(imp.backbone_config)
            bb.load_state_dict(imp.backbone_state)
            kw = {"complement": imp.complement_map} if imp.rc_equivariant else {}
            fresh_emb = type(imp.model.embedding)(imp.vocab_size, imp.d_model, **kw)
            fresh_emb.load_state_dict(imp.embedding_state)
            got = bb(fresh_emb(ids))[0]
            want = imp.model.hidden(ids) if imp.rc_equivariant else imp.model.backbone(imp.model.embedding(ids))[0]
    assert got.shape == (2, 10, imp.d_model) and want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert imp.rc_equivariant == (repo_id == CADUCEUS_PS)
    assert imp.kind == {"hyenadna": "hyenadna", "mamba_ssm": "lm"}.get(layout, "rc_lm" if imp.rc_equivariant else "lm")


def test_load_imported_backbone_names_a_bad_directory(tmp_path):
    with pytest.raises(UserError, match="not an imported checkpoint"):
        load_imported_backbone(tmp_path)
