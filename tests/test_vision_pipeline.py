"""Vision pipeline (issue 15): IDX reader, image inputs, models, train / evaluate / predict.

Tiny models on CPU; the real Fashion-MNIST files come from ``$LONGSTREAM_DATA`` (skipped
when absent). The shipped checkpoint's reproduction is in tests/test_contract.py.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from longstream.pipelines.common import UserError
from longstream.pipelines.vision import config as C
from longstream.pipelines.vision import data as D
from longstream.pipelines.vision import evaluate as E
from longstream.pipelines.vision import model as M
from longstream.pipelines.vision.cli import main as cli_main


def _idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_idx_dir(d: Path, n_train: int = 96, n_test: int = 40, size: int = 28) -> Path:
    """A small IDX folder with a learnable task: class k has a bright band at row 2k+4."""
    g = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = g.integers(0, 40, (n, size, size)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, 2 * k + 4: 2 * k + 6] = 250
        (d / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(x)))
        (d / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(y)))
    return d


# ---------------------------------------------------------------------------- IDX
def test_idx_round_trip_gzip_and_raw(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(a)))
    (tmp_path / "a").write_bytes(_idx_bytes(a))
    assert np.array_equal(D.read_idx(tmp_path / "a.gz"), a)
    assert np.array_equal(D.read_idx(tmp_path / "a"), a)


@pytest.mark.parametrize("case,needle", [
    ("magic", "bad magic"), ("dtype", "unsupported type"), ("truncated", "truncated or corrupt"),
    ("badgzip", "un-gzipped"), ("header", "truncated header"),
])
def test_corrupt_idx_is_one_user_error(tmp_path, case, needle):
    good = _idx_bytes(np.zeros((3, 4, 4), np.uint8))
    raw = {"magic": b"\x12\x34" + good[2:], "dtype": good[:2] + b"\x0d" + good[3:],
           "truncated": good[:-5], "header": good[:9], "badgzip": b"\x1f\x8b" + b"garbage" * 3}[case]
    p = tmp_path / "bad-idx3-ubyte"
    p.write_bytes(raw)
    with pytest.raises(UserError, match=needle) as e:
        D.read_idx(p)
    assert str(p) in str(e.value)


def test_fashion_mnist_test_split_shape_and_labels():
    pytest.importorskip("longstream.pipelines.datasets")
    try:
        s = D.load_split(C.release(), "test")
    except UserError:
        pytest.skip("Fashion-MNIST not installed under $LONGSTREAM_DATA")
    assert s.x.shape == (10000, 1, 28, 28) and s.x.dtype == torch.uint8
    assert torch.bincount(s.y).tolist() == [1000] * 10  # the test set is balanced
    tr = D.load_split(C.release(), "train")
    assert len(tr.x) == 59000  # the last val_size=1000 training images are held out


# ---------------------------------------------------------------------------- images
def _png(path: Path, mode: str, size: tuple[int, int], color) -> Path:
    from PIL import Image

    Image.new(mode, size, color).save(path)
    return path


def test_rgb_image_is_converted_to_grey_and_resized(tmp_path):
    from PIL import Image

    im = Image.new("RGB", (300, 150), (0, 0, 0))  # a wide dark image with a red square
    im.paste((255, 0, 0), (100, 50, 200, 100))
    im.save(tmp_path / "wide.png")
    x = D.load_image(tmp_path / "wide.png", C.DataConfig())
    assert x.shape == (1, 28, 28) and x.dtype == torch.uint8
    # aspect ratio kept: 300x150 -> 28x14, centred on a black square (rows 0..6 stay black)
    assert int(x[0, :6].max()) == 0 and int(x[0, 7:21].max()) > 0
    # ITU-R 601 luma of pure red is 0.299 * 255 = 76
    assert abs(int(x[0, 14, 14]) - 76) <= 2
    x3 = D.load_image(tmp_path / "wide.png", C.DataConfig(in_chans=3))
    assert x3.shape == (3, 28, 28) and int(x3[0, 14, 14]) > 200 and int(x3[1, 14, 14]) < 10


def test_light_background_is_inverted_and_alpha_composited(tmp_path):
    x = D.load_image(_png(tmp_path / "w.png", "L", (28, 28), 255), C.DataConfig())
    assert int(x.max()) == 0  # white photo background -> black (Fashion-MNIST is light on black)
    x = D.load_image(_png(tmp_path / "w.png", "L", (28, 28), 255), C.DataConfig(invert="never"))
    assert int(x.min()) == 255
    x = D.load_image(_png(tmp_path / "t.png", "RGBA", (28, 28), (255, 255, 255, 0)), C.DataConfig())
    assert int(x.max()) == 0  # fully transparent -> composited on black, not inverted


@pytest.mark.parametrize("kind", ["text", "truncated", "empty", "missing"])
def test_bad_image_file_is_one_user_error(tmp_path, kind):
    p = tmp_path / f"bad-{kind}.png"
    if kind == "text":
        p.write_text("hello")
    elif kind == "truncated":
        _png(tmp_path / "ok.png", "L", (64, 64), 128)
        p.write_bytes((tmp_path / "ok.png").read_bytes()[:40])
    elif kind == "empty":
        p.write_bytes(b"")
    with pytest.raises(UserError, match="bad-" + kind) as e:
        D.load_image(p, C.DataConfig())
    assert "\n" not in str(e.value)


def test_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    p = _png(tmp_path / "big.png", "L", (400, 300), 0)
    monkeypatch.setattr(D, "MAX_PIXELS", 100_000)
    with pytest.raises(UserError, match=r"400x300 pixels is more than"):
        D.load_image(p, C.DataConfig())


def test_npy_input_is_checked(tmp_path):
    dc = C.DataConfig()
    np.save(tmp_path / "ok.npy", np.full((28, 28), 0.4))
    assert int(E.load_input(str(tmp_path / "ok.npy"), dc)[0, 3, 3]) == 102  # 0.4 * 255
    np.save(tmp_path / "hwc.npy", np.zeros((28, 28, 3), np.uint8))
    assert E.load_input(str(tmp_path / "hwc.npy"), dc).shape == (1, 28, 28)
    a = np.zeros((28, 28))
    a[4, 5] = 2.0
    np.save(tmp_path / "range.npy", a)
    with pytest.raises(UserError, match=r"range.npy: pixel \[4, 5\] is 2, outside \[0, 1\]"):
        E.load_input(str(tmp_path / "range.npy"), dc)
    a[4, 5] = 1e308
    np.save(tmp_path / "big.npy", a)
    with pytest.raises(UserError, match="overflows float32"):
        E.load_input(str(tmp_path / "big.npy"), dc)


# ---------------------------------------------------------------------------- models
@pytest.mark.parametrize("kind,pool", [("vim", "cls"), ("vim", "mean"), ("vit", "cls"), ("seqpix", "last"),
                                       ("timm", "cls")])
def test_model_kinds_forward_and_backward(kind, pool):
    cfg = C.tiny()
    cfg.model.kind, cfg.model.pool = kind, pool
    if kind in ("vit", "timm"):
        cfg.model.vit_heads = 2
    if kind == "seqpix":
        cfg.backbone.bidirectional = False
        cfg.data.img_size = 8
    m = M.build_model(cfg)
    x = torch.randn(3, 1, cfg.data.img_size, cfg.data.img_size, requires_grad=True)
    y = m(x)
    assert y.shape == (3, 10) and torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_vim_mixes_both_directions_and_the_middle_class_token():
    """The bidirectional backbone makes every output depend on every patch, the first as well
    as the last (a causal stack with a middle class token would ignore the last patches)."""
    cfg = C.tiny()
    cfg.model.pool = "cls"
    m = M.build_model(cfg).eval()
    assert m.cls_pos == 24  # 49 patches, the class token in the middle
    x = torch.randn(1, 1, 28, 28)
    for r, c in ((0, 0), (27, 27)):
        x2 = x.clone()
        x2[0, 0, r, c] += 5.0
        assert float((m(x2) - m(x)).abs().max()) > 1e-6, (r, c)


def test_bad_model_settings_are_user_errors():
    for field, value, needle in (("kind", "cnn", "--model.kind"), ("stem", "x", "--model.stem"),
                                 ("patch_size", 5, "--model.patch_size")):
        cfg = C.tiny()
        setattr(cfg.model, field, value)
        with pytest.raises(UserError, match=needle):
            M.build_model(cfg)
    cfg = C.tiny()
    cfg.model.kind, cfg.model.timm_name = "timm", "no_such_model"
    with pytest.raises(UserError, match="--model.timm_name 'no_such_model' is not a timm model"):
        M.build_model(cfg)


def test_augment_is_deterministic_and_keeps_pixels():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28).to(torch.uint8)
    dc = C.DataConfig()
    a, b = D.augment(x, dc, 5, 0), D.augment(x, dc, 5, 0)
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(D.augment(x, dc, 6, 0), a)
    assert torch.equal(D.augment(x, C.DataConfig(crop_pad=0, hflip=False), 5, 0), x)
    idx = D.batch_indices(0, 64, 200, 0)
    assert len(set(idx.tolist())) == 64  # a permutation: no repeats within an epoch
    assert torch.equal(torch.sort(torch.cat([D.batch_indices(s, 50, 200, 1) for s in range(4)])).values,
                       torch.arange(200))


# ---------------------------------------------------------------------------- end to end
def test_train_evaluate_predict_on_an_idx_folder(tmp_path, capsys):
    """A learnable synthetic IDX folder: train through the CLI, evaluate reproduces the
    recorded metrics, predict names the right class of a drawn image."""
    d = _write_idx_dir(tmp_path / "idx", n_train=400, n_test=60)
    out = tmp_path / "run"
    rc = cli_main(["train", "--preset", "tiny", "--out", str(out), "--data.root", str(d), "--data.val_size", "0",
                   "--data.n_test", "0", "--train.steps", "60", "--train.lr", "1e-2", "--train.eval_every", "0",
                   "--data.hflip", "false", "--data.crop_pad", "0", "--quiet"])
    assert rc == 0
    recorded = json.loads((out / "config.json").read_text())["metrics"]
    assert recorded["accuracy"] >= 0.8, recorded
    capsys.readouterr()
    assert cli_main(["evaluate", "--checkpoint", str(out), "--data", str(d), "--json", "--quiet"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["accuracy"] == pytest.approx(recorded["accuracy"]) and got["n_test"] == 60
    assert set(E.METRIC_KEYS) <= set(got) and len(got["confusion_matrix"]) == 10
    # a drawn image of class 3: bright band at rows 10..11 on a dark background
    from PIL import Image

    img = np.full((28, 28), 20, np.uint8)
    img[10:12] = 250
    Image.fromarray(img).save(tmp_path / "band3.png")
    res = E.predict(str(out), [str(tmp_path / "band3.png")])
    top = res[0]["top"]
    assert len(top) == 5 and top[0]["label"] == C.FMNIST_CLASSES[3]
    assert sum(t["probability"] for t in top) <= 1.0 + 1e-6
    assert all(a["probability"] >= b["probability"] for a, b in zip(top, top[1:]))


def test_image_folder_data(tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    for cls, v in (("Bag", 200), ("Trouser", 30)):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (v, v, v)).save(root / cls / f"{i}.jpg")
    (root / "Bag" / "notes.txt").write_text("ignored")
    cfg = C.tiny()
    s = D.load_split(cfg, "test", override=str(root))
    assert s.x.shape == (6, 1, 28, 28)
    assert s.y.tolist() == [C.FMNIST_CLASSES.index("Bag")] * 3 + [C.FMNIST_CLASSES.index("Trouser")] * 3
    (root / "Hat").mkdir()
    Image.new("L", (8, 8)).save(root / "Hat" / "0.png")
    with pytest.raises(UserError, match=r"classes \['Hat'\] are not classes of this model"):
        D.load_split(cfg, "test", override=str(root))


def test_predict_cli_bad_inputs_exit_2(tmp_path, tiny_checkpoint, capsys):
    ck = str(tiny_checkpoint("vision"))
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    capsys.readouterr()
    assert cli_main(["predict", "--checkpoint", ck, str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "photo.jpg" in err[0] and "not a readable image" in err[0]
    assert cli_main(["evaluate", "--checkpoint", ck, "--data", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "no such file or directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------- shipped checkpoint + demo
def test_shipped_checkpoint_names_the_drawn_examples():
    """vision/vim-fmnist on the self-drawn demo images (dark on white: inverted, resized)."""
    from longstream.pipelines.hub import default_hub

    if E.DEFAULT_CHECKPOINT not in default_hub().entries():
        pytest.skip("vision/vim-fmnist is not shipped in this checkout")
    res = E.predict(E.DEFAULT_CHECKPOINT, E.EXAMPLE_INPUTS)
    assert [r["top"][0]["label"] for r in res] == ["Trouser", "Sneaker", "Bag"]


def test_demo_classify_and_efficiency_panel(tmp_path):
    pytest.importorskip("matplotlib")
    from longstream.pipelines.hub import default_hub
    from longstream.pipelines.vision import demo

    if E.DEFAULT_CHECKPOINT not in default_hub().entries():
        pytest.skip("vision/vim-fmnist is not shipped in this checkout")
    labels, fig, seen = demo.classify(E.EXAMPLE_INPUTS[2])
    assert max(labels, key=labels.get) == "Bag" and len(labels) == 5
    assert seen.shape == (224, 224) and fig is not None
    rep = {"sections": [{"points": [{"res": 224, "vim": {"median_s": 0.2, "peak_mib": 3.0},
                                     "deit_fused": {"median_s": 0.1, "peak_mib": 2.5}},
                                    {"res": 512, "vim": {"median_s": 1.0, "peak_mib": 14.0},
                                     "deit_fused": {"median_s": 0.8}}]}]}
    (tmp_path / "eff.json").write_text(json.dumps(rep))
    pts = demo.efficiency_points(tmp_path / "eff.json")
    assert pts["vim"] == [(224, 0.2, 3.0), (512, 1.0, 14.0)] and pts["deit_fused"][1][:2] == (512, 0.8)
    assert demo.efficiency_figure(tmp_path / "eff.json") is not None
    (tmp_path / "bad.json").write_text("{not json")
    assert demo.efficiency_points(tmp_path / "bad.json") == {} and demo.efficiency_figure(tmp_path / "bad.json") is None
