"""The template on the shared parts: contract additions, old checkpoint keys, padded predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longstream.pipelines._template import config as tcfg
from longstream.pipelines._template.evaluate import METRIC_KEYS, evaluate, predict
from longstream.pipelines._template.model import LEGACY_KEYS, build_model, example_batch, from_pretrained
from longstream.pipelines.common import SequenceClassifier, UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", sorted(tcfg.PRESETS))
def test_every_preset_builds_and_runs_example_batch(preset):
    cfg = tcfg.PRESETS[preset]()
    model = build_model(cfg).eval()
    assert isinstance(model.head, SequenceClassifier)
    batch = example_batch(cfg, batch_size=3)
    assert batch["x"].shape[1] <= 8  # tiny input whatever the preset's length
    out = model(**batch)
    assert out.shape == (3, cfg.data.n_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("pool", ["mean", "last", "attention", "max"])
def test_right_padding_does_not_change_logits(pool):
    cfg = tcfg.tiny()
    cfg.model.pool = pool
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    a, b = torch.randn(12), torch.randn(7)
    x = torch.zeros(2, 12)
    x[0], x[1, :7] = a, b
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0], mask[1, :7] = True, True
    with torch.no_grad():
        batched = model(x, mask)
        x[1, 7:] = 50.0  # other padding values: same logits
        torch.testing.assert_close(model(x, mask), batched)
        torch.testing.assert_close(batched[1], model(b[None])[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[0], model(a[None])[0], atol=1e-5, rtol=1e-5)


def test_bad_pool_is_a_user_error():
    cfg = tcfg.tiny()
    cfg.model.pool = "median"
    with pytest.raises(UserError, match="unknown pooling 'median'"):
        build_model(cfg)


def test_shipped_checkpoint_uses_old_key_names_and_still_reproduces_metrics():
    from safetensors.torch import load_file

    d = REPO / "checkpoints/template/sine-attn"
    old = load_file(d / "model.safetensors")
    assert set(LEGACY_KEYS) <= set(old)  # written before the shared head
    model = from_pretrained("template/sine-attn")
    torch.testing.assert_close(model.head.mlp.weight, old["head.weight"])
    m = evaluate("template/sine-attn")
    assert set(METRIC_KEYS) <= set(m) and json.dumps(m, allow_nan=False)
    rec = json.loads((d / "config.json").read_text())["metrics"]
    assert m["accuracy"] == pytest.approx(rec["accuracy"]) and m["loss"] == pytest.approx(rec["loss"], rel=1e-4)
    assert 0.9 < m["macro_f1"] <= 1 and 0.85 < m["mcc"] <= 1


def test_predict_pads_inputs_of_different_lengths():
    one = predict("template/sine-attn", ["gen:1"])
    short = "0,1,0,-1,0,1,0,-1,0,1,0,-1,0,1,0,-1"
    both = predict("template/sine-attn", ["gen:1", short])
    alone = predict("template/sine-attn", [short])
    assert both[0]["label"] == one[0]["label"] == 1
    assert both[0]["probs"] == pytest.approx(one[0]["probs"], abs=1e-4)
    assert both[1]["probs"] == pytest.approx(alone[0]["probs"], abs=1e-4)
